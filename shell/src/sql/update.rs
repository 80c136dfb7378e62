//! `UPDATE t SET col = expr, ... [WHERE cond]`.
//!
//! Rows are read page by page (see [`scan`]) and each is rewritten by a compare-and-swap on
//! the row as read. A row changed by someone else in between is read again: if the
//! condition still holds, the update is computed anew from the new row; if not, or if the
//! row is gone, it is left alone. An UPDATE of primary key columns moves rows to new keys;
//! it reads every matching row first (so a moved row is never met again by the scan),
//! then deletes the old keys and writes the new ones, refusing a new key that is taken.

use std::collections::BTreeMap;

use rshard_common::api::WriteOp;
use sqlparser::ast;

use super::expr::{bind, Scalar, Scope};
use super::insert::{assignment_column, batch_note, check_not_null, partly};
use super::scan::{self, Cursor, Row};
use super::{single_table, Outcome};
use crate::catalog::{self, TableDescriptor};
use crate::error::SqlError;
use crate::store::Store;
use crate::value::Value;

/// Rows an UPDATE of primary key columns may move (it holds them all in memory).
pub const MAX_KEY_UPDATE_ROWS: usize = 100_000;

#[derive(Clone, Debug)]
pub struct Update {
    table: String,
    alias: Option<String>,
    assignments: Vec<(String, ast::Expr)>,
    selection: Option<ast::Expr>,
}

impl Update {
    pub fn from_ast(update: ast::Update) -> Result<Self, SqlError> {
        if update.from.is_some()
            || update.returning.is_some()
            || update.or.is_some()
            || !update.order_by.is_empty()
            || update.limit.is_some()
        {
            return Err(SqlError::Unsupported(
                "UPDATE with FROM, RETURNING, OR, ORDER BY or LIMIT".to_string(),
            ));
        }
        let (table, alias) = single_table(std::slice::from_ref(&update.table))?;
        let assignments = update
            .assignments
            .iter()
            .map(|a| Ok((assignment_column(&a.target)?, a.value.clone())))
            .collect::<Result<Vec<_>, SqlError>>()?;
        Ok(Update {
            table,
            alias,
            assignments,
            selection: update.selection,
        })
    }

    pub async fn execute(self, store: &Store) -> Result<Outcome, SqlError> {
        let table = catalog::table(store, &self.table).await?;
        let scope = Scope {
            qualifier: Some(self.alias.as_deref().unwrap_or(&table.name)),
            ..Scope::of(&table)
        };
        let mut assignments: Vec<(usize, Scalar)> = Vec::new();
        for (name, expr) in &self.assignments {
            let index = table.column_index(name).ok_or_else(|| {
                SqlError::UnknownColumn(format!(
                    "column {name} does not exist in table {}",
                    table.name
                ))
            })?;
            if assignments.iter().any(|(i, _)| *i == index) {
                return Err(SqlError::Constraint(format!("column {name} is set twice")));
            }
            assignments.push((index, bind(expr, scope)?));
        }
        let filter = self
            .selection
            .as_ref()
            .map(|e| bind(e, scope))
            .transpose()?;
        let new_values = |row: &[Value]| -> Result<Vec<Value>, SqlError> {
            let mut values = row.to_vec();
            for (index, scalar) in &assignments {
                let column = &table.columns[*index];
                values[*index] = scalar
                    .eval(row, None)?
                    .coerce(column.column_type, &column.name)?;
            }
            check_not_null(&table, &values)?;
            Ok(values)
        };
        if assignments.iter().any(|(i, _)| table.is_key_column(*i)) {
            return update_keys(store, &table, filter.as_ref(), &new_values).await;
        }
        let mut cursor = Cursor::new(&table, filter.as_ref());
        let mut progress = Progress::default();
        while let Some(page) = cursor.next_page(store).await? {
            rewrite(
                store,
                &table,
                filter.as_ref(),
                page,
                &mut progress,
                |values| new_values(values).map(Some),
            )
            .await?;
        }
        Ok(Outcome::Status {
            tag: format!("UPDATE {}", progress.rows),
            notes: batch_note(progress.batches),
        })
    }
}

/// Rows written and batches taken so far by a statement.
#[derive(Debug, Default)]
pub struct Progress {
    pub rows: u64,
    pub batches: usize,
}

/// Rewrites `rows` (read under `filter`): `change` gives a row's new values (`None`:
/// delete it). Each row is written by a compare-and-swap on the row as read; a row found
/// changed is read again and rewritten if `filter` still holds for it.
pub async fn rewrite(
    store: &Store,
    table: &TableDescriptor,
    filter: Option<&Scalar>,
    rows: Vec<Row>,
    progress: &mut Progress,
    change: impl Fn(&[Value]) -> Result<Option<Vec<Value>>, SqlError>,
) -> Result<(), SqlError> {
    let op_for = |row: &Row| -> Result<WriteOp, SqlError> {
        let new = match change(&row.values)? {
            Some(values) => Some(scan::encode(table, &values)?.1),
            None => None,
        };
        Ok(WriteOp::CompareAndSwap {
            key: row.key.clone(),
            expected: Some(row.stored.clone()),
            new,
        })
    };
    let mut ops: Vec<Option<WriteOp>> = rows
        .iter()
        .map(|row| op_for(row).map(Some))
        .collect::<Result<_, _>>()?;
    let max_rounds = ops.len() * 4 + 16;
    for _ in 0..max_rounds {
        let pending: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].is_some()).collect();
        if pending.is_empty() {
            return Ok(());
        }
        let batch: Vec<WriteOp> = pending.iter().filter_map(|&i| ops[i].clone()).collect();
        let failed = match store.write_batches(batch.clone()).await {
            Ok(Ok(count)) => {
                progress.rows += pending.len() as u64;
                progress.batches += count;
                return Ok(());
            }
            Ok(Err(failed)) => failed,
            Err(error) => return Err(partly(error, progress.rows)),
        };
        let mut by_key: Vec<usize> = (0..batch.len()).collect();
        by_key.sort_by(|&a, &b| batch[a].key().cmp(batch[b].key()));
        for &written in &by_key[..failed.written_ops] {
            ops[pending[written]] = None;
            progress.rows += 1;
        }
        if failed.written_ops > 0 {
            progress.batches += 1;
        }
        let index = pending[failed.op];
        let key = batch[failed.op].key().to_vec();
        ops[index] = match failed.current {
            None => None,
            Some(stored) => {
                let row = scan::decode(table, key, stored)?;
                let still = match filter {
                    Some(filter) => filter.holds(&row.values)?,
                    None => true,
                };
                if still {
                    Some(op_for(&row)?)
                } else {
                    None
                }
            }
        };
    }
    Err(partly(
        SqlError::Admin("rows kept changing under this statement; try again".to_string()),
        progress.rows,
    ))
}

/// A row's values after the SET clause.
type NewValues<'a> = dyn Fn(&[Value]) -> Result<Vec<Value>, SqlError> + 'a;

/// For each key: what it must hold now, and what it will hold (`None`: absent).
type KeyWrites = BTreeMap<Vec<u8>, (Option<Vec<u8>>, Option<Vec<u8>>)>;

async fn update_keys(
    store: &Store,
    table: &TableDescriptor,
    filter: Option<&Scalar>,
    new_values: &NewValues<'_>,
) -> Result<Outcome, SqlError> {
    let mut cursor = Cursor::new(table, filter);
    let mut rows = Vec::new();
    while let Some(page) = cursor.next_page(store).await? {
        rows.extend(page);
        if rows.len() > MAX_KEY_UPDATE_ROWS {
            return Err(SqlError::Limit(format!(
                "an UPDATE of primary key columns may move at most {MAX_KEY_UPDATE_ROWS} rows"
            )));
        }
    }
    // key -> (what it must hold now, what it will hold); old keys first, so a row moving
    // onto a key another row leaves is one swap of that key.
    let mut writes: KeyWrites = rows
        .iter()
        .map(|row| (row.key.clone(), (Some(row.stored.clone()), None)))
        .collect();
    let mut targets = std::collections::HashSet::new();
    for row in &rows {
        let values = new_values(&row.values)?;
        let (key, stored) = scan::encode(table, &values)?;
        if !targets.insert(key.clone()) {
            return Err(SqlError::Constraint(format!(
                "two rows would get the primary key {} in table {}",
                crate::encoding::show_key(&key),
                table.name
            )));
        }
        writes.entry(key).or_insert((None, None)).1 = Some(stored);
    }
    let ops: Vec<WriteOp> = writes
        .into_iter()
        .filter(|(_, (expected, new))| expected != new)
        .map(|(key, (expected, new))| WriteOp::CompareAndSwap { key, expected, new })
        .collect();
    let count = rows.len() as u64;
    match store.write_batches(ops).await? {
        Ok(batches) => Ok(Outcome::Status {
            tag: format!("UPDATE {count}"),
            notes: batch_note(batches),
        }),
        Err(failed) => {
            let cause = match failed.current {
                Some(_) => SqlError::Constraint(format!(
                    "duplicate primary key in table {}, or a row changed meanwhile; nothing of the failing batch was written",
                    table.name
                )),
                None => SqlError::Admin("a row changed meanwhile; try again".to_string()),
            };
            Err(partly(cause, failed.written_ops as u64))
        }
    }
}
