//! The routing client: finds the shard owning a key and its leader, sends the request there,
//! and follows what the cluster answers.
//!
//! - Routes are cached by shard start key. `NotLeader{leader}` moves the cached leader;
//!   `KeyNotInShard` and `StaleEpoch` replace the cached descriptor with the one they carry;
//!   `ShardUnavailable`, `Busy` and unreachable nodes clear the leader and back off
//!   (exponentially, capped). Every call is bounded by [`ClientOptions::max_attempts`] and
//!   [`ClientOptions::deadline`], and ends with one error that says why.
//! - A write is retried only when the previous attempt certainly wrote nothing (refused
//!   before it was sent, or answered with an error that says so). If a connection fails
//!   after the request went out, or the node answers `OutcomeUnknown` or `Timeout`, the
//!   caller gets [`ClientError::OutcomeUnknown`]: retrying could apply it twice.
//! - One QUIC connection per node, shared by concurrent calls (one stream per request).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::api::{
    ApiError, ApiRequest, ApiResponse, NodeInfo, NodeStatus, Operation, ShardOp, ShardRoute,
    WriteOp, MAX_API_FRAME_BYTES,
};
use crate::shard::{ShardDescriptor, ShardId};

/// `NotLeader` answers followed to reach the placement leader (it may move meanwhile).
const MAX_PLACEMENT_REDIRECTS: usize = 3;
/// `Busy` answers to one admin request asked again (nothing had started), and the wait
/// before each: about 5 s in all.
const MAX_PLACEMENT_BUSY_RETRIES: usize = 20;
const PLACEMENT_BUSY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(250);
/// Rounds over the seeds when placement's leadership is moving or no seed answers, and the
/// first wait between them (doubling to 1 s): about 5 s in all.
const PLACEMENT_ROUNDS: usize = 7;
const PLACEMENT_RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
use crate::tls::Identity;
use crate::{quic, wire};

#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// Time per call, over all its attempts.
    pub deadline: Duration,
    pub connect_timeout: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_attempts: 20,
            deadline: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ClientError {
    /// The cluster refused the request; nothing was written.
    #[error("{0}")]
    Refused(ApiError),
    /// The write may or may not have been applied.
    #[error("the outcome of the write is unknown: {0}")]
    OutcomeUnknown(String),
    /// No attempt succeeded within the limits; nothing was written.
    #[error("gave up after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    #[error("the operations touch more than one shard ({0} and {1}); a batch must stay in one")]
    CrossShard(u64, u64),
    #[error("{0}")]
    Setup(String),
    /// A node and this client refused each other's certificates; nothing was sent.
    #[error(
        "{0}: no trusted connection (the client needs the cluster's ca.crt and a client \
         certificate it signed, or --insecure for a node started with --insecure)"
    )]
    Untrusted(String),
}

/// How a request failed to get an answer.
#[derive(Clone, Debug)]
enum CallError {
    /// It never left: safe to retry anything.
    NotSent(String),
    /// It may have arrived.
    Lost(String),
    /// The TLS handshake failed: the node and this client do not trust each other.
    /// Retrying cannot help.
    Untrusted(String),
}

/// How long a client whose request could not be written waits for the node's refusal.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Client {
    endpoint: quinn::Endpoint,
    seeds: Vec<SocketAddr>,
    options: ClientOptions,
    connections: quic::ConnectionPool<CallError>,
    routes: Mutex<BTreeMap<Vec<u8>, ShardRoute>>,
}

/// The value a scan returns per key.
pub type Item = (Vec<u8>, Vec<u8>);

impl Client {
    /// A client of the cluster reachable at `seeds`, as user `user` (its certificate in
    /// `certs`). Connects lazily.
    pub fn new(
        security: &quic::Security,
        user: &str,
        seeds: Vec<SocketAddr>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        if seeds.is_empty() {
            return Err(ClientError::Setup("no node address given".to_string()));
        }
        let endpoint = security
            .client_endpoint(&Identity::Client(user.to_string()))
            .map_err(|error| ClientError::Setup(error.to_string()))?;
        Ok(Client {
            endpoint,
            seeds,
            options,
            connections: quic::ConnectionPool::default(),
            routes: Mutex::default(),
        })
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let op = ShardOp::Get { key: key.to_vec() };
        let deadline = Instant::now() + self.options.deadline;
        match self.shard_call(key, op, Retry::Always, deadline).await? {
            ApiResponse::Value(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        self.write(vec![WriteOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }])
        .await
        .map(|_| ())
    }

    pub async fn delete(&self, key: &[u8]) -> Result<(), ClientError> {
        self.write(vec![WriteOp::Delete { key: key.to_vec() }])
            .await
            .map(|_| ())
    }

    /// Sets `key` to `new` if it holds `expected`: `Ok(None)` if it did, else
    /// `Ok(Some(current))`.
    pub async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Option<Option<Vec<u8>>>, ClientError> {
        let op = WriteOp::CompareAndSwap {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.map(<[u8]>::to_vec),
        };
        Ok(self.write(vec![op]).await?.map(|(_, current)| current))
    }

    /// Applies `ops` atomically; they must all fall in one shard. Returns the first failed
    /// compare-and-swap (its index and what it found), if any: then nothing was written.
    pub async fn write(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<Option<(usize, Option<Vec<u8>>)>, ClientError> {
        let Some(first) = ops.first().map(|op| op.key().to_vec()) else {
            return Err(ClientError::Refused(ApiError::Malformed(
                "no operations".to_string(),
            )));
        };
        // One deadline for the route lookups and the write together.
        let deadline = Instant::now() + self.options.deadline;
        let route = self.route_retrying(&first, deadline).await?;
        if let Some(outside) = ops.iter().find(|op| !route.descriptor.contains(op.key())) {
            let other = self.route_retrying(outside.key(), deadline).await?;
            return Err(ClientError::CrossShard(
                route.descriptor.id,
                other.descriptor.id,
            ));
        }
        match self
            .shard_call(
                &first,
                ShardOp::Write { ops },
                Retry::IfNothingWritten,
                deadline,
            )
            .await?
        {
            ApiResponse::Written { failed_condition } => {
                Ok(failed_condition.map(|(op, current)| (op, current.map(|c| c.into_vec()))))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Keys in `[start, end)` (an empty `end`: to the end of the user key space), at most
    /// `limit`, in order, across shards.
    pub async fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Item>, ClientError> {
        let mut items: Vec<Item> = Vec::new();
        let mut from = start.to_vec();
        while items.len() < limit && (end.is_empty() || from.as_slice() < end) {
            let page = (limit - items.len()).min(crate::api::MAX_SCAN_LIMIT);
            let op = ShardOp::Scan {
                start: from.clone(),
                end: end.to_vec(),
                limit: page,
            };
            // Each page has the whole deadline: a long scan is many requests.
            let deadline = Instant::now() + self.options.deadline;
            // The range served is that of the descriptor the shard accepted, which may be
            // newer than the cached route the call started from.
            let (response, served) = self
                .shard_call_routed(&from, op, Retry::Always, deadline)
                .await?;
            let (got, more) = match response {
                ApiResponse::Items { items, more } => (items, more),
                other => return Err(unexpected(other)),
            };
            let last = got.last().map(|(key, _)| key.to_vec());
            items.extend(got.into_iter().map(|(k, v)| (k.into_vec(), v.into_vec())));
            match last
                .filter(|_| more)
                .map(|last| crate::api::key_after(&last))
            {
                Some(Some(next)) => from = next,
                // Nothing can follow the largest key.
                Some(None) => break,
                _ => {
                    // This shard is done: go on from its end, if the range goes further.
                    let shard_end = served.end_key;
                    if shard_end.is_empty()
                        || shard_end.first() == Some(&crate::api::SYSTEM_KEY_PREFIX)
                    {
                        break;
                    }
                    from = shard_end;
                }
            }
        }
        Ok(items)
    }

    /// The shard owning `key` as a node knows it now, not as cached (after an operation
    /// that moved shard boundaries, say).
    pub async fn fresh_shard_of(&self, key: &[u8]) -> Result<ShardDescriptor, ClientError> {
        if let Ok(mut routes) = self.routes.lock() {
            routes.retain(|_, route| !route.descriptor.contains(key));
        }
        self.shard_of(key).await
    }

    /// The shard owning `key`, as the route cache or the cluster knows it (a route may be
    /// stale by the time it is used: a write across it is refused with `CrossShard`).
    pub async fn shard_of(&self, key: &[u8]) -> Result<ShardDescriptor, ClientError> {
        let deadline = Instant::now() + self.options.deadline;
        Ok(self.route_retrying(key, deadline).await?.descriptor)
    }

    /// The cluster's nodes and shards, as the first reachable node knows them.
    pub async fn cluster(&self) -> Result<(Vec<NodeInfo>, Vec<ShardRoute>), ClientError> {
        match self.any_node(ApiRequest::Cluster).await? {
            ApiResponse::Cluster { nodes, shards } => Ok((nodes, shards)),
            other => Err(unexpected(other)),
        }
    }

    /// Asks placement to split `shard` at `at`; the operation as it stands when placement
    /// answers (ended, or still running).
    /// The boundary stays (automatic merges keep it) for `sticky_seconds`, or for ever.
    pub async fn split_shard(
        &self,
        shard: ShardId,
        at: &[u8],
        sticky_seconds: Option<u64>,
    ) -> Result<Operation, ClientError> {
        let request = ApiRequest::AdminSplit {
            shard,
            at: at.to_vec(),
            sticky_seconds,
        };
        match self.placement_call(request).await? {
            ApiResponse::Operation(operation) => Ok(operation),
            other => Err(unexpected(other)),
        }
    }

    /// Asks placement to merge `shard` with its right neighbour; the operation as it stands
    /// when placement answers.
    pub async fn merge_shard(&self, shard: ShardId) -> Result<Operation, ClientError> {
        match self
            .placement_call(ApiRequest::AdminMerge { shard })
            .await?
        {
            ApiResponse::Operation(operation) => Ok(operation),
            other => Err(unexpected(other)),
        }
    }

    /// Asks placement to move the leadership of `shard` to node `to`; the operation as it
    /// stands when placement answers.
    pub async fn transfer_leader(
        &self,
        shard: ShardId,
        to: crate::api::NodeId,
    ) -> Result<Operation, ClientError> {
        match self
            .placement_call(ApiRequest::AdminTransferLeader { shard, to })
            .await?
        {
            ApiResponse::Operation(operation) => Ok(operation),
            other => Err(unexpected(other)),
        }
    }

    /// Asks placement to move `shard`'s replica on node `from` to node `to`; the operation
    /// as it stands when placement answers.
    pub async fn move_replica(
        &self,
        shard: ShardId,
        from: crate::api::NodeId,
        to: crate::api::NodeId,
    ) -> Result<Operation, ClientError> {
        match self
            .placement_call(ApiRequest::AdminMoveReplica { shard, from, to })
            .await?
        {
            ApiResponse::Operation(operation) => Ok(operation),
            other => Err(unexpected(other)),
        }
    }

    /// Asks placement to move every replica off `node` (and with `decommission`, then to
    /// remove it from the cluster); the operation as it stands when placement answers.
    pub async fn drain_node(
        &self,
        node: crate::api::NodeId,
        decommission: bool,
    ) -> Result<Operation, ClientError> {
        match self
            .placement_call(ApiRequest::AdminDrainNode { node, decommission })
            .await?
        {
            ApiResponse::Operation(operation) => Ok(operation),
            other => Err(unexpected(other)),
        }
    }

    /// Pauses (`false`) or resumes (`true`) the leader balance scheduler.
    pub async fn set_leader_balance(&self, enabled: bool) -> Result<bool, ClientError> {
        match self
            .placement_call(ApiRequest::AdminLeaderBalance { enabled })
            .await?
        {
            ApiResponse::LeaderBalance { enabled } => Ok(enabled),
            other => Err(unexpected(other)),
        }
    }

    /// Pauses (`false`) or resumes (`true`) the replica balance scheduler.
    pub async fn set_replica_balance(&self, enabled: bool) -> Result<bool, ClientError> {
        match self
            .placement_call(ApiRequest::AdminReplicaBalance { enabled })
            .await?
        {
            ApiResponse::ReplicaBalance { enabled } => Ok(enabled),
            other => Err(unexpected(other)),
        }
    }

    /// Asks placement to cancel operation `id`; the operation as recorded after.
    pub async fn cancel_operation(&self, id: u64) -> Result<Operation, ClientError> {
        match self.placement_call(ApiRequest::AdminCancel { id }).await? {
            ApiResponse::Operation(operation) => Ok(operation),
            other => Err(unexpected(other)),
        }
    }

    /// Every operation placement recorded, oldest first.
    pub async fn operations(&self) -> Result<Vec<Operation>, ClientError> {
        match self.placement_call(ApiRequest::AdminOperations).await? {
            ApiResponse::Operations(operations) => Ok(operations),
            other => Err(unexpected(other)),
        }
    }

    /// `request` to the placement leader: to a seed, then to the leader it names. An
    /// operation request is sent again only where it certainly did not start: to the next
    /// seed when it could not be sent, to the leader a `NotLeader` answer names (placement
    /// refuses before recording anything). A request sent without an answer is not sent
    /// again: the operation may have started (`rshard admin ops` shows it).
    async fn placement_call(&self, request: ApiRequest) -> Result<ApiResponse, ClientError> {
        let mut last = String::from("no seed");
        let mut busy_answers = 0;
        let mut backoff = PLACEMENT_RETRY_BACKOFF;
        for round in 0..PLACEMENT_ROUNDS {
            if round > 0 {
                // Placement's leadership is moving, or no seed answered: every failure so
                // far happened before anything started, so asking again is safe.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
            }
            for &seed in &self.seeds {
                let mut target = seed;
                let mut redirects = 0;
                while redirects <= MAX_PLACEMENT_REDIRECTS {
                    match self.call(target, &request).await {
                        // Busy: refused before anything started (another operation holds
                        // the shard a moment); asking again a little later is safe.
                        Ok(ApiResponse::Error(ApiError::Busy(_)))
                            if busy_answers < MAX_PLACEMENT_BUSY_RETRIES =>
                        {
                            busy_answers += 1;
                            tokio::time::sleep(PLACEMENT_BUSY_BACKOFF).await;
                        }
                        Ok(ApiResponse::Error(ApiError::NotLeader { leader, .. })) => {
                            match leader.and_then(|l| l.address.parse::<SocketAddr>().ok()) {
                                Some(address) if address != target => {
                                    target = address;
                                    redirects += 1;
                                    last = format!(
                                        "placement leadership moving (redirected {redirects} \
                                         times)"
                                    );
                                }
                                _ => {
                                    last = format!("{target}: no placement leader known");
                                    break;
                                }
                            }
                        }
                        Ok(ApiResponse::Error(error)) => return Err(ClientError::Refused(error)),
                        Ok(answer) => return Ok(answer),
                        Err(CallError::Untrusted(error)) => {
                            return Err(ClientError::Untrusted(error))
                        }
                        Err(CallError::NotSent(error)) => {
                            last = format!("{target}: {error}");
                            break;
                        }
                        Err(CallError::Lost(error)) => {
                            return Err(ClientError::OutcomeUnknown(format!(
                                "{target}: {error}; the operation may have started (see the \
                                 operations placement recorded)"
                            )))
                        }
                    }
                }
            }
        }
        Err(ClientError::Unavailable {
            attempts: (self.seeds.len() * PLACEMENT_ROUNDS) as u32,
            last,
        })
    }

    /// The status of the node at `address`.
    pub async fn node_status(&self, address: SocketAddr) -> Result<NodeStatus, ClientError> {
        let response = self
            .call(address, &ApiRequest::NodeStatus)
            .await
            .map_err(|error| match error {
                CallError::Untrusted(error) => ClientError::Untrusted(error),
                error => ClientError::Unavailable {
                    attempts: 1,
                    last: call_error_text(&error),
                },
            })?;
        match response {
            ApiResponse::NodeStatus(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `request` to the seeds in turn until one answers. A node that cannot answer
    /// yet (it just joined and knows no shards, or is busy) passes to the next seed; if
    /// none can, the caller gets `Unavailable` and may retry.
    async fn any_node(&self, request: ApiRequest) -> Result<ApiResponse, ClientError> {
        let mut last = String::new();
        let mut refusals = 0;
        for &seed in &self.seeds {
            match self.call(seed, &request).await {
                Ok(ApiResponse::Error(
                    error @ (ApiError::ShardUnavailable { .. }
                    | ApiError::Busy(_)
                    | ApiError::Unavailable(_)
                    | ApiError::Timeout(_)),
                )) => last = format!("{seed}: {error}"),
                Ok(ApiResponse::Error(error)) => return Err(ClientError::Refused(error)),
                Ok(response) => return Ok(response),
                Err(CallError::Untrusted(error)) => {
                    last = error;
                    refusals += 1;
                }
                Err(error) => last = call_error_text(&error),
            }
        }
        // Only if every seed refused us is it our configuration, not one odd node.
        if refusals == self.seeds.len() {
            return Err(ClientError::Untrusted(last));
        }
        Err(ClientError::Unavailable {
            attempts: self.seeds.len() as u32,
            last,
        })
    }

    /// [`Client::route`], retried with backoff while no seed can answer yet (a node that
    /// just joined knows no shard; a cluster may be electing), within the client's limits.
    async fn route_retrying(
        &self,
        key: &[u8],
        deadline: Instant,
    ) -> Result<ShardRoute, ClientError> {
        let mut backoff = self.options.first_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.route(key).await {
                Err(ClientError::Unavailable { last, .. })
                    if attempts >= self.options.max_attempts || Instant::now() >= deadline =>
                {
                    return Err(ClientError::Unavailable { attempts, last });
                }
                Err(ClientError::Unavailable { .. }) => self.sleep(&mut backoff).await,
                answered => return answered,
            }
        }
    }

    /// The cached route of `key`, or one asked of the seeds.
    async fn route(&self, key: &[u8]) -> Result<ShardRoute, ClientError> {
        if let Some(route) = self.cached_route(key) {
            return Ok(route);
        }
        let request = ApiRequest::Route { key: key.to_vec() };
        match self.any_node(request).await? {
            ApiResponse::Route(route) if self.is_outdated(&route.descriptor) => {
                // A node that has not applied a split yet; another answer will be newer.
                Err(ClientError::Unavailable {
                    attempts: 1,
                    last: format!(
                        "a node answered with shard {} at an epoch older than known",
                        route.descriptor.id
                    ),
                })
            }
            ApiResponse::Route(route) => {
                self.remember(route.descriptor.clone(), route.leader.clone());
                Ok(route)
            }
            other => Err(unexpected(other)),
        }
    }

    fn cached_route(&self, key: &[u8]) -> Option<ShardRoute> {
        let routes = self.routes.lock().ok()?;
        let (_, route) = routes.range(..=key.to_vec()).next_back()?;
        route.descriptor.contains(key).then(|| route.clone())
    }

    /// True if a newer descriptor of the same shard is cached.
    fn is_outdated(&self, descriptor: &ShardDescriptor) -> bool {
        self.routes.lock().is_ok_and(|routes| {
            routes.values().any(|route| {
                route.descriptor.id == descriptor.id
                    && route.descriptor.epoch.version > descriptor.epoch.version
            })
        })
    }

    /// Caches `descriptor` (dropping the routes it overlaps) with `leader`.
    fn remember(&self, descriptor: ShardDescriptor, leader: Option<NodeInfo>) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.retain(|_, route| !route.descriptor.overlaps(&descriptor));
            routes.insert(
                descriptor.start_key.clone(),
                ShardRoute {
                    descriptor,
                    leader,
                    stats: None,
                },
            );
        }
    }

    fn forget_leader(&self, key: &[u8]) {
        if let Ok(mut routes) = self.routes.lock() {
            if let Some((_, route)) = routes.range_mut(..=key.to_vec()).next_back() {
                route.leader = None;
            }
        }
    }

    async fn shard_call(
        &self,
        key: &[u8],
        op: ShardOp,
        retry: Retry,
        deadline: Instant,
    ) -> Result<ApiResponse, ClientError> {
        Ok(self.shard_call_routed(key, op, retry, deadline).await?.0)
    }

    /// [`Client::shard_call`], also giving the descriptor the answering shard accepted
    /// (its range is what the request was served over: the node checks the epoch).
    async fn shard_call_routed(
        &self,
        key: &[u8],
        op: ShardOp,
        retry: Retry,
        deadline: Instant,
    ) -> Result<(ApiResponse, ShardDescriptor), ClientError> {
        crate::api::check_user_op(&op).map_err(ClientError::Refused)?;
        let mut attempts = 0;
        let mut backoff = self.options.first_backoff;
        let mut last = String::from("no attempt made");
        let mut routing_errors = 0;
        for attempt in 0..self.options.max_attempts {
            if Instant::now() >= deadline {
                break;
            }
            attempts += 1;
            let route = match self.route(key).await {
                Ok(route) => route,
                Err(ClientError::Unavailable { last: error, .. }) => {
                    last = error;
                    self.sleep(&mut backoff).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let target = route
                .leader
                .as_ref()
                .and_then(|leader| leader.address.parse::<SocketAddr>().ok())
                .unwrap_or(self.seeds[attempt as usize % self.seeds.len()]);
            let request = ApiRequest::Shard {
                shard: route.descriptor.id,
                epoch: route.descriptor.epoch,
                op: op.clone(),
            };
            let error = match self.call(target, &request).await {
                Ok(ApiResponse::Error(error)) => error,
                Ok(response) => return Ok((response, route.descriptor)),
                Err(CallError::Untrusted(error)) => return Err(ClientError::Untrusted(error)),
                Err(CallError::NotSent(error)) => {
                    last = format!("{target}: {error}");
                    self.forget_leader(key);
                    self.sleep(&mut backoff).await;
                    continue;
                }
                Err(CallError::Lost(error)) => {
                    if retry == Retry::IfNothingWritten {
                        return Err(ClientError::OutcomeUnknown(format!("{target}: {error}")));
                    }
                    last = format!("{target}: {error}");
                    self.forget_leader(key);
                    self.sleep(&mut backoff).await;
                    continue;
                }
            };
            last = format!("{target}: {error}");
            match error {
                ApiError::NotLeader { leader, .. } => {
                    let known = leader.is_some();
                    self.remember(route.descriptor, leader);
                    if !known {
                        self.sleep(&mut backoff).await;
                    }
                }
                ApiError::KeyNotInShard { descriptor } | ApiError::StaleEpoch { descriptor } => {
                    // A batch that a split has cut in two can never succeed as sent: say so,
                    // with nothing written, so the caller can cut it again.
                    if let ShardOp::Write { ops } = &op {
                        if let Some(outside) =
                            ops.iter().find(|write| !descriptor.contains(write.key()))
                        {
                            if descriptor.contains(key) {
                                let other = self.cached_route(outside.key());
                                let other = other.map_or(0, |route| route.descriptor.id);
                                let id = descriptor.id;
                                self.remember(*descriptor, None);
                                return Err(ClientError::CrossShard(id, other));
                            }
                        }
                    }
                    self.remember(*descriptor, None);
                    // Once is a route that moved; again means the nodes answering routes
                    // have not all caught up with the change yet: give them time.
                    routing_errors += 1;
                    if routing_errors > 1 {
                        self.sleep(&mut backoff).await;
                    }
                }
                ApiError::ShardUnavailable { .. }
                | ApiError::Busy(_)
                | ApiError::Unavailable(_) => {
                    self.forget_leader(key);
                    self.sleep(&mut backoff).await;
                }
                ApiError::OutcomeUnknown | ApiError::Timeout(_)
                    if retry == Retry::IfNothingWritten =>
                {
                    return Err(ClientError::OutcomeUnknown(error.to_string()));
                }
                ApiError::OutcomeUnknown | ApiError::Timeout(_) => {
                    self.sleep(&mut backoff).await;
                }
                other => return Err(ClientError::Refused(other)),
            }
        }
        Err(ClientError::Unavailable { attempts, last })
    }

    async fn sleep(&self, backoff: &mut Duration) {
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(self.options.max_backoff);
    }

    async fn connection(&self, address: SocketAddr) -> Result<quinn::Connection, CallError> {
        let dial = || async {
            let connecting = self
                .endpoint
                .connect(address, &quic::server_name(&address))
                .map_err(|error| CallError::NotSent(error.to_string()))?;
            match tokio::time::timeout(self.options.connect_timeout, connecting).await {
                Ok(Ok(connection)) => Ok(connection),
                Ok(Err(error)) if quic::is_handshake_refusal(&error) => {
                    Err(CallError::Untrusted(format!("{address}: {error}")))
                }
                Ok(Err(error)) => Err(CallError::NotSent(error.to_string())),
                Err(_) => Err(CallError::NotSent("connecting timed out".to_string())),
            }
        };
        self.connections.connection(address, dial).await
    }

    /// One request to `address` and its answer.
    async fn call(
        &self,
        address: SocketAddr,
        request: &ApiRequest,
    ) -> Result<ApiResponse, CallError> {
        let connection = self.connection(address).await?;
        let frame = wire::encode_frame(request, MAX_API_FRAME_BYTES)
            .map_err(|error| CallError::NotSent(error.to_string()))?;
        let exchange = async {
            let (mut send, mut receive) = connection
                .open_bi()
                .await
                .map_err(|error| CallError::NotSent(error.to_string()))?;
            if let Err(error) = wire::write_frame(&mut send, &frame).await {
                // A node that refuses a request before reading it (busy) answers, then
                // stops the stream: the answer says nothing was written.
                let answer = tokio::time::timeout(
                    REFUSAL_READ_TIMEOUT,
                    wire::read_frame::<ApiResponse>(&mut receive, MAX_API_FRAME_BYTES),
                )
                .await;
                return match answer {
                    Ok(Ok(Some(ApiResponse::Error(refusal)))) if refusal.wrote_nothing() => {
                        Ok(ApiResponse::Error(refusal))
                    }
                    _ => Err(CallError::Lost(error.to_string())),
                };
            }
            let _finished = send.finish();
            wire::read_frame::<ApiResponse>(&mut receive, MAX_API_FRAME_BYTES)
                .await
                .map_err(|error| CallError::Lost(error.to_string()))?
                .ok_or_else(|| CallError::Lost("no answer".to_string()))
        };
        let result = match tokio::time::timeout(self.options.deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Lost("no answer in time".to_string())),
        };
        match connection.close_reason() {
            // In TLS 1.3 the node checks the client's certificate after the client thinks
            // the handshake is done, so the refusal shows on the first request. The node
            // took no request on a connection it refused.
            Some(reason) if result.is_err() && quic::is_handshake_refusal(&reason) => {
                Err(CallError::Untrusted(format!("{address}: {reason}")))
            }
            _ => result,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    Always,
    IfNothingWritten,
}

fn call_error_text(error: &CallError) -> String {
    match error {
        CallError::NotSent(text) | CallError::Lost(text) | CallError::Untrusted(text) => {
            text.clone()
        }
    }
}

fn unexpected(response: ApiResponse) -> ClientError {
    match response {
        ApiResponse::Error(error) => ClientError::Refused(error),
        other => ClientError::Refused(ApiError::Malformed(format!("unexpected answer: {other:?}"))),
    }
}
