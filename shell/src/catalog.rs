//! The catalog: tables, their columns and ids, in replicated keys under [`CATALOG_PREFIX`],
//! so every shell on every node sees one schema.
//!
//! - `/s/table/<name>` holds a table's [`TableDescriptor`] (rmp-serde).
//! - `/s/next_table_id` holds the next unused table id (decimal text).
//!
//! Races between shells are settled by compare-and-swap on these keys: a table id is
//! taken by advancing the counter from the value read (an id taken and then not used is
//! only skipped; ids are never reused), and a table is created only if its name's key is
//! absent, so of two shells creating one name, one succeeds and the other is told it
//! exists. A drop first marks the table [`TableState::Dropping`] (new statements refuse
//! it), deletes its rows, then deletes its entry; a drop interrupted half-way is finished
//! by dropping again.

use serde::{Deserialize, Serialize};

use crate::error::SqlError;
use crate::store::Store;
use crate::value::{ColumnType, Value};

/// Keys of the catalog start with this; SQL manages them (raw writes are refused).
pub const CATALOG_PREFIX: &[u8] = b"/s/";
const TABLE_KEY_PREFIX: &[u8] = b"/s/table/";
const NEXT_TABLE_ID_KEY: &[u8] = b"/s/next_table_id";
/// Compare-and-swap rounds when shells race for the table id counter.
const MAX_ID_ATTEMPTS: usize = 32;
/// More tables than this are not listed (the catalog is read into memory).
pub const MAX_TABLES: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnDescriptor {
    /// Stable for the column's life; rows store values by it.
    pub id: u32,
    pub name: String,
    pub column_type: ColumnType,
    pub nullable: bool,
    pub default: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableState {
    Public,
    /// Being dropped: refused by every statement but another DROP, which finishes it.
    Dropping,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableDescriptor {
    pub id: u64,
    pub name: String,
    pub columns: Vec<ColumnDescriptor>,
    /// Indexes into `columns`, in key order.
    pub primary_key: Vec<usize>,
    pub state: TableState,
}

impl TableDescriptor {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn is_key_column(&self, index: usize) -> bool {
        self.primary_key.contains(&index)
    }
}

fn table_key(name: &str) -> Vec<u8> {
    [TABLE_KEY_PREFIX, name.as_bytes()].concat()
}

/// A catalog entry as stored, checked so that the code using it can index by it: the bytes
/// may have been written by anything that can write raw keys.
fn decode(name: &str, bytes: &[u8]) -> Result<TableDescriptor, SqlError> {
    let corrupt = |what: String| SqlError::Corrupt(format!("the catalog entry of {name}: {what}"));
    let table: TableDescriptor =
        rmp_serde::from_slice(bytes).map_err(|error| corrupt(error.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    if table.primary_key.is_empty()
        || !table
            .primary_key
            .iter()
            .all(|&index| index < table.columns.len() && seen.insert(index))
    {
        return Err(corrupt(format!(
            "primary key columns {:?} of {} columns",
            table.primary_key,
            table.columns.len()
        )));
    }
    let mut ids = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    if !table
        .columns
        .iter()
        .all(|column| ids.insert(column.id) && names.insert(column.name.as_str()))
    {
        return Err(corrupt("two columns share an id or a name".to_string()));
    }
    Ok(table)
}

fn encode(table: &TableDescriptor) -> Result<Vec<u8>, SqlError> {
    rmp_serde::to_vec(table).map_err(|error| SqlError::Corrupt(error.to_string()))
}

/// The table named `name` in any state, if it exists.
pub async fn find(store: &Store, name: &str) -> Result<Option<TableDescriptor>, SqlError> {
    match store.get(&table_key(name)).await? {
        Some(bytes) => Ok(Some(decode(name, &bytes)?)),
        None => Ok(None),
    }
}

/// The table named `name`, ready for use (not being dropped).
pub async fn table(store: &Store, name: &str) -> Result<TableDescriptor, SqlError> {
    match find(store, name).await? {
        Some(table) if table.state == TableState::Public => Ok(table),
        Some(_) => Err(SqlError::Admin(format!(
            "table {name} is being dropped (run DROP TABLE {name} to finish)"
        ))),
        None => Err(SqlError::UnknownTable(name.to_string())),
    }
}

/// Every table, by name.
pub async fn tables(store: &Store) -> Result<Vec<TableDescriptor>, SqlError> {
    let end = crate::encoding::prefix_end(TABLE_KEY_PREFIX);
    let items = store.scan(TABLE_KEY_PREFIX, &end, MAX_TABLES).await?;
    items
        .iter()
        .map(|(key, value)| {
            let name = String::from_utf8_lossy(&key[TABLE_KEY_PREFIX.len()..]);
            decode(&name, value)
        })
        .collect()
}

/// Takes an unused table id.
async fn next_table_id(store: &Store) -> Result<u64, SqlError> {
    for _ in 0..MAX_ID_ATTEMPTS {
        let current = store.get(NEXT_TABLE_ID_KEY).await?;
        let id = match &current {
            None => 1,
            Some(bytes) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| SqlError::Corrupt("the table id counter".to_string()))?,
        };
        let next = (id + 1).to_string();
        let swap = rshard_common::api::WriteOp::CompareAndSwap {
            key: NEXT_TABLE_ID_KEY.to_vec(),
            expected: current,
            new: Some(next.into_bytes()),
        };
        if store.write_batches(vec![swap]).await?.is_ok() {
            return Ok(id);
        }
    }
    Err(SqlError::Admin(
        "too many shells creating tables at once; try again".to_string(),
    ))
}

/// Creates `table` (its id is assigned here); `Ok(false)` if the name exists.
pub async fn create(
    store: &Store,
    mut table: TableDescriptor,
) -> Result<Option<TableDescriptor>, SqlError> {
    if find(store, &table.name).await?.is_some() {
        return Ok(None);
    }
    table.id = next_table_id(store).await?;
    let swap = rshard_common::api::WriteOp::CompareAndSwap {
        key: table_key(&table.name),
        expected: None,
        new: Some(encode(&table)?),
    };
    Ok(store
        .write_batches(vec![swap])
        .await?
        .is_ok()
        .then_some(table))
}

/// Replaces `old` by `new` if the entry is still `old`; false if another shell changed it.
pub async fn replace(
    store: &Store,
    old: &TableDescriptor,
    new: Option<&TableDescriptor>,
) -> Result<bool, SqlError> {
    let swap = rshard_common::api::WriteOp::CompareAndSwap {
        key: table_key(&old.name),
        expected: Some(encode(old)?),
        new: new.map(encode).transpose()?,
    };
    Ok(store.write_batches(vec![swap]).await?.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(id: u32, name: &str) -> ColumnDescriptor {
        ColumnDescriptor {
            id,
            name: name.to_string(),
            column_type: ColumnType::Int,
            nullable: true,
            default: None,
        }
    }

    /// Entries that would make the code using them index out of bounds are refused as
    /// corrupt when read, not trusted.
    #[test]
    fn a_catalog_entry_is_checked_when_read() {
        let good = TableDescriptor {
            id: 7,
            name: "t".to_string(),
            columns: vec![column(1, "a"), column(2, "b")],
            primary_key: vec![1, 0],
            state: TableState::Public,
        };
        let stored = |table: &TableDescriptor| encode(table).expect("encodes");
        assert_eq!(decode("t", &stored(&good)).expect("a good entry"), good);
        let broken = [
            TableDescriptor {
                primary_key: vec![2],
                ..good.clone()
            },
            TableDescriptor {
                primary_key: vec![],
                ..good.clone()
            },
            TableDescriptor {
                primary_key: vec![0, 0],
                ..good.clone()
            },
            TableDescriptor {
                columns: vec![column(1, "a"), column(1, "b")],
                ..good.clone()
            },
            TableDescriptor {
                columns: vec![column(1, "a"), column(2, "a")],
                ..good.clone()
            },
        ];
        for table in &broken {
            let error = decode("t", &stored(table)).expect_err("refused");
            assert!(matches!(error, SqlError::Corrupt(_)), "{table:?}: {error}");
        }
        assert!(matches!(
            decode("t", b"\xc1garbage"),
            Err(SqlError::Corrupt(_))
        ));
    }
}
