//! `DROP TABLE [IF EXISTS] t`: the table is marked dropping (every other statement then
//! refuses it), its rows are deleted range by range, and its catalog entry goes last. A
//! drop interrupted part-way leaves the table dropping; dropping it again finishes.

use rshard_common::api::WriteOp;
use sqlparser::ast::ObjectName;

use super::{table_name, Outcome};
use crate::catalog::{self, TableState};
use crate::encoding::table_span;
use crate::error::SqlError;
use crate::store::Store;

/// Keys deleted per round.
const DELETE_PAGE_KEYS: usize = 1000;

#[derive(Clone, Debug)]
pub struct DropTable {
    pub if_exists: bool,
    pub name: String,
}

impl DropTable {
    pub fn from_ast(if_exists: bool, names: Vec<ObjectName>) -> Result<Self, SqlError> {
        match names.as_slice() {
            [name] => Ok(DropTable {
                if_exists,
                name: table_name(name)?,
            }),
            _ => Err(SqlError::Unsupported(
                "dropping several tables at once".to_string(),
            )),
        }
    }

    pub async fn execute(self, store: &Store) -> Result<Outcome, SqlError> {
        let Some(table) = catalog::find(store, &self.name).await? else {
            if self.if_exists {
                return Ok(Outcome::Status {
                    tag: "DROP TABLE".to_string(),
                    notes: vec![format!("table {} does not exist, skipping", self.name)],
                });
            }
            return Err(SqlError::UnknownTable(self.name));
        };
        let mut dropping = table.clone();
        if table.state == TableState::Public {
            dropping.state = TableState::Dropping;
            if !catalog::replace(store, &table, Some(&dropping)).await? {
                return Err(SqlError::Admin(format!(
                    "table {} changed while it was being dropped; try again",
                    self.name
                )));
            }
        }
        let (start, end) = table_span(table.id);
        let mut deleted: u64 = 0;
        loop {
            let keys = store.scan(&start, &end, DELETE_PAGE_KEYS).await?;
            if keys.is_empty() {
                break;
            }
            let ops: Vec<WriteOp> = keys
                .into_iter()
                .map(|(key, _)| WriteOp::Delete { key })
                .collect();
            let count = ops.len() as u64;
            match store.write_batches(ops).await? {
                Ok(_) => deleted += count,
                Err(_) => unreachable_condition()?,
            }
        }
        if !catalog::replace(store, &dropping, None).await? {
            return Err(SqlError::Admin(format!(
                "table {} changed while it was being dropped; run DROP TABLE again",
                self.name
            )));
        }
        Ok(Outcome::Status {
            tag: "DROP TABLE".to_string(),
            notes: vec![format!("{deleted} row(s) deleted")],
        })
    }
}

/// Deletes carry no condition, so a failed condition means the store answered wrongly.
fn unreachable_condition() -> Result<(), SqlError> {
    Err(SqlError::Corrupt(
        "a delete without a condition was refused as a failed condition".to_string(),
    ))
}
