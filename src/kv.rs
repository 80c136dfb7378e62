//! `rshard kv` and `rshard node`: scripting access to a cluster through the routing client.
//!
//! Keys and values on the command line are text in which `\xNN` stands for any byte and
//! `\\` for a backslash; output uses the same escapes for bytes that are not printable
//! ASCII, so what `kv scan` prints can be pasted back.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use rshard_common::certs::CertsDir;
use rshard_common::client::{Client, ClientOptions};
use rshard_common::keytext;
use rshard_common::quic::Security;

/// Where the cluster is and who is asking.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Nodes to reach the cluster through, comma-separated.
    #[arg(
        long,
        global = true,
        env = "RSHARD_HOST",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001"
    )]
    pub host: Vec<SocketAddr>,
    /// Directory with ca.crt and client.<user>.crt/key.
    #[arg(long, global = true, env = "RSHARD_CERTS_DIR", default_value = "certs")]
    pub certs_dir: PathBuf,
    /// Client user (its certificate: client.<user>.crt).
    #[arg(long, global = true, env = "RSHARD_USER", default_value = "root")]
    pub user: String,
    /// Talk to nodes started with --insecure (no certificates, no authentication).
    #[arg(long, global = true, env = "RSHARD_INSECURE")]
    pub insecure: bool,
}

impl ClientArgs {
    pub fn client(&self) -> anyhow::Result<Client> {
        let security = if self.insecure {
            Security::Insecure
        } else {
            Security::Certs(CertsDir::new(&self.certs_dir, None))
        };
        Ok(Client::new(
            &security,
            &self.user,
            self.host.clone(),
            ClientOptions::default(),
        )?)
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum KvAction {
    /// Prints the value of KEY (exit code 1 if absent).
    Get {
        key: String,
    },
    Put {
        key: String,
        value: String,
    },
    Del {
        key: String,
    },
    /// Prints KEY VALUE lines for the keys in [START, END).
    Scan {
        #[arg(default_value = "")]
        start: String,
        #[arg(default_value = "")]
        end: String,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum NodeAction {
    /// Every node of the cluster and the shards, as a node knows them.
    Ls,
    /// The status of the node at --host (the first one).
    Status,
    /// Move every replica (and so every leadership) off a node; done once no shard lists
    /// it. The node keeps running and serving as a client's entry point.
    Drain {
        /// The node's id.
        id: u64,
        #[command(flatten)]
        follow: crate::admin::Follow,
    },
    /// Drain a node, then remove it from the cluster (stop its process afterwards; its
    /// address may then be given to a new node).
    Decommission {
        id: u64,
        #[command(flatten)]
        follow: crate::admin::Follow,
    },
}

/// Parses a key or value typed in the shared printable form ([`keytext`]).
pub fn parse_bytes(text: &str) -> anyhow::Result<Vec<u8>> {
    Ok(keytext::parse(text)?)
}

pub use keytext::show as show_bytes;

/// Runs a `kv` action; returns the process exit code.
pub async fn run_kv(args: &ClientArgs, action: KvAction) -> anyhow::Result<u8> {
    let client = args.client()?;
    match action {
        KvAction::Get { key } => match client.get(&parse_bytes(&key)?).await? {
            Some(value) => println!("{}", show_bytes(&value)),
            None => {
                eprintln!("(not found)");
                return Ok(1);
            }
        },
        KvAction::Put { key, value } => {
            client
                .put(&parse_bytes(&key)?, &parse_bytes(&value)?)
                .await?;
        }
        KvAction::Del { key } => client.delete(&parse_bytes(&key)?).await?,
        KvAction::Scan { start, end, limit } => {
            let items = client
                .scan(&parse_bytes(&start)?, &parse_bytes(&end)?, limit)
                .await?;
            for (key, value) in items {
                println!("{} {}", show_bytes(&key), show_bytes(&value));
            }
        }
    }
    Ok(0)
}

pub async fn run_node(args: &ClientArgs, action: NodeAction) -> anyhow::Result<u8> {
    let client = args.client()?;
    match action {
        NodeAction::Ls => {
            let (nodes, shards) = client.cluster().await?;
            println!(
                "{:<6} {:<24} {:<6} {:<9} {:>10} {:>10}",
                "NODE", "ADDRESS", "LIVE", "REPLICAS", "DISK FREE", "DISK SIZE"
            );
            let gib = |bytes: u64| format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30));
            for node in nodes {
                let replicas = node.capacity.map(|c| c.replicas.to_string());
                let disk = node.capacity.and_then(|c| c.disk);
                let free = disk.map(|d| gib(d.available_bytes));
                let size = disk.map(|d| gib(d.total_bytes));
                let [replicas, free, size] =
                    [replicas, free, size].map(|text| text.unwrap_or_else(|| "-".to_string()));
                println!(
                    "{:<6} {:<24} {:<6} {:<9} {:>10} {:>10}",
                    node.id, node.address, node.live, replicas, free, size
                );
            }
            println!();
            println!(
                "{:<6} {:<20} {:<20} {:<8} {:<12} LEARNERS",
                "SHARD", "START", "END", "LEADER", "REPLICAS"
            );
            for shard in shards {
                let d = &shard.descriptor;
                let join =
                    |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
                println!(
                    "{:<6} {:<20} {:<20} {:<8} {:<12} {}",
                    d.id,
                    show_bytes(&d.start_key),
                    show_bytes(&d.end_key),
                    shard
                        .leader
                        .map(|l| l.id.to_string())
                        .unwrap_or_else(|| "-".to_string()),
                    join(&d.replicas),
                    join(&d.learners)
                );
            }
        }
        NodeAction::Drain { id, follow } => {
            let operation = client.drain_node(id, false).await?;
            return crate::admin::follow_operation(&client, operation, &follow).await;
        }
        NodeAction::Decommission { id, follow } => {
            let operation = client.drain_node(id, true).await?;
            return crate::admin::follow_operation(&client, operation, &follow).await;
        }
        NodeAction::Status => {
            let Some(&address) = args.host.first() else {
                bail!("no --host given");
            };
            let status = client.node_status(address).await?;
            println!(
                "node {} of cluster {} at {}: {} replicas, leads {}, {}",
                status.node,
                status.cluster,
                status.address,
                status.replicas,
                status.leading,
                if status.ready { "ready" } else { "not ready" }
            );
        }
    }
    Ok(0)
}
