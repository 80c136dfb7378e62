//! The QUIC transport between nodes, under the driver's [`Transport`] trait.
//!
//! - One connection per peer, dialed on first use and redialed after it fails; nodes
//!   present `node.crt` and accept only peers whose certificate is a node's, signed by the
//!   cluster CA.
//! - Raft frames travel on one long-lived uni-directional stream per peer; snapshot chunks
//!   and acknowledgements on another, paced by a bandwidth limit, so a transfer never
//!   delays heartbeats (QUIC streams do not block each other).
//! - Each stream opens with a [`StreamHello`] naming the cluster and the sending node; every
//!   frame after it must come from that node. A frame that is oversized, undecodable or from
//!   anyone else ends that stream (logged); the connection and the other streams go on.
//! - The driver never waits: frames go into a bounded queue per peer and are dropped when it
//!   is full or the peer cannot be reached (Raft retries).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use rshard_common::quic;
use rshard_common::wire::{self, WireError};
use rshard_raft::NodeId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::driver_thread::DriverHandle;
use crate::multiraft::{
    Frame, Input, SendError, SnapshotMessage, Transport, MAX_FRAME_BYTES,
    MAX_SNAPSHOT_MESSAGE_BYTES,
};

/// The largest stream hello, in bytes.
const MAX_HELLO_BYTES: usize = 4 << 10;
/// How long dialing a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed dial, frames to that peer are dropped for this long before the next try.
const REDIAL_BACKOFF: Duration = Duration::from_millis(500);

/// QUIC application error codes on closed streams and connections.
pub mod codes {
    pub const BAD_FRAME: u32 = 1;
    pub const NOT_A_NODE: u32 = 2;
    pub const WRONG_CLUSTER: u32 = 3;
    pub const SHUTDOWN: u32 = 4;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    Raft,
    Snapshot,
}

/// The first frame of every node-to-node stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHello {
    pub cluster: String,
    pub from: NodeId,
    pub kind: StreamKind,
}

#[derive(Clone, Copy, Debug)]
pub struct NetworkConfig {
    /// Frames (and, separately, snapshot messages) queued per peer; more are dropped.
    pub max_queued_per_peer: usize,
    /// Snapshot bytes sent per second to each peer.
    pub snapshot_bytes_per_second: u64,
}

/// A node's side of the network: its endpoint, who is where, and a link per peer.
#[derive(Debug)]
pub struct Network {
    pub node: NodeId,
    pub cluster: String,
    pub endpoint: quinn::Endpoint,
    config: NetworkConfig,
    addresses: RwLock<BTreeMap<NodeId, SocketAddr>>,
    links: Mutex<BTreeMap<NodeId, PeerLink>>,
    runtime: tokio::runtime::Handle,
    /// Handed to link tasks, so dropping the network ends them.
    me: Weak<Network>,
}

#[derive(Debug)]
struct PeerLink {
    frames: mpsc::Sender<Vec<u8>>,
    snapshots: mpsc::Sender<Vec<u8>>,
}

type ConnectionSlot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

impl Network {
    pub fn new(
        node: NodeId,
        cluster: String,
        endpoint: quinn::Endpoint,
        config: NetworkConfig,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Network {
            node,
            cluster,
            endpoint,
            config,
            addresses: RwLock::new(BTreeMap::new()),
            links: Mutex::new(BTreeMap::new()),
            runtime,
            me: me.clone(),
        })
    }

    /// Records where `node` listens (from placement's registry).
    pub fn set_address(&self, node: NodeId, address: SocketAddr) {
        if let Ok(mut addresses) = self.addresses.write() {
            addresses.insert(node, address);
        }
    }

    pub fn address(&self, node: NodeId) -> Option<SocketAddr> {
        self.addresses.read().ok()?.get(&node).copied()
    }

    /// Dials `address` as a node (for requests to a node whose id is not known yet).
    pub async fn dial(&self, address: SocketAddr) -> Result<quinn::Connection, String> {
        let connecting = self
            .endpoint
            .connect(address, &quic::server_name(&address))
            .map_err(|error| format!("cannot dial {address}: {error}"))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(format!("cannot connect to {address}: {error}")),
            Err(_) => Err(format!("connecting to {address} timed out")),
        }
    }

    fn queue(&self, to: NodeId, bytes: Vec<u8>, kind: StreamKind) -> Result<(), SendError> {
        let Ok(mut links) = self.links.lock() else {
            return Err(SendError::QueueFull(to));
        };
        let link = links.entry(to).or_insert_with(|| self.start_link(to));
        let queue = match kind {
            StreamKind::Raft => &link.frames,
            StreamKind::Snapshot => &link.snapshots,
        };
        queue.try_send(bytes).map_err(|_| SendError::QueueFull(to))
    }

    fn start_link(&self, peer: NodeId) -> PeerLink {
        let (frames, frames_queue) = mpsc::channel(self.config.max_queued_per_peer);
        let (snapshots, snapshots_queue) = mpsc::channel(self.config.max_queued_per_peer);
        let slot: ConnectionSlot = Arc::default();
        let context = LinkContext {
            network: self.me.clone(),
            peer,
            slot,
            hello: StreamHello {
                cluster: self.cluster.clone(),
                from: self.node,
                kind: StreamKind::Raft,
            },
        };
        self.runtime
            .spawn(send_stream(context.clone(), frames_queue, None));
        let mut snapshot_context = context;
        snapshot_context.hello.kind = StreamKind::Snapshot;
        self.runtime.spawn(send_stream(
            snapshot_context,
            snapshots_queue,
            Some(self.config.snapshot_bytes_per_second),
        ));
        PeerLink { frames, snapshots }
    }
}

/// What one of a peer link's tasks works with. Its queue closes when the network is
/// dropped, which ends the task.
#[derive(Clone, Debug)]
struct LinkContext {
    network: Weak<Network>,
    peer: NodeId,
    /// The connection both of the peer's streams share.
    slot: ConnectionSlot,
    hello: StreamHello,
}

/// The driver's transport: encodes and queues, never waits.
#[derive(Clone, Debug)]
pub struct QuicTransport {
    pub network: Arc<Network>,
}

impl Transport for QuicTransport {
    fn send(&mut self, frame: Frame) -> Result<(), SendError> {
        let to = frame.to;
        let bytes = wire::encode_frame(&frame, MAX_FRAME_BYTES).map_err(|error| {
            tracing::warn!(peer = to, %error, "frame not sent");
            SendError::QueueFull(to)
        })?;
        self.network.queue(to, bytes, StreamKind::Raft)
    }

    fn send_snapshot(&mut self, message: SnapshotMessage) -> Result<(), SendError> {
        let to = message.to();
        let bytes = wire::encode_frame(&message, MAX_SNAPSHOT_MESSAGE_BYTES).map_err(|error| {
            tracing::warn!(peer = to, %error, "snapshot message not sent");
            SendError::QueueFull(to)
        })?;
        self.network.queue(to, bytes, StreamKind::Snapshot)
    }
}

/// Gives `bytes` of budget at `rate` bytes per second, sleeping when it runs out.
#[derive(Debug)]
struct Pacer {
    rate_bytes_per_second: u64,
    available_bytes: f64,
    refilled: Instant,
}

impl Pacer {
    fn new(rate_bytes_per_second: u64) -> Self {
        Pacer {
            rate_bytes_per_second: rate_bytes_per_second.max(1),
            available_bytes: 0.0,
            refilled: Instant::now(),
        }
    }

    async fn take(&mut self, bytes: usize) {
        let rate = self.rate_bytes_per_second as f64;
        let now = Instant::now();
        let burst = rate / 10.0; // at most 100 ms worth saved up
        self.available_bytes = (self.available_bytes
            + now.duration_since(self.refilled).as_secs_f64() * rate)
            .min(burst);
        self.refilled = now;
        self.available_bytes -= bytes as f64;
        if self.available_bytes < 0.0 {
            let wait = Duration::from_secs_f64(-self.available_bytes / rate);
            tokio::time::sleep(wait).await;
        }
    }
}

/// Sends what arrives on `queue` to the peer on one stream, dialing and redialing as
/// needed; drops what cannot be sent.
async fn send_stream(
    context: LinkContext,
    mut queue: mpsc::Receiver<Vec<u8>>,
    rate_bytes_per_second: Option<u64>,
) {
    let mut stream: Option<quinn::SendStream> = None;
    let mut redial_after = Instant::now();
    let mut pacer = rate_bytes_per_second.map(Pacer::new);
    while let Some(bytes) = queue.recv().await {
        if stream.is_none() {
            if Instant::now() < redial_after {
                continue;
            }
            match open_stream(&context).await {
                Ok(opened) => stream = Some(opened),
                Err(error) => {
                    tracing::debug!(peer = context.peer, %error, "peer unreachable");
                    redial_after = Instant::now() + REDIAL_BACKOFF;
                    continue;
                }
            }
        }
        if let Some(pacer) = pacer.as_mut() {
            pacer.take(bytes.len()).await;
        }
        if let Some(open) = stream.as_mut() {
            if let Err(error) = wire::write_frame(open, &bytes).await {
                tracing::debug!(peer = context.peer, %error, "stream to peer failed");
                stream = None;
                *context.slot.lock().await = None;
            }
        }
    }
}

async fn open_stream(context: &LinkContext) -> Result<quinn::SendStream, String> {
    let connection = connection(context).await?;
    let mut stream = connection
        .open_uni()
        .await
        .map_err(|error| error.to_string())?;
    let hello = wire::encode_frame(&context.hello, MAX_HELLO_BYTES).map_err(|e| e.to_string())?;
    wire::write_frame(&mut stream, &hello)
        .await
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// The peer's connection, dialed if there is none alive.
async fn connection(context: &LinkContext) -> Result<quinn::Connection, String> {
    let mut slot = context.slot.lock().await;
    if let Some(connection) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
        return Ok(connection.clone());
    }
    let network = context.network.upgrade().ok_or("the node is stopping")?;
    let address = network
        .address(context.peer)
        .ok_or_else(|| format!("no address known for node {}", context.peer))?;
    let connection = network.dial(address).await?;
    *slot = Some(connection.clone());
    Ok(connection)
}

/// Reads one node-to-node stream: its hello, then frames from that node into the driver.
/// `speaks_for` is the node the connection's first hello named: every later stream of the
/// connection must name it too.
pub async fn receive_stream(
    mut stream: quinn::RecvStream,
    remote: SocketAddr,
    speaks_for: Arc<std::sync::OnceLock<NodeId>>,
    network: Arc<Network>,
    driver: DriverHandle,
) {
    let (cluster, node) = (network.cluster.clone(), network.node);
    let hello: StreamHello = match wire::read_frame(&mut stream, MAX_HELLO_BYTES).await {
        Ok(Some(hello)) => hello,
        Ok(None) => return,
        Err(error) => {
            reject_stream(&mut stream, codes::BAD_FRAME, "bad stream hello", &error);
            return;
        }
    };
    if hello.cluster != cluster {
        tracing::warn!(from = hello.from, theirs = %hello.cluster, "a node of another cluster");
        let _stopped = stream.stop(codes::WRONG_CLUSTER.into());
        return;
    }
    let pinned = *speaks_for.get_or_init(|| hello.from);
    if pinned != hello.from {
        tracing::warn!(pinned, claimed = hello.from, %remote, "a connection changed the node it speaks for");
        let _stopped = stream.stop(codes::BAD_FRAME.into());
        return;
    }
    if network.address(hello.from).is_none() {
        // Nodes dial from the endpoint they listen on: until placement says otherwise,
        // this is where the peer can be reached (needed after a whole-cluster restart,
        // before any placement view).
        network.set_address(hello.from, remote);
    }
    let max_bytes = match hello.kind {
        StreamKind::Raft => MAX_FRAME_BYTES,
        StreamKind::Snapshot => MAX_SNAPSHOT_MESSAGE_BYTES,
    };
    loop {
        let bytes = match wire::read_length(&mut stream, max_bytes).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(error) => {
                reject_stream(&mut stream, codes::BAD_FRAME, "bad frame", &error);
                return;
            }
        };
        let input = match hello.kind {
            StreamKind::Raft => wire::read_body::<Frame>(&mut stream, bytes)
                .await
                .map(|f| (f.from, f.to, Input::Frame(f))),
            StreamKind::Snapshot => wire::read_body::<SnapshotMessage>(&mut stream, bytes)
                .await
                .map(|m| (m.from(), m.to(), Input::Snapshot(m))),
        };
        match input {
            Ok((from, to, input)) => {
                if from != hello.from || to != node {
                    let error = WireError::Malformed(format!(
                        "a frame from {from} to {to} on a stream of node {} to {node}",
                        hello.from
                    ));
                    reject_stream(&mut stream, codes::BAD_FRAME, "forged frame", &error);
                    return;
                }
                // A full driver (in inputs or in bytes) drops the input; Raft retries.
                let _dropped = driver.offer_sized(input, bytes);
            }
            Err(error) => {
                reject_stream(&mut stream, codes::BAD_FRAME, "bad frame", &error);
                return;
            }
        }
    }
}

fn reject_stream(stream: &mut quinn::RecvStream, code: u32, what: &str, error: &WireError) {
    if let WireError::Stream(_) = error {
        tracing::debug!(%error, "stream from a peer ended");
        return;
    }
    tracing::warn!(%error, "{what}; stream closed");
    let _stopped = stream.stop(code.into());
}
