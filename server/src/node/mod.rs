//! `rshard serve`: one node of a cluster, as a process.
//!
//! Start-up, in order:
//! 1. open the store in the data directory, and the QUIC endpoint (mutual TLS against the
//!    cluster CA);
//! 2. find the node's identity: the one in the store (a restart: `--join` is then ignored);
//!    else, with `--join`, ask the cluster for an id; else bootstrap a new cluster as node
//!    1 with the placement shard (0, keys from 0xff) and one data shard (1, every user key);
//! 3. run the driver thread, the listener (nodes and clients), the report/scheduler loop
//!    and the HTTP status listener;
//! 4. on shutdown: stop taking requests (`/readyz` turns 503), hand the leadership of every
//!    shard it leads to another voter, wait for that up to the shutdown deadline, then stop.
//!
//! Joining is idempotent for a node that crashed halfway: it presents a join token kept in
//! its store, and placement answers the same id for the same address and token. A node with
//! an empty data directory at a registered address has a new token and is refused.

mod api;
mod driver_thread;
mod http;
mod network;
mod placement;
mod shard_stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rshard_common::api::{
    ApiError, ApiRequest, ApiResponse, NodeId, NodeInfo, ShardRoute, FIRST_DATA_SHARD,
    MAX_API_FRAME_BYTES, PLACEMENT_SHARD, SYSTEM_KEY_PREFIX,
};
use rshard_common::certs::CertsDir;
use rshard_common::shard::{ShardDescriptor, ShardId};
use rshard_common::{quic, tls, wire};
use thiserror::Error;

pub use api::Caller;
pub use driver_thread::{DriverHandle, NodeView};
pub use network::{NetworkConfig, StreamHello, StreamKind};

use crate::multiraft::{DriverConfig, Input, MultiRaft};
use crate::storage::{NodeIdentity, NodeStore, StoreError};
use driver_thread::ThreadConfig;
use network::{Network, QuicTransport};
use placement::PlacementMemory;

/// Everything `rshard serve` is configured with.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The address other nodes and clients reach this node at (default: `listen`).
    pub advertise: Option<SocketAddr>,
    /// Nodes of the cluster to join (ignored once this node has an identity).
    pub join: Vec<SocketAddr>,
    pub certs_dir: PathBuf,
    /// No certificates: encrypted but unauthenticated connections (see
    /// [`quic::Security::Insecure`]); loopback addresses only unless
    /// `allow_insecure_remote`.
    pub insecure: bool,
    pub allow_insecure_remote: bool,
    pub http_listen: Option<SocketAddr>,
    /// One driver tick of wall-clock time.
    pub tick: Duration,
    pub election_timeout_ticks: u32,
    pub heartbeat_interval_ticks: u32,
    pub replication_factor: usize,
    /// A node placement has not heard from for this long is not live: it gets no new
    /// replicas, leaderships or moves.
    pub suspect_node_timeout: Duration,
    /// A node placement has not heard from for this long is dead: its replicas are rebuilt
    /// on other nodes (see `rshard_placement::repair`). Never below the suspect timeout.
    pub dead_node_timeout: Duration,
    /// Ended operations placement keeps on record (the oldest beyond go, a bounded number
    /// per scheduler round), so the records every round scans stay bounded.
    pub ended_operations_kept: usize,
    /// A shard whose keys and values reach this many bytes is split in two (by its middle
    /// key by bytes); see `rshard_placement::splits`.
    pub split_size_bytes: u64,
    /// A shard answering this many requests per second or more for
    /// [`ServeConfig::split_load_sustained_reports`] reports in a row is split at the key
    /// that halves its load. 0 turns load splits off.
    pub split_load_requests_per_second: u64,
    pub split_load_sustained_reports: u32,
    /// Two adjacent shards holding fewer bytes than this together, and each cold (under a
    /// quarter of the load threshold), are merged. Below `split_size_bytes`, so a merged
    /// shard is never split again at once; 0 turns automatic merges off.
    pub merge_size_bytes: u64,
    /// A shard whose range changed (a split or merge) this recently is not merged.
    pub merge_after_range_change: Duration,
    /// How long a request may wait for its shard.
    pub request_timeout: Duration,
    /// How long a graceful shutdown may take before the node stops anyway.
    pub shutdown_timeout: Duration,
    pub snapshot_bytes_per_second: u64,
    pub max_queued_frames_per_peer: usize,
    pub max_queued_commands: usize,
}

impl ServeConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr, certs_dir: PathBuf) -> Self {
        ServeConfig {
            data_dir,
            listen,
            advertise: None,
            join: Vec::new(),
            certs_dir,
            insecure: false,
            allow_insecure_remote: false,
            http_listen: None,
            tick: Duration::from_millis(50),
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 2,
            replication_factor: 3,
            suspect_node_timeout: Duration::from_secs(10),
            dead_node_timeout: Duration::from_secs(300),
            ended_operations_kept: 1000,
            split_size_bytes: 64 << 20,
            split_load_requests_per_second: 2500,
            split_load_sustained_reports: 10,
            merge_size_bytes: 16 << 20,
            merge_after_range_change: Duration::from_secs(600),
            request_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            snapshot_bytes_per_second: 64 << 20,
            max_queued_frames_per_peer: 1024,
            max_queued_commands: 65_536,
        }
    }
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot join the cluster: {0}")]
    Join(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
}

/// What every part of a running node shares.
#[derive(Debug)]
pub struct NodeContext {
    pub identity: NodeIdentity,
    /// The advertised address, as other nodes and clients dial it.
    pub address: String,
    pub config: ServeConfig,
    pub driver: DriverHandle,
    network: Arc<Network>,
    cluster: RwLock<(Vec<NodeInfo>, Vec<ShardRoute>)>,
    placement: Mutex<PlacementMemory>,
    /// Size and load of the shards led here, for the reports to placement.
    shard_stats: shard_stats::ShardStatsTracker,
    connections: quic::ConnectionPool<String>,
    store: NodeStore,
    known_peers: Mutex<Vec<(NodeId, String)>>,
    ready: AtomicBool,
    draining: AtomicBool,
    /// KiB of request bodies being read or served, at most [`MAX_REQUEST_KIBIBYTES_IN_FLIGHT`].
    request_budget: tokio::sync::Semaphore,
}

/// How long a stopping node waits for its driver thread to end.
const DRIVER_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of frames and snapshot chunks from peers waiting for the driver thread: 256 MiB
/// (four of the largest frames). Beyond it inputs are dropped and Raft retries them.
pub const MAX_QUEUED_INPUT_BYTES: usize = 256 << 20;

/// Request bytes (KiB) a node holds at once over all connections: 256 MiB, sixteen of the
/// largest requests.
pub const MAX_REQUEST_KIBIBYTES_IN_FLIGHT: usize = 256 << 10;

impl NodeContext {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.is_draining() && self.driver.failure().is_none()
    }

    fn mark_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The nodes and shards of the last view placement sent.
    pub fn cluster_snapshot(&self) -> (Vec<NodeInfo>, Vec<ShardRoute>) {
        match self.cluster.read() {
            Ok(cluster) => cluster.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_cluster_view(&self, nodes: Vec<NodeInfo>, shards: Vec<ShardRoute>) {
        let peers: Vec<(NodeId, String)> = nodes
            .iter()
            .filter(|node| node.id != self.identity.node)
            .map(|node| (node.id, node.address.clone()))
            .collect();
        for (node, address) in &peers {
            if let Ok(address) = address.parse() {
                self.network.set_address(*node, address);
            }
        }
        if let Ok(mut known) = self.known_peers.lock() {
            if *known != peers {
                // Kept so a restarted node finds the cluster without --join.
                if let Err(error) = self.store.set_known_peers(&peers) {
                    tracing::error!(%error, "cannot store the known peers");
                }
                *known = peers;
            }
        }
        if let Ok(mut cluster) = self.cluster.write() {
            *cluster = (nodes, shards);
        }
    }

    /// Every other node's address this node knows, for finding placement.
    fn known_addresses(&self) -> Vec<SocketAddr> {
        self.known_peers
            .lock()
            .map(|peers| peers.iter().filter_map(|(_, a)| a.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Where `node` is, as far as this node knows.
    pub fn node_info(&self, node: NodeId) -> Option<NodeInfo> {
        if node == self.identity.node {
            return Some(NodeInfo {
                id: node,
                address: self.address.clone(),
                live: true,
                capacity: None,
            });
        }
        let (nodes, _) = self.cluster_snapshot();
        nodes.into_iter().find(|n| n.id == node).or_else(|| {
            let address = self.network.address(node)?;
            Some(NodeInfo {
                id: node,
                address: address.to_string(),
                live: false,
                capacity: None,
            })
        })
    }

    fn cluster_leader(&self, shard: ShardId) -> Option<NodeId> {
        let (_, shards) = self.cluster_snapshot();
        shards
            .into_iter()
            .find(|route| route.descriptor.id == shard)
            .and_then(|route| route.leader.map(|leader| leader.id))
    }

    /// Sends `request` to the node at `address` and waits for its answer.
    async fn call(&self, address: SocketAddr, request: ApiRequest) -> Result<ApiResponse, String> {
        let connection = self
            .connections
            .connection(address, || self.network.dial(address))
            .await?;
        let exchange = call_on(&connection, &request);
        match tokio::time::timeout(self.config.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer from {address} in time")),
        }
    }

    /// Sends `request` to `node` (handled here if it is this node).
    async fn call_node(&self, node: NodeId, request: ApiRequest) -> Result<ApiResponse, String> {
        if node == self.identity.node {
            return Ok(api::handle(self, request, Caller::Node).await);
        }
        let address = self
            .node_info(node)
            .and_then(|info| info.address.parse().ok())
            .ok_or_else(|| format!("no address known for node {node}"))?;
        self.call(address, request).await
    }
}

/// One request and its answer on a new stream of `connection`.
pub async fn call_on(
    connection: &quinn::Connection,
    request: &ApiRequest,
) -> Result<ApiResponse, String> {
    let (mut send, mut receive) = connection.open_bi().await.map_err(|e| e.to_string())?;
    let frame = wire::encode_frame(request, MAX_API_FRAME_BYTES).map_err(|e| e.to_string())?;
    wire::write_frame(&mut send, &frame)
        .await
        .map_err(|e| e.to_string())?;
    let _finished = send.finish();
    wire::read_frame(&mut receive, MAX_API_FRAME_BYTES)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the stream ended without an answer".to_string())
}

/// The shards a new cluster starts with, on `node` alone.
fn initial_shards(node: NodeId) -> [ShardDescriptor; 2] {
    let system_start = vec![SYSTEM_KEY_PREFIX];
    [
        ShardDescriptor {
            id: PLACEMENT_SHARD,
            start_key: system_start.clone(),
            end_key: Vec::new(),
            replicas: vec![node],
            ..ShardDescriptor::default()
        },
        ShardDescriptor {
            id: FIRST_DATA_SHARD,
            start_key: Vec::new(),
            end_key: system_start,
            replicas: vec![node],
            ..ShardDescriptor::default()
        },
    ]
}

fn random_hex(bytes: usize) -> Result<String, ServeError> {
    use ring::rand::SecureRandom;
    let mut buffer = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buffer)
        .map_err(|_| ServeError::Io("no system randomness".to_string()))?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

/// A running node; [`Node::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct Node {
    pub context: Arc<NodeContext>,
    endpoint: quinn::Endpoint,
    driver_thread: Option<std::thread::JoinHandle<()>>,
    pub http_address: Option<SocketAddr>,
}

impl Node {
    /// Starts a node (see the module documentation); returns once it listens.
    pub async fn start(config: ServeConfig) -> Result<Node, ServeError> {
        let security = security(&config)?;
        std::fs::create_dir_all(&config.data_dir).map_err(|error| {
            ServeError::Io(format!(
                "cannot create {}: {error}",
                config.data_dir.display()
            ))
        })?;
        let store = NodeStore::open(&config.data_dir)?;
        let endpoint = security.node_endpoint(config.listen)?;
        let local = endpoint
            .local_addr()
            .map_err(|error| ServeError::Io(error.to_string()))?;
        let advertise = config.advertise.unwrap_or(local);
        if advertise.ip().is_unspecified() {
            return Err(ServeError::Config(format!(
                "listening on {local}: give --advertise, the address other nodes reach this one at"
            )));
        }
        let (identity, bootstrap) = match store.identity()? {
            Some(identity) => (identity, false),
            None if config.join.is_empty() => {
                let identity = NodeIdentity {
                    node: 1,
                    cluster: random_hex(16)?,
                };
                (identity, true)
            }
            None => {
                let identity = join_cluster(&store, &endpoint, &config.join, advertise).await?;
                store.set_identity(&identity)?;
                (identity, false)
            }
        };
        tracing::info!(node = identity.node, cluster = %identity.cluster, %advertise, "starting");
        let network = Network::new(
            identity.node,
            identity.cluster.clone(),
            endpoint.clone(),
            NetworkConfig {
                max_queued_per_peer: config.max_queued_frames_per_peer,
                snapshot_bytes_per_second: config.snapshot_bytes_per_second,
            },
            tokio::runtime::Handle::current(),
        );
        let known_peers = store.known_peers()?;
        for (node, address) in &known_peers {
            if let Ok(address) = address.parse() {
                network.set_address(*node, address);
            }
        }
        let mut driver_config = DriverConfig::new(identity.node);
        driver_config.election_timeout_ticks = config.election_timeout_ticks;
        driver_config.heartbeat_interval_ticks = config.heartbeat_interval_ticks;
        driver_config.seed = u64::from_str_radix(&random_hex(8)?, 16).unwrap_or(1);
        let transport = QuicTransport {
            network: network.clone(),
        };
        let mut driver = MultiRaft::open(driver_config, store.clone(), transport)?;
        if bootstrap {
            for shard in initial_shards(identity.node) {
                let _full = driver.offer(Input::CreateShard(shard));
            }
            driver.iterate();
            if let Some(reason) = driver.stopped() {
                return Err(ServeError::Io(format!("bootstrap failed: {reason}")));
            }
            store.set_identity(&identity)?;
            tracing::info!("bootstrapped a new cluster");
        }
        let (driver, driver_thread) = driver_thread::spawn(
            driver,
            ThreadConfig {
                tick: config.tick,
                max_queued_commands: config.max_queued_commands,
                max_queued_bytes: MAX_QUEUED_INPUT_BYTES,
                view_interval: Duration::from_millis(20),
            },
        )
        .map_err(|error| ServeError::Io(error.to_string()))?;
        let context = Arc::new(NodeContext {
            identity,
            address: advertise.to_string(),
            config: config.clone(),
            driver,
            network,
            cluster: RwLock::default(),
            placement: Mutex::default(),
            shard_stats: shard_stats::ShardStatsTracker::default(),
            connections: quic::ConnectionPool::default(),
            store,
            known_peers: Mutex::new(known_peers),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            request_budget: tokio::sync::Semaphore::new(MAX_REQUEST_KIBIBYTES_IN_FLIGHT),
        });
        tokio::spawn(accept(context.clone(), endpoint.clone()));
        tokio::spawn(placement::run(context.clone()));
        tokio::spawn(shard_stats::run_size_checks(context.clone()));
        let http_address = match config.http_listen {
            Some(address) => Some(http::start(context.clone(), address).await?),
            None => None,
        };
        Ok(Node {
            context,
            endpoint,
            driver_thread: Some(driver_thread),
            http_address,
        })
    }

    /// The address the node listens on.
    pub fn local_address(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Resolves once the driver has stopped on its own (storage failed, or its thread
    /// ended), with the reason. Such a node serves nothing and must not pretend to: the
    /// caller shuts it down.
    pub async fn failure(&self) -> String {
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        loop {
            poll.tick().await;
            if let Some(reason) = self.context.driver.failure() {
                return reason;
            }
        }
    }

    /// Stops taking requests, hands leadership away, and stops the node, within the
    /// shutdown deadline.
    pub async fn shutdown(mut self) {
        let context = self.context.clone();
        context.draining.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + context.config.shutdown_timeout;
        tracing::info!("draining: transferring leadership away");
        // A stopped driver sends nothing, so there is nobody to hand leadership to.
        while Instant::now() < deadline && context.driver.failure().is_none() {
            let view = context.driver.view();
            let leading: Vec<ShardDescriptor> =
                view.leading().map(|r| r.descriptor.clone()).collect();
            let transferable: Vec<(ShardId, NodeId)> = leading
                .iter()
                .filter_map(|d| {
                    let to = d.replicas.iter().copied().find(|&n| n != view.node)?;
                    Some((d.id, to))
                })
                .collect();
            if transferable.is_empty() {
                break;
            }
            for (shard, to) in transferable {
                let _full = context.driver.offer(Input::TransferLeader { shard, to });
            }
            tokio::time::sleep(context.config.tick * 4).await;
        }
        // Finish what is in flight: requests the driver already took get their answers
        // (applied, or refused by a replica that is no longer leader) before it stops.
        while Instant::now() < deadline
            && context.driver.failure().is_none()
            && context.driver.view().pending_requests > 0
        {
            tokio::time::sleep(context.config.tick).await;
        }
        let view = context.driver.view();
        let (still_leading, unanswered) = (view.leading().count(), view.pending_requests);
        let stopped = context.driver.stop();
        self.endpoint
            .close(network::codes::SHUTDOWN.into(), b"node shutting down");
        if let Some(thread) = self.driver_thread.take() {
            // It stops within a tick, or an iteration (one sync) later; never wait forever.
            let join = tokio::task::spawn_blocking(move || thread.join());
            match tokio::time::timeout(DRIVER_JOIN_TIMEOUT, join).await {
                Ok(Ok(Ok(()))) => {}
                Ok(_) => tracing::error!("the driver thread ended abnormally"),
                Err(_) => tracing::error!("the driver thread did not stop in time"),
            }
        }
        tracing::info!(stopped, still_leading, unanswered, "node stopped");
    }
}

/// The node's certificates, or insecure mode after its checks: refused on an address other
/// machines can reach unless forced, and announced loudly either way.
fn security(config: &ServeConfig) -> Result<quic::Security, ServeError> {
    if !config.insecure {
        return Ok(quic::Security::Certs(CertsDir::new(
            &config.certs_dir,
            None,
        )));
    }
    let exposed = [Some(config.listen), config.advertise]
        .into_iter()
        .flatten()
        .find(|address| !address.ip().is_loopback());
    match exposed {
        Some(address) if !config.allow_insecure_remote => {
            return Err(ServeError::Config(format!(
                "--insecure refuses {address}: anyone who can reach it could read and write \
                 every key and join as a node. Listen on a loopback address, use certificates \
                 (rshard cert), or pass --allow-insecure-remote if you mean it"
            )));
        }
        Some(address) => tracing::warn!(
            %address,
            "INSECURE MODE ON A REACHABLE ADDRESS: no authentication; anyone who can reach \
             this address can read and write every key and join as a node"
        ),
        None => tracing::warn!(
            "INSECURE MODE: no certificates, no authentication; for local experiments only"
        ),
    }
    Ok(quic::Security::Insecure)
}

/// Asks the nodes at `seeds` for an id, presenting this store's join token.
async fn join_cluster(
    store: &NodeStore,
    endpoint: &quinn::Endpoint,
    seeds: &[SocketAddr],
    advertise: SocketAddr,
) -> Result<NodeIdentity, ServeError> {
    let token = match store.join_token()? {
        Some(token) => token,
        None => {
            let token = random_hex(16)?;
            store.set_join_token(&token)?;
            token
        }
    };
    let request = ApiRequest::Join {
        address: advertise.to_string(),
        token,
    };
    // A cluster that is starting has no placement leader for a moment: keep asking, within
    // a deadline; only a refusal ends it early.
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut last_error = String::from("no seed answered");
    let mut attempt = 0usize;
    while Instant::now() < deadline {
        let seed = seeds[attempt % seeds.len()];
        attempt += 1;
        match join_once(endpoint, seed, &request).await {
            Ok(identity) => return Ok(identity),
            Err(JoinAttempt::Refused(reason)) => return Err(ServeError::Join(reason)),
            Err(JoinAttempt::Retry(error)) => {
                tracing::info!(%error, "join not answered yet; retrying");
                last_error = error;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(ServeError::Join(format!(
        "gave up after {JOIN_TIMEOUT:?}: {last_error}"
    )))
}

/// How long a node keeps asking to join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

enum JoinAttempt {
    Refused(String),
    Retry(String),
}

/// One join request to `seed`, following its answer to the placement leader once.
async fn join_once(
    endpoint: &quinn::Endpoint,
    seed: SocketAddr,
    request: &ApiRequest,
) -> Result<NodeIdentity, JoinAttempt> {
    let mut target = seed;
    for _ in 0..2 {
        let connecting = endpoint
            .connect(target, &quic::server_name(&target))
            .map_err(|error| JoinAttempt::Refused(format!("{target}: {error}")))?;
        let connection = match tokio::time::timeout(Duration::from_secs(3), connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return Err(JoinAttempt::Retry(format!("{target}: {error}"))),
            Err(_) => return Err(JoinAttempt::Retry(format!("{target}: timed out"))),
        };
        let answer = call_on(&connection, request).await;
        connection.close(0u32.into(), b"done");
        match answer {
            Ok(ApiResponse::Joined { node, cluster }) => {
                return Ok(NodeIdentity { node, cluster });
            }
            Ok(ApiResponse::Error(ApiError::NotLeader {
                leader: Some(leader),
                ..
            })) => match leader.address.parse() {
                Ok(address) => target = address,
                Err(_) => return Err(JoinAttempt::Retry(format!("{target}: bad leader address"))),
            },
            Ok(ApiResponse::Error(ApiError::Refused(reason))) => {
                return Err(JoinAttempt::Refused(reason))
            }
            Ok(ApiResponse::Error(error)) => {
                return Err(JoinAttempt::Retry(format!("{target}: {error}")))
            }
            Ok(other) => return Err(JoinAttempt::Refused(format!("{target}: {other:?}"))),
            Err(error) => return Err(JoinAttempt::Retry(format!("{target}: {error}"))),
        }
    }
    Err(JoinAttempt::Retry("the placement leader moved".to_string()))
}

/// Accepts connections: nodes (raft ALPN, node certificate) get the node streams and the
/// API; clients get the API.
async fn accept(context: Arc<NodeContext>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let context = context.clone();
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "connection refused during the handshake");
                    return;
                }
            };
            match quic::alpn(&connection).as_deref() {
                Some(tls::ALPN_RAFT)
                    if context.config.insecure || quic::peer_is_node(&connection) =>
                {
                    tokio::spawn(receive_node_streams(context.clone(), connection.clone()));
                    api::serve_connection(context, connection, Caller::Node).await;
                }
                Some(tls::ALPN_RAFT) => {
                    tracing::warn!(peer = %connection.remote_address(), "a client certificate on the node protocol; closed");
                    connection.close(
                        network::codes::NOT_A_NODE.into(),
                        b"node certificate required",
                    );
                }
                _ => api::serve_connection(context, connection, Caller::Client).await,
            }
        });
    }
}

async fn receive_node_streams(context: Arc<NodeContext>, connection: quinn::Connection) {
    let speaks_for = Arc::new(std::sync::OnceLock::new());
    while let Ok(stream) = connection.accept_uni().await {
        tokio::spawn(network::receive_stream(
            stream,
            connection.remote_address(),
            speaks_for.clone(),
            context.network.clone(),
            context.driver.clone(),
        ));
    }
}
