//! `rshard serve`: its settings from flags, `RSHARD_*` variables and a TOML file, in that
//! order of precedence, then defaults; and its run until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use rshard_server::node::{Node, ServeConfig};
use serde::Deserialize;

/// Flags (each also read from its `RSHARD_*` variable). A flag left out falls back to the
/// config file, then to the default.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (snake_case keys); unknown keys are errors.
    #[arg(long, env = "RSHARD_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the node's data (created if missing).
    #[arg(long, env = "RSHARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// UDP address to listen on for nodes and clients (QUIC).
    #[arg(long, env = "RSHARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address other nodes and clients reach this node at (default: the listen address).
    #[arg(long, env = "RSHARD_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// Nodes of an existing cluster to join, comma-separated. Ignored once the node has
    /// joined (its data directory remembers).
    #[arg(long, env = "RSHARD_JOIN", value_delimiter = ',')]
    join: Option<Vec<SocketAddr>>,
    /// Directory with ca.crt, node.crt and node.key.
    #[arg(long, env = "RSHARD_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// No certificates: connections are encrypted but nobody is authenticated. Loopback
    /// addresses only, unless --allow-insecure-remote.
    #[arg(long, env = "RSHARD_INSECURE")]
    insecure: bool,
    /// Let --insecure listen on an address other machines can reach.
    #[arg(long, env = "RSHARD_ALLOW_INSECURE_REMOTE")]
    allow_insecure_remote: bool,
    /// TCP address of the HTTP status listener (/metrics, /livez, /readyz).
    #[arg(long, env = "RSHARD_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Replicas per shard.
    #[arg(long, env = "RSHARD_REPLICATION_FACTOR")]
    replication_factor: Option<usize>,
    /// Milliseconds of one Raft tick (election timeout: 10 to 20 ticks).
    #[arg(long, env = "RSHARD_TICK_MS")]
    tick_ms: Option<u64>,
    /// Seconds a graceful shutdown may take.
    #[arg(long, env = "RSHARD_SHUTDOWN_TIMEOUT_SECONDS")]
    shutdown_timeout_seconds: Option<u64>,
    /// Shut down gracefully when standard input closes, as on SIGTERM: `rshard demo` starts
    /// its nodes so, and they stop with it even if it is killed.
    #[arg(long, hide = true)]
    pub exit_with_stdin: bool,
    /// Seconds without a report after which a node gets no new replicas.
    #[arg(long, env = "RSHARD_SUSPECT_NODE_TIMEOUT_SECONDS")]
    suspect_node_timeout_seconds: Option<u64>,
    /// Seconds without a report after which a node's replicas are rebuilt elsewhere.
    #[arg(long, env = "RSHARD_DEAD_NODE_TIMEOUT_SECONDS")]
    dead_node_timeout_seconds: Option<u64>,
    /// Ended operations placement keeps on record (`rshard admin ops`).
    #[arg(long, env = "RSHARD_ENDED_OPERATIONS_KEPT")]
    ended_operations_kept: Option<usize>,
    /// Snapshot bytes per second sent to each peer.
    #[arg(long, env = "RSHARD_SNAPSHOT_BYTES_PER_SECOND")]
    snapshot_bytes_per_second: Option<u64>,
    /// Bytes (keys and values) at which a shard is split in two (default 64 MiB).
    #[arg(long, env = "RSHARD_SPLIT_SIZE_BYTES")]
    split_size_bytes: Option<u64>,
    /// Requests per second that, sustained, split a shard by load (0: never; default 2500).
    #[arg(long, env = "RSHARD_SPLIT_LOAD_REQUESTS_PER_SECOND")]
    split_load_requests_per_second: Option<u64>,
    /// Seconds the load must stay at or over the threshold before a load split (default 10).
    #[arg(long, env = "RSHARD_SPLIT_LOAD_SECONDS")]
    split_load_seconds: Option<u32>,
    /// Two small cold neighbours holding fewer bytes than this together are merged (0:
    /// never; default 16 MiB; must be below the split size).
    #[arg(long, env = "RSHARD_MERGE_SIZE_BYTES")]
    merge_size_bytes: Option<u64>,
    /// Seconds after a shard's range changed before it may be merged (default 600).
    #[arg(long, env = "RSHARD_MERGE_AFTER_RANGE_CHANGE_SECONDS")]
    merge_after_range_change_seconds: Option<u64>,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    advertise: Option<SocketAddr>,
    join: Option<Vec<SocketAddr>>,
    certs_dir: Option<PathBuf>,
    insecure: Option<bool>,
    allow_insecure_remote: Option<bool>,
    http_listen: Option<SocketAddr>,
    replication_factor: Option<usize>,
    tick_ms: Option<u64>,
    shutdown_timeout_seconds: Option<u64>,
    suspect_node_timeout_seconds: Option<u64>,
    dead_node_timeout_seconds: Option<u64>,
    ended_operations_kept: Option<usize>,
    snapshot_bytes_per_second: Option<u64>,
    split_size_bytes: Option<u64>,
    split_load_requests_per_second: Option<u64>,
    split_load_seconds: Option<u32>,
    merge_size_bytes: Option<u64>,
    merge_after_range_change_seconds: Option<u64>,
}

/// The node's settings: flags and variables over the file over the defaults.
pub fn serve_config(args: ServeArgs) -> anyhow::Result<ServeConfig> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str::<ServeFile>(&text)
                .with_context(|| format!("bad config file {}", path.display()))?
        }
        None => ServeFile::default(),
    };
    let Some(data_dir) = args.data_dir.or(file.data_dir) else {
        bail!("--data-dir is required (or data_dir in the config file)");
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7001)));
    let certs_dir = args
        .certs_dir
        .or(file.certs_dir)
        .unwrap_or_else(|| PathBuf::from("certs"));
    let mut config = ServeConfig::new(data_dir, listen, certs_dir);
    config.insecure = args.insecure || file.insecure.unwrap_or(false);
    config.allow_insecure_remote =
        args.allow_insecure_remote || file.allow_insecure_remote.unwrap_or(false);
    if config.allow_insecure_remote && !config.insecure {
        bail!("allow_insecure_remote is set without insecure");
    }
    config.advertise = args.advertise.or(file.advertise);
    config.join = args.join.or(file.join).unwrap_or_default();
    config.http_listen = args.http_listen.or(file.http_listen);
    if let Some(factor) = args.replication_factor.or(file.replication_factor) {
        if factor == 0 {
            bail!("the replication factor must be at least 1");
        }
        config.replication_factor = factor;
    }
    if let Some(tick_ms) = args.tick_ms.or(file.tick_ms) {
        if !(1..=10_000).contains(&tick_ms) {
            bail!("tick_ms must be 1 to 10000, not {tick_ms}");
        }
        config.tick = Duration::from_millis(tick_ms);
    }
    if let Some(seconds) = args
        .shutdown_timeout_seconds
        .or(file.shutdown_timeout_seconds)
    {
        config.shutdown_timeout = Duration::from_secs(seconds);
    }
    if let Some(seconds) = args
        .suspect_node_timeout_seconds
        .or(file.suspect_node_timeout_seconds)
    {
        config.suspect_node_timeout = Duration::from_secs(seconds.max(1));
    }
    if let Some(seconds) = args
        .dead_node_timeout_seconds
        .or(file.dead_node_timeout_seconds)
    {
        config.dead_node_timeout = Duration::from_secs(seconds.max(1));
    }
    if let Some(kept) = args.ended_operations_kept.or(file.ended_operations_kept) {
        config.ended_operations_kept = kept;
    }
    if config.dead_node_timeout < config.suspect_node_timeout {
        bail!(
            "dead_node_timeout_seconds ({}) must not be below suspect_node_timeout_seconds ({})",
            config.dead_node_timeout.as_secs(),
            config.suspect_node_timeout.as_secs()
        );
    }
    if let Some(rate) = args
        .snapshot_bytes_per_second
        .or(file.snapshot_bytes_per_second)
    {
        config.snapshot_bytes_per_second = rate.max(1);
    }
    if let Some(bytes) = args.split_size_bytes.or(file.split_size_bytes) {
        if bytes < 4096 {
            bail!("split_size_bytes must be at least 4096, not {bytes}");
        }
        config.split_size_bytes = bytes;
    }
    if let Some(rate) = args
        .split_load_requests_per_second
        .or(file.split_load_requests_per_second)
    {
        config.split_load_requests_per_second = rate;
    }
    if let Some(seconds) = args.split_load_seconds.or(file.split_load_seconds) {
        // One report a second: the load must hold over that many reports in a row.
        config.split_load_sustained_reports = seconds.max(1);
    }
    if let Some(bytes) = args.merge_size_bytes.or(file.merge_size_bytes) {
        config.merge_size_bytes = bytes;
    }
    if let Some(seconds) = args
        .merge_after_range_change_seconds
        .or(file.merge_after_range_change_seconds)
    {
        config.merge_after_range_change = Duration::from_secs(seconds);
    }
    if config.merge_size_bytes >= config.split_size_bytes {
        bail!(
            "merge_size_bytes ({}) must be below split_size_bytes ({}), or a merged shard would split again",
            config.merge_size_bytes,
            config.split_size_bytes
        );
    }
    Ok(config)
}

/// Runs a node until SIGTERM or SIGINT, then shuts it down gracefully; a second signal
/// exits at once.
pub async fn run(config: ServeConfig, exit_with_stdin: bool) -> anyhow::Result<()> {
    // Watched once the node runs: until then a signal ends the process the default way.
    let node = Node::start(config).await?;
    let mut signals = Signals::watch()?;
    if let Some(address) = node.local_address() {
        // One line for scripts and tests to wait for.
        println!(
            "rshard node {} listening on {address}{}",
            node.context.identity.node,
            node.http_address
                .map(|http| format!(" (http {http})"))
                .unwrap_or_default()
        );
    }
    let stdin_closed = async {
        if !exit_with_stdin {
            return std::future::pending().await;
        }
        // Reading stdin blocks: a thread does it and reports its end.
        let (closed, wait) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            while matches!(std::io::Read::read(&mut std::io::stdin(), &mut sink), Ok(n) if n > 0) {}
            let _ = closed.send(());
        });
        let _ = wait.await;
    };
    let failure = tokio::select! {
        () = signals.next() => None,
        () = stdin_closed => None,
        reason = node.failure() => Some(reason),
    };
    if let Some(reason) = failure {
        // Like a failed fsync in PostgreSQL or etcd: the data on disk is in doubt, so the
        // node stops serving at once. A restart replays the log from what is durable.
        tracing::error!(%reason, "the node failed; stopping it to protect the data");
        node.shutdown().await;
        anyhow::bail!(
            "the node failed ({reason}) and stopped. Check the disk and the log, then restart it"
        );
    }
    // The same listeners wait for the second signal: one that arrives at any moment after
    // the first is kept by them, never lost between two registrations.
    tokio::spawn(async move {
        signals.next().await;
        tracing::error!("second signal: exiting now");
        std::process::exit(130);
    });
    tracing::warn!("shutting down; signal again to exit at once");
    node.shutdown().await;
    Ok(())
}

/// SIGTERM and SIGINT, watched from start-up to exit.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn watch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<ServeConfig> {
        let wrapper = Wrapper::try_parse_from([&["rshard"][..], args].concat())?;
        serve_config(wrapper.serve)
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("rshard.toml");
        std::fs::write(
            &file,
            "data_dir = \"from-file\"\nlisten = \"127.0.0.1:9000\"\ntick_ms = 20\n",
        )
        .expect("written");
        let file = file.to_str().expect("UTF-8");
        let merged = config(&["--config", file, "--listen", "127.0.0.1:9100"]).expect("valid");
        assert_eq!(merged.data_dir, PathBuf::from("from-file"));
        assert_eq!(merged.listen, SocketAddr::from(([127, 0, 0, 1], 9100)));
        assert_eq!(merged.tick, Duration::from_millis(20));
        assert_eq!(merged.replication_factor, 3, "the default");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("rshard.toml");
        std::fs::write(&file, "data_dir = \"d\"\nreplicaton_factor = 3\n").expect("written");
        let error = config(&["--config", file.to_str().expect("UTF-8")]).err();
        let error = format!("{:#}", error.expect("refused"));
        assert!(
            error.contains("unknown field `replicaton_factor`"),
            "{error}"
        );
        assert!(config(&[]).is_err(), "no data dir");
        assert!(config(&["--data-dir", "d", "--replication-factor", "0"]).is_err());
        assert!(config(&["--data-dir", "d", "--tick-ms", "0"]).is_err());
    }
}
