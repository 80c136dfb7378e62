//! `UPDATE t SET col = expr, ... [WHERE cond]`.
//!
//! Rows are read page by page (see [`scan`]) and each is rewritten by a compare-and-swap on
//! the row as read. A row changed by someone else in between is read again: if the
//! condition still holds, the update is computed anew from the new row; if not, or if the
//! row is gone, it is left alone. An UPDATE of primary key columns moves rows to new keys;
//! it reads every matching row first (so a moved row is never met again by the scan),
//! then writes the new keys and deletes the old ones, refusing a new key that is taken:
//! in one atomic batch when they fit one, else in phases that never lose a row (see
//! [`move_in_phases`]).

use std::collections::BTreeMap;

use rshard_common::api::WriteOp;
use sqlparser::ast;

use super::expr::{bind, Scalar, Scope};
use super::insert::{assignment_column, batch_note, check_not_null, partly};
use super::scan::{self, Cursor, Row};
use super::{single_table, Outcome};
use crate::catalog::{self, TableDescriptor};
use crate::error::SqlError;
use crate::store::{FailedCondition, OneBatch, Store};
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
    // Keys whose row keeps them (other columns may change).
    let mut staying = std::collections::HashSet::new();
    for row in &rows {
        let values = new_values(&row.values)?;
        let (key, stored) = scan::encode(table, &values)?;
        if key == row.key {
            staying.insert(key.clone());
        }
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
    let status = |batches| Outcome::Status {
        tag: format!("UPDATE {count}"),
        notes: batch_note(batches),
    };
    // The usual case: every key in one shard and batch, moved atomically.
    match store.write_one_batch(&ops).await? {
        OneBatch::Written => return Ok(status(1)),
        OneBatch::Failed(failed) => return Err(failed_cause(table, &failed)),
        OneBatch::TooBig => {}
    }
    move_in_phases(store, table, ops, &staying)
        .await
        .map(status)
}

/// Why a compare-and-swap of a key move failed.
fn failed_cause(table: &TableDescriptor, failed: &FailedCondition) -> SqlError {
    match failed.current {
        Some(_) => SqlError::Constraint(format!(
            "duplicate primary key in table {}, or a row changed meanwhile",
            table.name
        )),
        None => SqlError::Admin("a row changed meanwhile; try again".to_string()),
    }
}

/// Moves rows over several batches so that no row is ever lost, only briefly present
/// twice: first the new keys nobody holds are written; then the keys that one row leaves
/// and another takes (one atomic batch, or the statement is refused before anything is
/// written: a chain of such keys cut in two would lose the rows between); last the old
/// keys are deleted and the rows that keep their key rewritten. If the first two steps
/// fail, the copies they certainly wrote are deleted again. The number of batches.
async fn move_in_phases(
    store: &Store,
    table: &TableDescriptor,
    ops: Vec<WriteOp>,
    staying: &std::collections::HashSet<Vec<u8>>,
) -> Result<usize, SqlError> {
    let (mut inserts, mut swaps, mut last) = (Vec::new(), Vec::new(), Vec::new());
    for op in ops {
        match &op {
            WriteOp::CompareAndSwap { expected: None, .. } => inserts.push(op),
            WriteOp::CompareAndSwap { new: None, .. } => last.push(op),
            _ if staying.contains(op.key()) => last.push(op),
            _ => swaps.push(op),
        }
    }
    if !swaps.is_empty() && !store.fits_one_batch(&swaps).await? {
        return Err(SqlError::Unsupported(format!(
            "this UPDATE moves {} row(s) of table {} onto keys that other rows of it leave \
             (as SET id = id + 1 does) across shards or batch limits: without cross-shard \
             transactions that cannot be done without risking rows, so nothing was written. \
             Move the rows in two steps (e.g. SET id = id + 1000000, then SET id = id - \
             999999) or update a smaller range",
            swaps.len(),
            table.name
        )));
    }
    // Sorted, so that the operations a failure reports as written are a prefix.
    inserts.sort_by(|a, b| a.key().cmp(b.key()));
    let mut batches = match store.write_batches(inserts.clone()).await {
        Ok(Ok(batches)) => batches,
        Ok(Err(failed)) => {
            let cause = failed_cause(table, &failed);
            return Err(take_back(store, &inserts[..failed.written_ops], cause, None).await);
        }
        // The batch that failed may have been written or not; only the copies before it
        // are certainly this statement's to delete (one with the same bytes may be another
        // statement's, which would then lose its row).
        Err(error) => {
            let written = match &error {
                SqlError::PartlyWritten { written, .. } => *written as usize,
                _ => 0,
            };
            let written = written.min(inserts.len());
            let unknown = if may_have_written(&error) {
                inserts.len() - written
            } else {
                0
            };
            return Err(take_back(store, &inserts[..written], error, Some(unknown)).await);
        }
    };
    let swapping = swaps.first();
    match store.write_one_batch(&swaps).await {
        Ok(OneBatch::Written) => batches += usize::from(swapping.is_some()),
        Ok(OneBatch::Failed(failed)) => {
            let cause = failed_cause(table, &failed);
            return Err(take_back(store, &inserts, cause, None).await);
        }
        Ok(OneBatch::TooBig) => {
            let cause = SqlError::Admin(
                "a shard boundary moved into the rows being moved; try again".to_string(),
            );
            return Err(take_back(store, &inserts, cause, None).await);
        }
        // The swap batch may have been written: one of its keys tells, as it is atomic.
        Err(error) => match landed(store, swapping).await {
            Some(true) => batches += 1,
            Some(false) => return Err(take_back(store, &inserts, error, None).await),
            None => {
                return Err(SqlError::Admin(format!(
                    "{error} (whether the rows moving onto each other's keys were written is unknown: every row is at its old key, its new key, or both; none was lost)"
                )))
            }
        },
    }
    let moved = inserts.len();
    let (left, error, more) = write_each(store, last).await;
    if left == 0 && error.is_none() {
        return Ok(batches + more);
    }
    let cause = error.unwrap_or_else(|| SqlError::Admin("rows changed meanwhile".to_string()));
    Err(SqlError::Admin(format!(
        "{cause} (every row was written at its new key, but {left} old row(s) of table {} could not be deleted or rewritten and stay as they were; {moved} row(s) moved to keys no other row held; no row was lost)",
        table.name
    )))
}

/// Whether the batch that failed with `error` may have been written: its outcome is
/// unknown, or the error is not one the cluster gives only for a write it refused.
fn may_have_written(error: &SqlError) -> bool {
    use rshard_common::client::ClientError;
    match error {
        SqlError::PartlyWritten { cause, .. } => may_have_written(cause),
        SqlError::Cluster(ClientError::Refused(refusal)) => !refusal.wrote_nothing(),
        SqlError::Cluster(
            ClientError::Unavailable { .. }
            | ClientError::CrossShard(..)
            | ClientError::Setup(_)
            | ClientError::Untrusted(_),
        ) => false,
        _ => true,
    }
}

/// Whether the atomic batch holding `probe` was written: its key holds what the probe
/// writes (`true`) or what it expected (`false`); `None` if neither or unreadable.
async fn landed(store: &Store, probe: Option<&WriteOp>) -> Option<bool> {
    let Some(WriteOp::CompareAndSwap { key, expected, new }) = probe else {
        return None;
    };
    let current = store.get(key).await.ok()?;
    if current == *new {
        Some(true)
    } else if current == *expected {
        Some(false)
    } else {
        None
    }
}

/// Writes `ops` in batches, going on past a failed condition (that key is left as it
/// is); (keys left, the error that stopped it if one did, batches written whole).
async fn write_each(store: &Store, mut ops: Vec<WriteOp>) -> (usize, Option<SqlError>, usize) {
    ops.sort_by(|a, b| a.key().cmp(b.key()));
    let mut left = 0;
    let mut batches = 0;
    let rounds = ops.len();
    for _ in 0..=rounds {
        if ops.is_empty() {
            break;
        }
        match store.write_batches(ops.clone()).await {
            Ok(Ok(count)) => {
                batches += count;
                ops.clear();
            }
            Ok(Err(failed)) => {
                // The batches before the failing one were written; the failing one was
                // not, apart from its failed key, is still to do.
                ops.remove(failed.op);
                ops.drain(..failed.written_ops);
                left += 1;
            }
            Err(error) => return (left + ops.len(), Some(error), batches),
        }
    }
    (left + ops.len(), None, batches)
}

/// `cause`, after deleting again the copies `written` (each only if it still holds what
/// this statement wrote), saying whether that put everything back. `unknown`: how many
/// more copies may have been written by a batch whose outcome is unknown.
async fn take_back(
    store: &Store,
    written: &[WriteOp],
    cause: SqlError,
    unknown: Option<usize>,
) -> SqlError {
    let undo: Vec<WriteOp> = written
        .iter()
        .filter_map(|op| match op {
            WriteOp::CompareAndSwap {
                key,
                new: Some(new),
                ..
            } => Some(WriteOp::CompareAndSwap {
                key: key.clone(),
                expected: Some(new.clone()),
                new: None,
            }),
            _ => None,
        })
        .collect();
    let total = undo.len();
    let (left, _, _) = write_each(store, undo).await;
    let unknown = unknown.unwrap_or(0);
    if left == 0 && unknown == 0 {
        if total == 0 {
            cause
        } else {
            SqlError::Admin(format!(
                "{cause} (the {total} row(s) already copied to new keys were deleted again: nothing changed)"
            ))
        }
    } else {
        SqlError::Admin(format!(
            "{cause} (up to {} row(s) now exist under both their old and new keys: {left} copy(ies) could not be deleted again and {unknown} may have been written by a batch whose outcome is unknown; no row was lost)",
            left + unknown
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::may_have_written;
    use crate::error::SqlError;
    use rshard_common::api::ApiError;
    use rshard_common::client::ClientError;

    #[test]
    fn only_an_unknown_outcome_may_have_written() {
        let unknown = SqlError::Cluster(ClientError::OutcomeUnknown("lost".to_string()));
        let refused = SqlError::Cluster(ClientError::Refused(ApiError::Busy("x".to_string())));
        let gave_up = SqlError::Cluster(ClientError::Unavailable {
            attempts: 3,
            last: "x".to_string(),
        });
        assert!(may_have_written(&unknown));
        assert!(!may_have_written(&refused));
        assert!(!may_have_written(&gave_up));
        let partly = |cause| SqlError::PartlyWritten {
            written: 2,
            cause: Box::new(cause),
        };
        assert!(may_have_written(&partly(unknown)));
        assert!(!may_have_written(&partly(gave_up)));
        assert!(may_have_written(&SqlError::Cluster(ClientError::Refused(
            ApiError::OutcomeUnknown
        ))));
    }
}
