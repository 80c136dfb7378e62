//! `INSERT INTO t [(cols)] VALUES (...), ...` with an explicit choice on a primary key
//! that exists:
//!
//! - plain INSERT: an error (a compare-and-swap expecting no row), nothing overwritten;
//! - `ON CONFLICT [(key cols)] DO NOTHING`: that row is skipped;
//! - `ON CONFLICT [(key cols)] DO UPDATE SET col = expr [WHERE cond]`: the existing row is
//!   updated (`EXCLUDED.col` is the value the INSERT proposed), by a compare-and-swap on
//!   the row as read, so a concurrent change is seen and the update recomputed;
//! - `UPSERT INTO ...`: the row is written whatever was there.
//!
//! Rows in one batch of one shard are written atomically; a statement whose rows span
//! batches reports it in its result.

use std::collections::BTreeMap;

use rshard_common::api::{WriteOp, MAX_BATCH_OPS};
use sqlparser::ast::{self, OnConflictAction, OnInsert, SetExpr, TableObject};

use super::expr::{bind, ident_name, Scalar, Scope};
use super::scan;
use super::{table_name, Outcome};
use crate::catalog::{self, TableDescriptor};
use crate::error::SqlError;
use crate::store::Store;
use crate::value::Value;

/// Rows one INSERT may carry.
pub const MAX_INSERT_ROWS: usize = 100_000;

#[derive(Clone, Debug)]
pub enum Conflict {
    Error,
    Nothing,
    Update {
        assignments: Vec<(String, ast::Expr)>,
        selection: Option<Box<ast::Expr>>,
    },
    Replace,
}

#[derive(Clone, Debug)]
pub struct Insert {
    pub table: String,
    pub columns: Option<Vec<String>>,
    pub rows: Vec<Vec<ast::Expr>>,
    pub conflict: Conflict,
    /// Columns named by `ON CONFLICT (...)`, checked against the primary key.
    pub conflict_target: Option<Vec<String>>,
}

pub fn assignment_column(target: &ast::AssignmentTarget) -> Result<String, SqlError> {
    match target {
        ast::AssignmentTarget::ColumnName(name) => match name.0.as_slice() {
            [ast::ObjectNamePart::Identifier(ident)] => Ok(ident_name(ident)),
            [_, ast::ObjectNamePart::Identifier(ident)] => Ok(ident_name(ident)),
            _ => Err(SqlError::Unsupported(format!("assigning to {name}"))),
        },
        ast::AssignmentTarget::Tuple(_) => {
            Err(SqlError::Unsupported("assigning to a tuple".to_string()))
        }
    }
}

impl Insert {
    pub fn from_ast(insert: ast::Insert, upsert: bool) -> Result<Self, SqlError> {
        if insert.returning.is_some() || insert.or.is_some() || insert.ignore || insert.overwrite {
            return Err(SqlError::Unsupported(
                "INSERT with RETURNING, OR, IGNORE or OVERWRITE".to_string(),
            ));
        }
        let TableObject::TableName(name) = &insert.table else {
            return Err(SqlError::Unsupported(
                "INSERT INTO a table function".to_string(),
            ));
        };
        let table = table_name(name)?;
        let columns = if insert.columns.is_empty() {
            None
        } else {
            Some(
                insert
                    .columns
                    .iter()
                    .map(|name| match name.0.as_slice() {
                        [ast::ObjectNamePart::Identifier(ident)] => Ok(ident_name(ident)),
                        _ => Err(SqlError::Unsupported(format!("the column name {name}"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let rows = match insert.source.as_deref().map(|query| &*query.body) {
            Some(SetExpr::Values(values)) => values
                .rows
                .iter()
                .map(|row| row.content.clone())
                .collect::<Vec<_>>(),
            Some(_) => {
                return Err(SqlError::Unsupported(
                    "INSERT ... SELECT (give the rows with VALUES)".to_string(),
                ))
            }
            None => return Err(SqlError::Unsupported("INSERT without VALUES".to_string())),
        };
        if rows.len() > MAX_INSERT_ROWS {
            return Err(SqlError::Limit(format!(
                "{} rows in one INSERT is over the limit of {MAX_INSERT_ROWS}",
                rows.len()
            )));
        }
        let (conflict, conflict_target) = match insert.on {
            None if upsert => (Conflict::Replace, None),
            None => (Conflict::Error, None),
            Some(_) if upsert => {
                return Err(SqlError::Unsupported("UPSERT with ON CONFLICT".to_string()))
            }
            Some(OnInsert::OnConflict(on_conflict)) => {
                let target = match on_conflict.conflict_target {
                    None => None,
                    Some(ast::ConflictTarget::Columns { columns, .. }) => {
                        Some(columns.iter().map(ident_name).collect())
                    }
                    Some(ast::ConflictTarget::OnConstraint(_)) => {
                        return Err(SqlError::Unsupported(
                            "ON CONFLICT ON CONSTRAINT".to_string(),
                        ))
                    }
                };
                let conflict = match on_conflict.action {
                    OnConflictAction::DoNothing => Conflict::Nothing,
                    OnConflictAction::DoUpdate(update) => Conflict::Update {
                        assignments: update
                            .assignments
                            .iter()
                            .map(|a| Ok((assignment_column(&a.target)?, a.value.clone())))
                            .collect::<Result<_, SqlError>>()?,
                        selection: update.selection.map(Box::new),
                    },
                };
                (conflict, target)
            }
            Some(_) => {
                return Err(SqlError::Unsupported(
                    "ON DUPLICATE KEY UPDATE (use ON CONFLICT)".to_string(),
                ))
            }
        };
        Ok(Insert {
            table,
            columns,
            rows,
            conflict,
            conflict_target,
        })
    }

    pub async fn execute(self, store: &Store) -> Result<Outcome, SqlError> {
        let table = catalog::table(store, &self.table).await?;
        if let Some(target) = &self.conflict_target {
            let mut target = target.clone();
            target.sort();
            let mut key: Vec<String> = table
                .primary_key
                .iter()
                .map(|&i| table.columns[i].name.clone())
                .collect();
            key.sort();
            if target != key {
                return Err(SqlError::Unsupported(format!(
                    "ON CONFLICT ({}) : the only conflict is on the primary key ({})",
                    target.join(", "),
                    key.join(", ")
                )));
            }
        }
        let targets: Vec<usize> = match &self.columns {
            None => (0..table.columns.len()).collect(),
            Some(names) => {
                let mut indexes = Vec::with_capacity(names.len());
                for name in names {
                    let index = table.column_index(name).ok_or_else(|| {
                        SqlError::UnknownColumn(format!(
                            "column {name} does not exist in table {}",
                            table.name
                        ))
                    })?;
                    if indexes.contains(&index) {
                        return Err(SqlError::Constraint(format!(
                            "column {name} is named twice"
                        )));
                    }
                    indexes.push(index);
                }
                indexes
            }
        };
        let mut proposed: Vec<Vec<Value>> = Vec::with_capacity(self.rows.len());
        for exprs in &self.rows {
            if exprs.len() > targets.len()
                || (self.columns.is_some() && exprs.len() != targets.len())
            {
                return Err(SqlError::Constraint(format!(
                    "a row has {} values for {} columns",
                    exprs.len(),
                    targets.len()
                )));
            }
            let mut values: Vec<Value> = table
                .columns
                .iter()
                .map(|c| c.default.clone().unwrap_or(Value::Null))
                .collect();
            for (expr, &index) in exprs.iter().zip(&targets) {
                let column = &table.columns[index];
                values[index] = bind(expr, Scope::NONE)?
                    .constant()?
                    .coerce(column.column_type, &column.name)?;
            }
            check_not_null(&table, &values)?;
            proposed.push(values);
        }
        let mut encoded = Vec::with_capacity(proposed.len());
        let mut kept = Vec::with_capacity(proposed.len());
        let mut seen = std::collections::HashSet::new();
        for values in proposed {
            let (key, stored) = scan::encode(&table, &values)?;
            if !seen.insert(key.clone()) {
                // With DO NOTHING a later row conflicts with the earlier one, and is
                // skipped as PostgreSQL skips it; any other choice would write the key
                // twice in one statement, which is refused.
                if matches!(self.conflict, Conflict::Nothing) {
                    continue;
                }
                return Err(SqlError::Constraint(format!(
                    "the primary key {} is given twice in this statement",
                    key_text(&table, &values)
                )));
            }
            encoded.push((key, stored));
            kept.push(values);
        }
        let proposed = kept;
        let update = match &self.conflict {
            Conflict::Update {
                assignments,
                selection,
            } => Some(bind_update(&table, assignments, selection.as_deref())?),
            _ => None,
        };
        write(
            store,
            &table,
            &proposed,
            encoded,
            &self.conflict,
            update.as_ref(),
        )
        .await
    }
}

fn key_text(table: &TableDescriptor, values: &[Value]) -> String {
    let names: Vec<&str> = table
        .primary_key
        .iter()
        .map(|&i| table.columns[i].name.as_str())
        .collect();
    let values: Vec<String> = table
        .primary_key
        .iter()
        .map(|&i| values[i].literal())
        .collect();
    format!("({})=({})", names.join(", "), values.join(", "))
}

pub fn check_not_null(table: &TableDescriptor, values: &[Value]) -> Result<(), SqlError> {
    for (column, value) in table.columns.iter().zip(values) {
        if !column.nullable && value.is_null() {
            return Err(SqlError::Constraint(format!(
                "column {} of table {} cannot be NULL",
                column.name, table.name
            )));
        }
    }
    Ok(())
}

type BoundUpdate = (Vec<(usize, Scalar)>, Option<Scalar>);

fn bind_update(
    table: &TableDescriptor,
    assignments: &[(String, ast::Expr)],
    selection: Option<&ast::Expr>,
) -> Result<BoundUpdate, SqlError> {
    let scope = Scope {
        excluded: true,
        ..Scope::of(table)
    };
    let mut bound = Vec::new();
    for (name, expr) in assignments {
        let index = table.column_index(name).ok_or_else(|| {
            SqlError::UnknownColumn(format!(
                "column {name} does not exist in table {}",
                table.name
            ))
        })?;
        if table.is_key_column(index) {
            return Err(SqlError::Unsupported(
                "ON CONFLICT DO UPDATE of a primary key column".to_string(),
            ));
        }
        bound.push((index, bind(expr, scope)?));
    }
    let selection = selection.map(|e| bind(e, scope)).transpose()?;
    Ok((bound, selection))
}

/// Writes the proposed rows under `conflict`; each batch is retried without the rows found
/// to conflict (or with them turned into updates) until every row is written or skipped.
async fn write(
    store: &Store,
    table: &TableDescriptor,
    proposed: &[Vec<Value>],
    encoded: Vec<(Vec<u8>, Vec<u8>)>,
    conflict: &Conflict,
    update: Option<&BoundUpdate>,
) -> Result<Outcome, SqlError> {
    let mut ops: Vec<Option<WriteOp>> = encoded
        .into_iter()
        .map(|(key, stored)| {
            Some(match conflict {
                Conflict::Replace => WriteOp::Put { key, value: stored },
                _ => WriteOp::CompareAndSwap {
                    key,
                    expected: None,
                    new: Some(stored),
                },
            })
        })
        .collect();
    let mut affected: u64 = 0;
    let mut batches = 0;
    // Each round writes or drops at least one row, or recomputes an update that lost a
    // race; the bound stops a hot row fought over for ever.
    let max_rounds = ops.len() * 4 + 16;
    for _ in 0..max_rounds {
        let pending: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].is_some()).collect();
        if pending.is_empty() {
            break;
        }
        let batch: Vec<WriteOp> = pending.iter().filter_map(|&i| ops[i].clone()).collect();
        let failed = match store.write_batches(batch.clone()).await {
            Ok(Ok(count)) => {
                affected += pending.len() as u64;
                batches += count;
                for &i in &pending {
                    ops[i] = None;
                }
                break;
            }
            Ok(Err(failed)) => failed,
            Err(error) => return Err(partly(error, affected)),
        };
        // The operations written before the failing batch are those first in key order.
        let mut by_key: Vec<usize> = (0..batch.len()).collect();
        by_key.sort_by(|&a, &b| batch[a].key().cmp(batch[b].key()));
        for &written in &by_key[..failed.written_ops] {
            ops[pending[written]] = None;
            affected += 1;
        }
        if failed.written_ops > 0 {
            batches += 1;
        }
        let index = pending[failed.op];
        if matches!(conflict, Conflict::Error) && failed.current.is_some() {
            let cause = SqlError::Constraint(format!(
                "duplicate primary key {} in table {}",
                key_text(table, &proposed[index]),
                table.name
            ));
            return Err(partly(cause, affected));
        }
        let key = batch[failed.op].key().to_vec();
        ops[index] = resolve(
            table,
            conflict,
            update,
            &proposed[index],
            key,
            failed.current,
        )
        .map_err(|error| partly(error, affected))?;
        // The rows after it are read in one scan and their conflicts settled now: a batch
        // with many conflicts then costs a few rounds, not one round trip each.
        let unwritten: Vec<usize> = by_key[failed.written_ops..]
            .iter()
            .map(|&position| pending[position])
            .filter(|&i| matches!(ops[i], Some(WriteOp::CompareAndSwap { expected: None, .. })))
            .take(MAX_BATCH_OPS)
            .collect();
        settle_conflicts(
            store, table, conflict, update, proposed, &mut ops, &unwritten,
        )
        .await
        .map_err(|error| partly(error, affected))?;
    }
    let pending = ops.iter().filter(|op| op.is_some()).count();
    if pending > 0 {
        // Rows still pending after the bound kept changing under this statement.
        return Err(partly(
            SqlError::Admin(format!(
                "{pending} row(s) kept changing under this statement; try again"
            )),
            affected,
        ));
    }
    Ok(Outcome::Status {
        tag: format!("INSERT 0 {affected}"),
        notes: batch_note(batches),
    })
}

/// Rows read at most to settle the conflicts of one batch ahead of writing it.
const SETTLE_SCAN_ROWS: usize = 4 * MAX_BATCH_OPS;

/// What to write for a proposed row whose key held `current` when its insert failed
/// (`None`: the row went away meanwhile). For `Conflict::Nothing`, nothing.
fn resolve(
    table: &TableDescriptor,
    conflict: &Conflict,
    update: Option<&BoundUpdate>,
    proposed: &[Value],
    key: Vec<u8>,
    current: Option<Vec<u8>>,
) -> Result<Option<WriteOp>, SqlError> {
    match (conflict, current) {
        (Conflict::Nothing, Some(_)) => Ok(None),
        (Conflict::Update { .. }, current) => {
            let Some((assignments, selection)) = update else {
                return Err(SqlError::Corrupt("an update without its plan".to_string()));
            };
            let Some(stored) = current else {
                // The row went away meanwhile: insert it after all.
                return Ok(Some(WriteOp::CompareAndSwap {
                    key,
                    expected: None,
                    new: Some(scan::encode(table, proposed)?.1),
                }));
            };
            let existing = scan::decode(table, key.clone(), stored.clone())?;
            let keep = match selection {
                Some(s) => matches!(s.eval(&existing.values, Some(proposed))?, Value::Bool(true)),
                None => true,
            };
            if !keep {
                return Ok(None);
            }
            let mut values = existing.values.clone();
            for (column, scalar) in assignments {
                let descriptor = &table.columns[*column];
                values[*column] = scalar
                    .eval(&existing.values, Some(proposed))?
                    .coerce(descriptor.column_type, &descriptor.name)?;
            }
            check_not_null(table, &values)?;
            let (_, new) = scan::encode(table, &values)?;
            Ok(Some(WriteOp::CompareAndSwap {
                key,
                expected: Some(stored),
                new: Some(new),
            }))
        }
        // A condition that expected no row failed with no row there, or a plain write
        // failed a condition it does not have: the store answered wrongly.
        _ => Err(SqlError::Corrupt(
            "a write's condition failed without a conflicting row".to_string(),
        )),
    }
}

/// Reads the keys of the inserts `indexes` (in key order) with one bounded scan and
/// resolves those whose key is taken, as their failed insert would have. A range holding
/// too many other rows is left to be settled one conflict at a time.
async fn settle_conflicts(
    store: &Store,
    table: &TableDescriptor,
    conflict: &Conflict,
    update: Option<&BoundUpdate>,
    proposed: &[Vec<Value>],
    ops: &mut [Option<WriteOp>],
    indexes: &[usize],
) -> Result<(), SqlError> {
    if matches!(conflict, Conflict::Error | Conflict::Replace) {
        return Ok(());
    }
    let keys: Vec<(usize, Vec<u8>)> = indexes
        .iter()
        .filter_map(|&i| Some((i, ops[i].as_ref()?.key().to_vec())))
        .collect();
    let (Some((_, first)), Some((_, last))) = (keys.first(), keys.last()) else {
        return Ok(());
    };
    let end = [last.as_slice(), &[0]].concat();
    let items = store.scan(first, &end, SETTLE_SCAN_ROWS).await?;
    if items.len() >= SETTLE_SCAN_ROWS {
        return Ok(());
    }
    let taken: BTreeMap<Vec<u8>, Vec<u8>> = items.into_iter().collect();
    for (i, key) in keys {
        if let Some(current) = taken.get(&key) {
            ops[i] = resolve(
                table,
                conflict,
                update,
                &proposed[i],
                key,
                Some(current.clone()),
            )?;
        }
    }
    Ok(())
}

/// The note a statement written in more than one batch carries.
pub fn batch_note(batches: usize) -> Vec<String> {
    if batches > 1 {
        vec![format!(
            "written in {batches} batches (the rows span shards or batch limits): each batch is atomic, the statement as a whole is not"
        )]
    } else {
        Vec::new()
    }
}

/// `error`, saying how many rows were written before it, if any.
/// An error that already says so gets the two counts added, not a second note.
pub fn partly(error: SqlError, written: u64) -> SqlError {
    match error {
        _ if written == 0 => error,
        SqlError::PartlyWritten {
            written: before,
            cause,
        } => SqlError::PartlyWritten {
            written: before + written,
            cause,
        },
        error => SqlError::PartlyWritten {
            written,
            cause: Box::new(error),
        },
    }
}
