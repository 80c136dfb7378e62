//! The interactive shell: SQL statements turned into routed reads and writes.
//!
//! - [`sql`]: statements (sqlparser) -> plans against the [`catalog`] -> reads and writes
//!   on a [`store::Store`] -> [`sql::Outcome`]s.
//! - [`encoding`]: row keys (order-preserving) and row values (rmp-serde by column id).
//! - [`render`]: tables, CSV, TSV and JSON.
//! - [`session`] runs statement text; [`repl`] is the interactive loop (rustyline) and
//!   [`runner`] the non-interactive one (`-e`, `-f`, stdin).

pub mod catalog;
pub mod encoding;
pub mod error;
pub mod render;
pub mod repl;
pub mod runner;
pub mod session;
pub mod sql;
pub mod store;
pub mod value;
