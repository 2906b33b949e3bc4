//! Why a command was refused: shared by the decisions (`decide`) and rollout planning (`plan`),
//! so neither imports the other for it.

/// Why a command was refused. Expected outcomes, not failures: each maps to one 4xx.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The request is malformed or breaks a rule (400).
    #[error("{0}")]
    Invalid(String),
    /// Something it names does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// It conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
}
