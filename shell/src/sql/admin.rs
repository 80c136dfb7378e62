//! Statements about the cluster rather than rows: `SHOW TABLES`, `SHOW COLUMNS FROM t`,
//! `SHOW SHARDS [FROM TABLE t]`, `SHOW NODES`, and the placement operations
//! `ALTER TABLE t SPLIT AT VALUES (...)[, (...)]`, `ALTER SHARD n RELOCATE FROM a TO b`,
//! `ALTER SHARD n TRANSFER LEADER TO b` and `ALTER SHARD n MERGE`.
//!
//! An operation statement waits for its operation to end (at most [`OPERATION_WAIT`]) and
//! reports its final state; Ctrl-C stops the waiting, not the operation.

use std::time::{Duration, Instant};

use rshard_common::api::{Operation, OperationState, ShardRoute};
use rshard_common::client::Client;

use super::expr::{bind, Scope};
use super::tokens::Tokens;
use super::Outcome;
use crate::catalog;
use crate::encoding::{self, show_key, table_span};
use crate::error::SqlError;
use crate::store::Store;
use crate::value::Value;

/// How long an operation statement waits for its operation to end.
pub const OPERATION_WAIT: Duration = Duration::from_secs(120);
const OPERATION_POLL: Duration = Duration::from_millis(200);
/// How long a split statement waits for the nodes' view to show the new boundary.
const VIEW_CATCH_UP: Duration = Duration::from_secs(5);
/// Times a split is asked again when the route it used turns out stale.
const SPLIT_ROUTE_ATTEMPTS: usize = 10;

#[derive(Clone, Debug, PartialEq)]
pub enum AdminStatement {
    ShowTables,
    ShowColumns(String),
    ShowShards(Option<String>),
    ShowNodes,
    SplitTable {
        table: String,
        /// The text of the VALUES list, parsed against the table's key when run.
        values: String,
    },
    Relocate {
        shard: u64,
        from: u64,
        to: u64,
    },
    TransferLeader {
        shard: u64,
        to: u64,
    },
    Merge {
        shard: u64,
    },
}

pub fn parse(mut words: Tokens<'_>) -> Result<AdminStatement, SqlError> {
    let statement = if words.accept("SHOW") {
        match words.peek_word().as_deref() {
            Some("TABLES") => {
                words.accept("TABLES");
                AdminStatement::ShowTables
            }
            Some("NODES") => {
                words.accept("NODES");
                AdminStatement::ShowNodes
            }
            Some("COLUMNS") => {
                words.accept("COLUMNS");
                words.expect("FROM")?;
                AdminStatement::ShowColumns(words.name("a table name")?)
            }
            Some("SHARDS") => {
                words.accept("SHARDS");
                if words.accept("FROM") {
                    words.expect("TABLE")?;
                    AdminStatement::ShowShards(Some(words.name("a table name")?))
                } else {
                    AdminStatement::ShowShards(None)
                }
            }
            _ => return Err(words.error("TABLES, COLUMNS, SHARDS or NODES")),
        }
    } else {
        words.expect("ALTER")?;
        if words.accept("TABLE") {
            let table = words.name("a table name")?;
            words.expect("SPLIT")?;
            words.expect("AT")?;
            if words.peek_word().as_deref() != Some("VALUES") {
                return Err(words.error("VALUES"));
            }
            return Ok(AdminStatement::SplitTable {
                table,
                values: words.rest().to_string(),
            });
        }
        words.expect("SHARD")?;
        let shard = words.number("a shard id")?;
        if words.accept("RELOCATE") {
            words.expect("FROM")?;
            let from = words.number("a node id")?;
            words.expect("TO")?;
            let to = words.number("a node id")?;
            AdminStatement::Relocate { shard, from, to }
        } else if words.accept("TRANSFER") {
            words.expect("LEADER")?;
            words.expect("TO")?;
            AdminStatement::TransferLeader {
                shard,
                to: words.number("a node id")?,
            }
        } else if words.accept("MERGE") {
            AdminStatement::Merge { shard }
        } else {
            return Err(words.error("RELOCATE, TRANSFER LEADER or MERGE"));
        }
    };
    words.end()?;
    Ok(statement)
}

fn cluster(store: &Store) -> Result<&Client, SqlError> {
    match store {
        Store::Cluster(client) => Ok(client),
        Store::Memory(_) => Err(SqlError::Admin(
            "this statement needs a cluster (the shell runs on an in-memory store)".to_string(),
        )),
    }
}

fn text(value: impl Into<String>) -> Value {
    Value::Text(value.into())
}

fn ids(ids: &[u64]) -> Value {
    text(ids.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
}

fn count(value: Option<u64>) -> Value {
    value.map_or(Value::Null, |v| Value::Int(v as i64))
}

/// The shards overlapping `[start, end)` (empty end: unbounded), in key order.
pub fn shards_in(mut shards: Vec<ShardRoute>, span: Option<(Vec<u8>, Vec<u8>)>) -> Vec<ShardRoute> {
    shards.sort_by(|a, b| a.descriptor.start_key.cmp(&b.descriptor.start_key));
    if let Some((start, end)) = span {
        shards.retain(|route| {
            let d = &route.descriptor;
            let starts_before_end = end.is_empty() || d.start_key < end;
            let ends_after_start = d.end_key.is_empty() || d.end_key > start;
            starts_before_end && ends_after_start
        });
    }
    shards
}

impl AdminStatement {
    pub async fn execute(self, store: &Store) -> Result<Outcome, SqlError> {
        match self {
            AdminStatement::ShowTables => {
                let tables = catalog::tables(store).await?;
                Ok(Outcome::Rows {
                    columns: vec![
                        "table".into(),
                        "id".into(),
                        "columns".into(),
                        "primary key".into(),
                    ],
                    rows: tables
                        .into_iter()
                        .filter(|t| t.state == catalog::TableState::Public)
                        .map(|t| {
                            let key: Vec<&str> = t
                                .primary_key
                                .iter()
                                .map(|&i| t.columns[i].name.as_str())
                                .collect();
                            vec![
                                text(t.name.clone()),
                                Value::Int(t.id as i64),
                                Value::Int(t.columns.len() as i64),
                                text(key.join(", ")),
                            ]
                        })
                        .collect(),
                })
            }
            AdminStatement::ShowColumns(name) => {
                let table = catalog::table(store, &name).await?;
                Ok(Outcome::Rows {
                    columns: ["column", "type", "nullable", "default", "key"]
                        .map(String::from)
                        .to_vec(),
                    rows: table
                        .columns
                        .iter()
                        .enumerate()
                        .map(|(index, c)| {
                            vec![
                                text(c.name.clone()),
                                text(c.column_type.to_string()),
                                Value::Bool(c.nullable),
                                c.default
                                    .as_ref()
                                    .map_or(Value::Null, |d| text(d.literal())),
                                table
                                    .primary_key
                                    .iter()
                                    .position(|&k| k == index)
                                    .map_or(Value::Null, |p| Value::Int(p as i64 + 1)),
                            ]
                        })
                        .collect(),
                })
            }
            AdminStatement::ShowShards(table) => {
                let client = cluster(store)?;
                let span = match &table {
                    Some(name) => Some(table_span(catalog::table(store, name).await?.id)),
                    None => None,
                };
                let (_, shards) = client.cluster().await?;
                let rows = shards_in(shards, span)
                    .into_iter()
                    .map(|route| {
                        let d = &route.descriptor;
                        let stats = route.stats.as_ref();
                        vec![
                            Value::Int(d.id as i64),
                            text(show_key(&d.start_key)),
                            text(show_key(&d.end_key)),
                            route
                                .leader
                                .as_ref()
                                .map_or(Value::Null, |l| Value::Int(l.id as i64)),
                            ids(&d.replicas),
                            count(stats.and_then(|s| s.bytes)),
                            count(stats.and_then(|s| s.keys)),
                        ]
                    })
                    .collect();
                Ok(Outcome::Rows {
                    columns: [
                        "shard", "start", "end", "leader", "replicas", "bytes", "keys",
                    ]
                    .map(String::from)
                    .to_vec(),
                    rows,
                })
            }
            AdminStatement::ShowNodes => {
                let client = cluster(store)?;
                let (nodes, shards) = client.cluster().await?;
                let rows = nodes
                    .into_iter()
                    .map(|node| {
                        let leads = shards
                            .iter()
                            .filter(|s| s.leader.as_ref().is_some_and(|l| l.id == node.id))
                            .count();
                        vec![
                            Value::Int(node.id as i64),
                            text(node.address),
                            Value::Bool(node.live),
                            count(node.capacity.map(|c| c.replicas)),
                            Value::Int(leads as i64),
                        ]
                    })
                    .collect();
                Ok(Outcome::Rows {
                    columns: ["node", "address", "live", "replicas", "leaders"]
                        .map(String::from)
                        .to_vec(),
                    rows,
                })
            }
            AdminStatement::SplitTable { table, values } => {
                split_table(store, &table, &values).await
            }
            AdminStatement::Relocate { shard, from, to } => {
                let client = cluster(store)?;
                let operation = client.move_replica(shard, from, to).await?;
                finish("ALTER SHARD", client, operation).await
            }
            AdminStatement::TransferLeader { shard, to } => {
                let client = cluster(store)?;
                let operation = client.transfer_leader(shard, to).await?;
                finish("ALTER SHARD", client, operation).await
            }
            AdminStatement::Merge { shard } => {
                let client = cluster(store)?;
                let operation = client.merge_shard(shard).await?;
                finish("ALTER SHARD", client, operation).await
            }
        }
    }
}

/// Waits for `operation` to end; its final state as the statement's result.
async fn wait(client: &Client, mut operation: Operation) -> Result<Operation, SqlError> {
    let until = Instant::now() + OPERATION_WAIT;
    while !operation.state.is_terminal() {
        if Instant::now() >= until {
            return Err(SqlError::Admin(format!(
                "operation {} is still running after {} s (follow it with `rshard admin ops`)",
                operation.id,
                OPERATION_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(OPERATION_POLL).await;
        // Placement's leadership may move meanwhile: keep asking until the deadline.
        if let Some(current) = client
            .operations()
            .await
            .ok()
            .and_then(|all| all.into_iter().find(|o| o.id == operation.id))
        {
            operation = current;
        }
    }
    Ok(operation)
}

async fn finish(tag: &str, client: &Client, operation: Operation) -> Result<Outcome, SqlError> {
    let operation = wait(client, operation).await?;
    let what = operation.kind.describe();
    match operation.state {
        OperationState::Done => Ok(Outcome::Status {
            tag: tag.to_string(),
            notes: vec![format!("operation {}: {what}: done", operation.id)],
        }),
        OperationState::Failed { reason } => Err(SqlError::Admin(format!(
            "operation {}: {what}: failed: {reason}",
            operation.id
        ))),
        OperationState::Running => Err(SqlError::Admin(format!(
            "operation {} is still running",
            operation.id
        ))),
    }
}

async fn split_table(store: &Store, name: &str, values: &str) -> Result<Outcome, SqlError> {
    let client = cluster(store)?;
    let table = catalog::table(store, name).await?;
    let dialect = super::dialect();
    let query = sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(values)
        .and_then(|mut parser| parser.parse_query())
        .map_err(super::syntax_error)?;
    let sqlparser::ast::SetExpr::Values(values) = *query.body else {
        return Err(SqlError::Unsupported(
            "SPLIT AT takes VALUES (...)".to_string(),
        ));
    };
    let mut keys = Vec::new();
    for row in &values.rows {
        if row.content.is_empty() || row.content.len() > table.primary_key.len() {
            return Err(SqlError::Constraint(format!(
                "a split point gives {} values; the primary key of {} has {} column(s)",
                row.content.len(),
                table.name,
                table.primary_key.len()
            )));
        }
        let mut key = encoding::table_prefix(table.id);
        for (expr, &index) in row.content.iter().zip(&table.primary_key) {
            let column = &table.columns[index];
            let value = bind(expr, Scope::NONE)?
                .constant()?
                .coerce(column.column_type, &column.name)?;
            if value.is_null() {
                return Err(SqlError::Constraint(
                    "a split point cannot be NULL".to_string(),
                ));
            }
            encoding::encode_key_value(&value, &mut key);
        }
        keys.push(key);
    }
    let mut notes = Vec::new();
    for key in keys {
        let operation = start_split(client, &key).await?;
        let Some(operation) = operation else {
            notes.push(format!(
                "{} is already where a shard starts",
                show_key(&key)
            ));
            continue;
        };
        let operation = wait(client, operation).await?;
        let what = operation.kind.describe();
        match operation.state {
            OperationState::Done => {
                notes.push(format!("operation {}: {what}: done", operation.id));
                await_boundary(client, &key).await;
            }
            OperationState::Failed { reason } => {
                return Err(SqlError::Admin(format!(
                    "operation {}: {what}: failed: {reason}{}",
                    operation.id,
                    if notes.is_empty() {
                        String::new()
                    } else {
                        format!(" (earlier splits stay: {})", notes.join("; "))
                    }
                )))
            }
            OperationState::Running => {
                return Err(SqlError::Admin(format!(
                    "operation {} is still running",
                    operation.id
                )))
            }
        }
    }
    Ok(Outcome::Status {
        tag: "ALTER TABLE".to_string(),
        notes,
    })
}

/// Waits (a few seconds at most) until the nodes' view of the cluster shows a shard
/// starting at `key`: nodes learn of a split with their next report, and a SHOW SHARDS
/// right after the split should show it.
async fn await_boundary(client: &Client, key: &[u8]) {
    let until = Instant::now() + VIEW_CATCH_UP;
    while Instant::now() < until {
        if let Ok((_, shards)) = client.cluster().await {
            if shards.iter().any(|s| s.descriptor.start_key == key) {
                return;
            }
        }
        tokio::time::sleep(OPERATION_POLL).await;
    }
}

/// Asks placement to split the shard holding `key` at `key`; `None` if a shard already
/// starts there. A refusal because the route used was stale (a node had not yet applied
/// an earlier split) is asked again with a fresh route.
pub async fn start_split(client: &Client, key: &[u8]) -> Result<Option<Operation>, SqlError> {
    let mut attempts = 0;
    loop {
        let shard = client.fresh_shard_of(key).await?;
        if shard.start_key == key {
            return Ok(None);
        }
        match client.split_shard(shard.id, key, None).await {
            Ok(operation) => return Ok(Some(operation)),
            Err(rshard_common::client::ClientError::Refused(
                rshard_common::api::ApiError::Refused(_),
            )) if attempts < SPLIT_ROUTE_ATTEMPTS => {
                attempts += 1;
                tokio::time::sleep(OPERATION_POLL).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Splits at `key` and waits for the operation to end and for the nodes to see the new
/// boundary.
pub async fn split_at(client: &Client, key: &[u8]) -> Result<(), SqlError> {
    if let Some(operation) = start_split(client, key).await? {
        let operation = wait(client, operation).await?;
        if let OperationState::Failed { reason } = operation.state {
            return Err(SqlError::Admin(format!(
                "operation {}: failed: {reason}",
                operation.id
            )));
        }
    }
    await_boundary(client, key).await;
    Ok(())
}
