//! The `nixfleet` command line as a library: `main.rs` parses and runs [`cli::Cli`]; the CLI's
//! integration tests reuse what the demo runs its fleet with ([`supervise`], [`launch`],
//! [`events_client`]) instead of copies of their own.
//!
//! Modules import each other without circles (`cli/tests/module_graph.rs`): `cli.rs` imports
//! the commands, commands import the shared modules, and no shared module imports a command.

// Doc comments of clap arguments are the CLI's help text, written for a terminal: `[default: …]`
// and `<host>` there are not rustdoc links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

// Every module of the CLI is declared here, not in main.rs.
mod build;
pub mod cli;
pub mod client;
mod commands;
pub mod error;
mod eval;
pub mod events_client;
pub mod launch;
mod nix;
mod oplog;
mod output;
mod process;
mod progress;
mod replay;
pub mod settings;
mod ssh;
pub mod supervise;
pub mod time;
