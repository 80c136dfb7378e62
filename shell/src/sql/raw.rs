//! Raw key-value verbs for debugging: `GET 'key'`, `PUT 'key' 'value'`, `DEL 'key'`,
//! `SCAN 'start' ['end'] [LIMIT n]`. Keys and values are single-quoted strings in the
//! shared printable form (`\xNN` for any byte). Writes to the keys SQL manages (the
//! catalog under `/s/`, rows under `/t/`) are refused: they would bypass the schema.

use rshard_common::api::WriteOp;
use rshard_common::keytext;

use super::tokens::Tokens;
use super::Outcome;
use crate::catalog::CATALOG_PREFIX;
use crate::encoding::TABLE_PREFIX;
use crate::error::SqlError;
use crate::store::Store;
use crate::value::Value;

/// Keys a SCAN returns without a LIMIT.
pub const DEFAULT_SCAN_LIMIT: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawStatement {
    Get(Vec<u8>),
    Put(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
    Scan {
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
    },
}

fn bytes(words: &mut Tokens<'_>, what: &str) -> Result<Vec<u8>, SqlError> {
    let text = words.string(what)?;
    keytext::parse(&text).map_err(|error| SqlError::Syntax {
        message: error.to_string(),
        position: None,
    })
}

pub fn parse(mut words: Tokens<'_>) -> Result<RawStatement, SqlError> {
    let statement = if words.accept("GET") {
        RawStatement::Get(bytes(&mut words, "a quoted key")?)
    } else if words.accept("PUT") {
        let key = bytes(&mut words, "a quoted key")?;
        RawStatement::Put(key, bytes(&mut words, "a quoted value")?)
    } else if words.accept("DEL") {
        RawStatement::Del(bytes(&mut words, "a quoted key")?)
    } else {
        words.expect("SCAN")?;
        let start = bytes(&mut words, "a quoted start key")?;
        let end = if words.peek_word().is_none() && words.end().is_err() {
            bytes(&mut words, "a quoted end key")?
        } else {
            Vec::new()
        };
        let limit = if words.accept("LIMIT") {
            let limit = words.number("a number")?;
            usize::try_from(limit)
                .ok()
                .filter(|l| *l <= crate::sql::select::MAX_RESULT_ROWS)
                .ok_or_else(|| {
                    SqlError::Limit(format!(
                        "LIMIT {limit} is over {}",
                        crate::sql::select::MAX_RESULT_ROWS
                    ))
                })?
        } else {
            DEFAULT_SCAN_LIMIT
        };
        RawStatement::Scan { start, end, limit }
    };
    words.end()?;
    Ok(statement)
}

fn check_writable(key: &[u8]) -> Result<(), SqlError> {
    if key.starts_with(CATALOG_PREFIX) || key.starts_with(TABLE_PREFIX) {
        return Err(SqlError::Admin(format!(
            "{} is managed by SQL (the catalog under /s/, rows under /t/); change it with SQL statements",
            keytext::show(key)
        )));
    }
    Ok(())
}

fn show(bytes: &[u8]) -> Value {
    Value::Text(keytext::show(bytes))
}

impl RawStatement {
    pub async fn execute(self, store: &Store) -> Result<Outcome, SqlError> {
        let write = |op: WriteOp| async move {
            match store.write_batches(vec![op]).await? {
                Ok(_) => Ok(()),
                Err(_) => Err(SqlError::Corrupt(
                    "a write without a condition failed a condition".to_string(),
                )),
            }
        };
        Ok(match self {
            RawStatement::Get(key) => Outcome::Rows {
                columns: vec!["key".into(), "value".into()],
                rows: match store.get(&key).await? {
                    Some(value) => vec![vec![show(&key), show(&value)]],
                    None => Vec::new(),
                },
            },
            RawStatement::Put(key, value) => {
                check_writable(&key)?;
                write(WriteOp::Put { key, value }).await?;
                Outcome::status("PUT")
            }
            RawStatement::Del(key) => {
                check_writable(&key)?;
                write(WriteOp::Delete { key }).await?;
                Outcome::status("DEL")
            }
            RawStatement::Scan { start, end, limit } => Outcome::Rows {
                columns: vec!["key".into(), "value".into()],
                rows: store
                    .scan(&start, &end, limit)
                    .await?
                    .into_iter()
                    .map(|(k, v)| vec![show(&k), show(&v)])
                    .collect(),
            },
        })
    }
}
