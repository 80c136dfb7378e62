//! The HTTP status listener (`--http-listen`): `/livez`, `/readyz` and `/metrics`.
//!
//! A minimal HTTP/1.1 responder, enough for probes and Prometheus: it reads one request
//! head (at most [`MAX_REQUEST_HEAD_BYTES`], within [`REQUEST_TIMEOUT`]), answers, and
//! closes the connection. Connections are bounded by [`MAX_CONNECTIONS`].
//!
//! - `/livez`: 200 while the process runs.
//! - `/readyz`: 200 once the node has heard from placement and is not draining, else 503.
//! - `/metrics`: the driver's counters in the Prometheus text format.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{NodeContext, ServeError};

const MAX_REQUEST_HEAD_BYTES: usize = 8 << 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 64;

/// Binds `address` and serves status requests; returns the bound address.
pub async fn start(
    context: Arc<NodeContext>,
    address: SocketAddr,
) -> Result<SocketAddr, ServeError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|error| ServeError::Io(format!("cannot listen on {address} for HTTP: {error}")))?;
    let bound = listener
        .local_addr()
        .map_err(|error| ServeError::Io(error.to_string()))?;
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors or similar: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue; // Too many at once: drop this one.
            };
            let context = context.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _timed_out =
                    tokio::time::timeout(REQUEST_TIMEOUT, answer(&context, stream)).await;
            });
        }
    });
    Ok(bound)
}

async fn answer(context: &NodeContext, mut stream: tokio::net::TcpStream) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD_BYTES {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/livez") => ("200 OK", "ok\n".to_string()),
        ("GET", "/readyz") if context.is_ready() => ("200 OK", "ready\n".to_string()),
        ("GET", "/readyz") if context.is_draining() => {
            ("503 Service Unavailable", "draining\n".to_string())
        }
        ("GET", "/readyz") => ("503 Service Unavailable", "not ready\n".to_string()),
        ("GET", "/metrics") => ("200 OK", metrics(context)),
        ("GET", _) => ("404 Not Found", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _closed = stream.write_all(response.as_bytes()).await;
}

/// The node's metrics in the Prometheus text format.
pub fn metrics(context: &NodeContext) -> String {
    let view = context.driver.view();
    let counters = &view.counters;
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _infallible = write!(
            text,
            "# HELP rshard_{name} {help}\n# TYPE rshard_{name} {kind}\nrshard_{name} {value}\n"
        );
    };
    metric(
        "replicas",
        "gauge",
        "Replicas on this node.",
        view.replicas.len() as u64,
    );
    metric(
        "leaders",
        "gauge",
        "Shards this node leads.",
        view.leading().count() as u64,
    );
    metric(
        "ready",
        "gauge",
        "1 if the node serves requests.",
        u64::from(context.is_ready()),
    );
    metric(
        "draining",
        "gauge",
        "1 while shutting down.",
        u64::from(context.is_draining()),
    );
    metric(
        "pending_requests",
        "gauge",
        "Requests waiting for the driver.",
        view.pending_requests as u64,
    );
    metric(
        "ticking_groups",
        "gauge",
        "Groups not quiesced.",
        counters.ticking_groups,
    );
    metric(
        "driver_iterations_total",
        "counter",
        "Driver iterations.",
        counters.iterations,
    );
    metric(
        "storage_syncs_total",
        "counter",
        "Storage syncs (group commits).",
        counters.syncs,
    );
    metric(
        "entries_persisted_total",
        "counter",
        "Log entries made durable.",
        counters.entries_persisted,
    );
    metric(
        "entries_applied_total",
        "counter",
        "Log entries applied.",
        counters.entries_applied,
    );
    metric(
        "inbox_drops_total",
        "counter",
        "Inputs refused by a full driver inbox.",
        counters.inbox_drops,
    );
    metric(
        "malformed_messages_total",
        "counter",
        "Malformed messages from peers.",
        counters.malformed_messages,
    );
    metric(
        "snapshots_sent_total",
        "counter",
        "Snapshots sent.",
        counters.snapshots_sent,
    );
    metric(
        "snapshots_installed_total",
        "counter",
        "Snapshots installed.",
        counters.snapshots_installed,
    );
    metric(
        "shards_split_off_total",
        "counter",
        "Replicas created here by applying a split.",
        counters.shards_split_off,
    );
    metric(
        "stopped",
        "gauge",
        "1 if storage failed and the node stopped.",
        u64::from(view.stopped.is_some()),
    );
    text
}
