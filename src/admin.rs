//! `rshard admin`: what an operator asks of placement (split a shard, move a replica or a
//! shard's leadership, list shards and operations). Keys are read and printed in the one escaped format the `kv` commands use
//! (`\xNN` for any byte, `\\` for a backslash).
//!
//! An operation is recorded by placement with an id before it starts; the command prints
//! that id and the state the operation ended in (done, or failed with the reason). With
//! `--wait`, one still running when placement answered is followed until it ends.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use rshard_common::api::{Operation, OperationKind, OperationState, ShardRoute};

use rshard_shell::sql::admin::shards_in;
use rshard_shell::store::Store;
use rshard_shell::{catalog, encoding};

use crate::kv::{parse_bytes, show_bytes, ClientArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminAction {
    /// The shards in key order: range, epoch, leader, replicas.
    Shards {
        /// Only the shards holding rows of this SQL table (see `rshard shell`).
        #[arg(long)]
        table: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Split a shard at a key: the keys from KEY on go to a new shard.
    Split {
        #[arg(long)]
        shard: u64,
        #[arg(long)]
        at: String,
        /// Automatic merges may remove the boundary after this long (e.g. 1h); without it,
        /// a manual split stays until an operator merges it away.
        #[arg(long, value_parser = crate::bench::parse_duration)]
        sticky_for: Option<Duration>,
        #[command(flatten)]
        follow: Follow,
    },
    /// Move a shard's leadership to one of its voters.
    TransferLeader {
        #[arg(long)]
        shard: u64,
        /// The node to lead the shard.
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        follow: Follow,
    },
    /// Move a shard's replica from one node to another (the new replica is added, caught
    /// up and promoted in the same change that removes the old one).
    Move {
        #[arg(long)]
        shard: u64,
        /// The node whose replica goes.
        #[arg(long)]
        from: u64,
        /// The node that gets the new replica.
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        follow: Follow,
    },
    /// Merge a shard with its right neighbour (whose replicas first move onto the shard's
    /// nodes); the neighbour is retired.
    Merge {
        #[arg(long)]
        shard: u64,
        #[command(flatten)]
        follow: Follow,
    },
    /// Pause or resume the leader balance scheduler (cluster-wide, kept across restarts).
    LeaderBalance {
        #[arg(value_enum)]
        state: Switch,
    },
    /// Pause or resume the replica balance scheduler (cluster-wide, kept across restarts).
    ReplicaBalance {
        #[arg(value_enum)]
        state: Switch,
    },
    /// Stop a running move or drain (a move is rolled back unless its new replica
    /// already votes); splits and leadership transfers are single steps.
    Cancel {
        /// The operation's id (see `ops`).
        id: u64,
    },
    /// The operations placement recorded, oldest first.
    Ops {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// How an operation's command follows it and prints it.
#[derive(Debug, clap::Args)]
pub struct Follow {
    /// Follow the operation until it ends if it is still running when placement answers.
    #[arg(long)]
    wait: bool,
    /// How long --wait follows it.
    #[arg(long, default_value = "60s", value_parser = crate::bench::parse_duration)]
    timeout: Duration,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// The id of the table named `name`: as given (a name the shell created quoted), else
/// folded to lower case the way the shell folds an unquoted name.
async fn table_id(store: &Store, name: &str) -> anyhow::Result<u64> {
    let name = match catalog::find(store, name).await? {
        Some(_) => name.to_string(),
        None => name.to_lowercase(),
    };
    Ok(catalog::table(store, &name).await?.id)
}

/// Exit code of an operation that failed.
const EXIT_FAILED: u8 = 1;
/// Exit code of an operation still running when the command stopped following it.
const EXIT_RUNNING: u8 = 3;

pub async fn run(args: &ClientArgs, action: AdminAction) -> anyhow::Result<u8> {
    // Shared, because `--table` reads the SQL catalog through the same client.
    let client = Arc::new(args.client()?);
    match action {
        AdminAction::Shards { table, format } => {
            // The table's span is resolved first, so a name that is not a table is an
            // error rather than an empty list.
            let span = match table {
                Some(name) => {
                    let store = Store::Cluster(client.clone());
                    Some(encoding::table_span(table_id(&store, &name).await?))
                }
                None => None,
            };
            let (_, shards) = client.cluster().await?;
            print_shards(&shards_in(shards, span), format);
            Ok(0)
        }
        AdminAction::Split {
            shard,
            at,
            sticky_for,
            follow,
        } => {
            let at = parse_bytes(&at)?;
            if at.is_empty() {
                bail!("--at needs a key: the first key of the new shard");
            }
            let sticky_seconds = sticky_for.map(|duration| duration.as_secs().max(1));
            let operation = client.split_shard(shard, &at, sticky_seconds).await?;
            follow_operation(&client, operation, &follow).await
        }
        AdminAction::LeaderBalance { state } => {
            let enabled = client.set_leader_balance(state == Switch::On).await?;
            print_switch("leader balance", enabled);
            Ok(0)
        }
        AdminAction::ReplicaBalance { state } => {
            let enabled = client.set_replica_balance(state == Switch::On).await?;
            print_switch("replica balance", enabled);
            Ok(0)
        }
        AdminAction::TransferLeader { shard, to, follow } => {
            let operation = client.transfer_leader(shard, to).await?;
            follow_operation(&client, operation, &follow).await
        }
        AdminAction::Move {
            shard,
            from,
            to,
            follow,
        } => {
            if from == to {
                bail!("--from and --to name the same node");
            }
            let operation = client.move_replica(shard, from, to).await?;
            follow_operation(&client, operation, &follow).await
        }
        AdminAction::Merge { shard, follow } => {
            let operation = client.merge_shard(shard).await?;
            follow_operation(&client, operation, &follow).await
        }
        AdminAction::Cancel { id } => {
            let operation = client.cancel_operation(id).await?;
            println!("operation {}: {}", operation.id, state(&operation));
            Ok(0)
        }
        AdminAction::Ops { format } => {
            let operations = client.operations().await?;
            match format {
                Format::Table => {
                    println!("{:<6} {:<10} OPERATION", "ID", "STATE");
                    for operation in &operations {
                        println!(
                            "{:<6} {:<10} {}",
                            operation.id,
                            state(operation),
                            operation.kind.describe()
                        );
                    }
                }
                Format::Json => {
                    let all: Vec<_> = operations.iter().map(operation_json).collect();
                    println!("{}", serde_json::Value::Array(all));
                }
            }
            Ok(0)
        }
    }
}

fn print_switch(scheduler: &str, enabled: bool) {
    println!(
        "{scheduler}: {}",
        if enabled { "on" } else { "off (paused)" }
    );
}

/// Prints the operation, follows it with `--wait` while it runs, prints how it ended; the
/// exit code says it.
pub async fn follow_operation(
    client: &rshard_common::client::Client,
    mut operation: Operation,
    follow: &Follow,
) -> anyhow::Result<u8> {
    if follow.format == Format::Table {
        println!("operation {}: {}", operation.id, operation.kind.describe());
    }
    let started = Instant::now();
    let until = started + follow.timeout;
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    while follow.wait && !operation.state.is_terminal() && Instant::now() < until {
        if follow.format == Format::Table {
            let line = progress_line(&operation);
            if terminal {
                // One line, redrawn in place, with the time so far.
                let elapsed = started.elapsed().as_secs_f64();
                eprint!("\r\x1b[2K{line} ({elapsed:.1} s)");
            } else if line != last_line {
                eprintln!("{line}");
            }
            last_line = line;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Placement may be moving (a drain can move its leader): keep following through
        // errors until the timeout, which says the operation still runs.
        if let Some(current) = client
            .operations()
            .await
            .ok()
            .and_then(|all| all.into_iter().find(|o| o.id == operation.id))
        {
            operation = current;
        }
    }
    if terminal && !last_line.is_empty() {
        eprintln!();
    }
    match follow.format {
        Format::Table => println!("operation {}: {}", operation.id, state(&operation)),
        Format::Json => println!("{}", operation_json(&operation)),
    }
    Ok(match operation.state {
        OperationState::Done => 0,
        OperationState::Failed { .. } => EXIT_FAILED,
        OperationState::Running => EXIT_RUNNING,
    })
}

/// `operation 6: [#####-----] 2/4 node 4 receiving the shard and catching up`, or
/// `operation 6: running` for an operation without recorded progress.
fn progress_line(operation: &Operation) -> String {
    const WIDTH: u64 = 20;
    match &operation.progress {
        Some(progress) if progress.total > 0 => {
            let filled = (progress.done.min(progress.total) * WIDTH / progress.total) as usize;
            format!(
                "operation {}: [{}{}] {}/{} {}",
                operation.id,
                "#".repeat(filled),
                "-".repeat(WIDTH as usize - filled),
                progress.done,
                progress.total,
                progress.step
            )
        }
        _ => format!("operation {}: running", operation.id),
    }
}

fn state(operation: &Operation) -> String {
    match &operation.state {
        OperationState::Running => "running".to_string(),
        OperationState::Done => "done".to_string(),
        OperationState::Failed { reason } => format!("failed: {reason}"),
    }
}

fn operation_json(operation: &Operation) -> serde_json::Value {
    let (kind, details) = match &operation.kind {
        OperationKind::Split {
            shard,
            at,
            new_shard,
        } => (
            "split",
            serde_json::json!({"shard": shard, "at": show_bytes(at), "new_shard": new_shard}),
        ),
        OperationKind::TransferLeader { shard, to } => (
            "transfer-leader",
            serde_json::json!({"shard": shard, "to": to}),
        ),
        OperationKind::MoveReplica { shard, from, to } => (
            "move",
            serde_json::json!({"shard": shard, "from": from, "to": to}),
        ),
        OperationKind::Merge { left, right } => {
            ("merge", serde_json::json!({"left": left, "right": right}))
        }
        OperationKind::Drain { node, decommission } => (
            if *decommission {
                "decommission"
            } else {
                "drain"
            },
            serde_json::json!({"node": node}),
        ),
    };
    let (state, reason) = match &operation.state {
        OperationState::Running => ("running", None),
        OperationState::Done => ("done", None),
        OperationState::Failed { reason } => ("failed", Some(reason.clone())),
    };
    let progress = operation.progress.as_ref().map(|progress| {
        serde_json::json!({"step": progress.step, "done": progress.done, "total": progress.total})
    });
    serde_json::json!({
        "id": operation.id,
        "kind": kind,
        "details": details,
        "state": state,
        "reason": reason,
        "progress": progress,
    })
}

fn print_shards(shards: &[ShardRoute], format: Format) {
    let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    match format {
        Format::Table => {
            println!(
                "{:<6} {:<24} {:<24} {:<8} {:<7} {:<12} {:<9} {:>10} {:>9} {:>8}",
                "SHARD",
                "START",
                "END",
                "VERSION",
                "LEADER",
                "REPLICAS",
                "LEARNERS",
                "BYTES",
                "KEYS",
                "REQ/S"
            );
            let known =
                |value: Option<u64>| value.map_or_else(|| "-".to_string(), |v| v.to_string());
            for route in shards {
                let d = &route.descriptor;
                let leader = route.leader.as_ref().map(|l| l.id.to_string());
                let stats = route.stats.as_ref();
                let learners = if d.learners.is_empty() {
                    "-".to_string()
                } else {
                    ids(&d.learners)
                };
                println!(
                    "{:<6} {:<24} {:<24} {:<8} {:<7} {:<12} {:<9} {:>10} {:>9} {:>8}",
                    d.id,
                    show_bytes(&d.start_key),
                    show_bytes(&d.end_key),
                    d.epoch.version,
                    leader.unwrap_or_else(|| "-".to_string()),
                    ids(&d.replicas),
                    learners,
                    known(stats.and_then(|s| s.bytes)),
                    known(stats.and_then(|s| s.keys)),
                    known(stats.map(|s| s.requests_per_second)),
                );
            }
        }
        Format::Json => {
            let all: Vec<_> = shards
                .iter()
                .map(|route| {
                    let d = &route.descriptor;
                    serde_json::json!({
                        "id": d.id,
                        "start": show_bytes(&d.start_key),
                        "end": show_bytes(&d.end_key),
                        "version": d.epoch.version,
                        "conf_version": d.epoch.conf_version,
                        "leader": route.leader.as_ref().map(|l| l.id),
                        "replicas": d.replicas,
                        "learners": d.learners,
                        "bytes": route.stats.as_ref().and_then(|s| s.bytes),
                        "keys": route.stats.as_ref().and_then(|s| s.keys),
                        "requests_per_second": route.stats.as_ref().map(|s| s.requests_per_second),
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(all));
        }
    }
}
