//! Versioned API namespaces.

pub mod v1;
