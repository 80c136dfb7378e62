//! What can go wrong with a statement, as the shell reports it (`ERROR: ...`).

use rshard_common::client::ClientError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SqlError {
    /// The text is not a statement; `position` is (line, column), both from 1.
    #[error("syntax error: {message}")]
    Syntax {
        message: String,
        position: Option<(u64, u64)>,
    },
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("table {0} does not exist")]
    UnknownTable(String),
    #[error("table {0} already exists")]
    TableExists(String),
    #[error("{0}")]
    UnknownColumn(String),
    #[error("{0}")]
    Type(String),
    /// A row breaks a rule of its table: a duplicate primary key, a NULL in a NOT NULL
    /// column.
    #[error("{0}")]
    Constraint(String),
    #[error("{0}")]
    Limit(String),
    /// Stored bytes that do not decode: the catalog or a row was written by something else.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Cluster(#[from] ClientError),
    /// A statement interrupted (Ctrl-C) after some of its batches were written.
    #[error("cancelled")]
    Cancelled,
    /// A statement that failed after some batches were written: they stay.
    #[error("{cause} ({written} row(s) were written before the error and stay: a statement is atomic only within one batch of one shard)")]
    PartlyWritten { written: u64, cause: Box<SqlError> },
    /// An admin statement or operation that the cluster refused or that failed.
    #[error("{0}")]
    Admin(String),
}

impl SqlError {
    /// True if the cluster could not be reached at all (the shell exits with code 2).
    pub fn is_connection(&self) -> bool {
        match self {
            SqlError::Cluster(error) => matches!(
                error,
                ClientError::Unavailable { .. } | ClientError::Untrusted(_) | ClientError::Setup(_)
            ),
            SqlError::PartlyWritten { cause, .. } => cause.is_connection(),
            _ => false,
        }
    }
}
