//! The node's API service: one [`ApiRequest`] in, one [`ApiResponse`] out, per QUIC
//! bi-directional stream.
//!
//! Key-value requests go to the local replica of the shard they name; anything this node
//! cannot serve is answered with an error that tells the client where to go (the leader it
//! knows, the shard's current descriptor) or to back off. Requests only nodes may send are
//! refused on connections that presented a client certificate.

use std::sync::Arc;

use rshard_common::api::{
    self, ApiError, ApiRequest, ApiResponse, NodeInfo, NodeStatus, ReplicaChange, ShardOp,
    ShardRoute, MAX_API_FRAME_BYTES,
};
use rshard_common::shard::{Epoch, ShardId};
use rshard_common::wire;
use rshard_raft::{ConfChange, ConfChangeStep};

use super::driver_thread::RequestFailure;
use super::network::codes;
use super::NodeContext;
use crate::kv::{KvCommand, KvError, KvOutcome};
use crate::multiraft::{Input, Request, RequestError, Response};

/// Who sent a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Node,
    Client,
}

/// Serves the requests of one connection, each on its own stream, until it closes.
pub async fn serve_connection(
    context: Arc<NodeContext>,
    connection: quinn::Connection,
    caller: Caller,
) {
    // What this connection's requests may reserve at once: below its receive window, so
    // the streams holding reservations can always receive their bodies, and one client
    // cannot take the whole node's budget.
    let connection_budget = Arc::new(tokio::sync::Semaphore::new(
        MAX_CONNECTION_REQUEST_KIBIBYTES,
    ));
    loop {
        let (mut send, mut receive) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(_) => return, // Closed or timed out: nothing to answer.
        };
        let context = context.clone();
        let connection_budget = connection_budget.clone();
        tokio::spawn(async move {
            // The reservation lives until the answer is written.
            let read = read_request(&context, &connection_budget, &mut receive, caller).await;
            let (response, _reserved) = match read {
                Ok(Some((request, reserved))) => {
                    (handle(&context, request, caller).await, reserved)
                }
                Ok(None) => return,
                Err(RequestReadError::Wire(error)) => {
                    tracing::warn!(%error, "bad request frame; stream closed");
                    let _stopped = receive.stop(codes::BAD_FRAME.into());
                    (
                        ApiResponse::Error(ApiError::Malformed(error.to_string())),
                        None,
                    )
                }
                // Answered first; the unread body is refused when `receive` drops.
                Err(RequestReadError::Refused(error)) => (ApiResponse::Error(error), None),
            };
            match wire::encode_frame(&response, MAX_API_FRAME_BYTES) {
                Ok(frame) => {
                    // A client that does not read its answer does not keep it (nor the
                    // reservation) past the request timeout.
                    let timeout = context.config.request_timeout;
                    match tokio::time::timeout(timeout, wire::write_frame(&mut send, &frame)).await
                    {
                        Ok(Ok(())) => {
                            let _finished = send.finish();
                        }
                        Ok(Err(_)) => {}
                        Err(_) => {
                            let _reset = send.reset(codes::BAD_FRAME.into());
                        }
                    }
                }
                Err(error) => tracing::error!(%error, "response not encodable"),
            }
        });
    }
}

/// Request memory held for one request: its share of its connection's and of the node's.
struct Reservation<'context> {
    _connection: tokio::sync::OwnedSemaphorePermit,
    _node: tokio::sync::SemaphorePermit<'context>,
}

/// KiB of request bodies one connection may hold at once: 24 MiB, under its 32 MiB
/// receive window, and above the largest request (16 MiB).
const MAX_CONNECTION_REQUEST_KIBIBYTES: usize = 24 << 10;

enum RequestReadError {
    Wire(wire::WireError),
    /// Not read: an answer for the caller.
    Refused(ApiError),
}

/// Reads one request within the request timeout. A client's request first reserves its
/// bytes from its connection's budget and from the node's (held until the answer is
/// written): however many streams clients open, their requests never hold more than that
/// in memory; the others wait, and QUIC flow control holds their senders back. A request
/// that cannot reserve in time is refused `Busy`, and one whose body does not arrive in
/// time ends its stream, so a client that announces large requests and never sends them
/// cannot hold the budget. Nodes (trusted, small requests) do not draw on it.
async fn read_request<'context>(
    context: &'context NodeContext,
    connection_budget: &Arc<tokio::sync::Semaphore>,
    receive: &mut quinn::RecvStream,
    caller: Caller,
) -> Result<Option<(ApiRequest, Option<Reservation<'context>>)>, RequestReadError> {
    let timeout = context.config.request_timeout;
    let Some(bytes) = wire::read_length(receive, MAX_API_FRAME_BYTES)
        .await
        .map_err(RequestReadError::Wire)?
    else {
        return Ok(None);
    };
    let reserved = match caller {
        Caller::Node => None,
        Caller::Client => {
            let kibibytes = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
            let reserve = async {
                let connection = connection_budget
                    .clone()
                    .acquire_many_owned(kibibytes)
                    .await?;
                let node = context.request_budget.acquire_many(kibibytes).await?;
                Ok::<_, tokio::sync::AcquireError>(Reservation {
                    _connection: connection,
                    _node: node,
                })
            };
            match tokio::time::timeout(timeout, reserve).await {
                Ok(Ok(reservation)) => Some(reservation),
                Ok(Err(_)) => {
                    return Err(RequestReadError::Refused(ApiError::Unavailable(
                        "the node is stopping".to_string(),
                    )))
                }
                Err(_) => {
                    return Err(RequestReadError::Refused(ApiError::Busy(format!(
                        "requests of {bytes} bytes wait for memory; retry later"
                    ))))
                }
            }
        }
    };
    let request = match tokio::time::timeout(timeout, wire::read_body(receive, bytes)).await {
        Ok(request) => request.map_err(RequestReadError::Wire)?,
        Err(_) => {
            return Err(RequestReadError::Wire(wire::WireError::Stream(format!(
                "the {bytes}-byte request did not arrive within {timeout:?}"
            ))))
        }
    };
    Ok(Some((request, reserved)))
}

/// Answers one request.
pub async fn handle(context: &NodeContext, request: ApiRequest, caller: Caller) -> ApiResponse {
    let node_only = matches!(
        request,
        ApiRequest::Join { .. }
            | ApiRequest::Heartbeat(_)
            | ApiRequest::ChangeReplicas { .. }
            | ApiRequest::SplitShard { .. }
            | ApiRequest::TransferLeadership { .. }
            | ApiRequest::FreezeShard { .. }
            | ApiRequest::MergeReady { .. }
            | ApiRequest::MergeShards { .. }
            | ApiRequest::ReplicaHeld { .. }
            | ApiRequest::AbortMerge { .. }
            | ApiRequest::UnfreezeShard { .. }
    );
    if node_only && caller != Caller::Node {
        return ApiResponse::Error(ApiError::NotPermitted(
            "only nodes may send this request".to_string(),
        ));
    }
    let result = match request {
        ApiRequest::Shard { shard, epoch, op } => shard_request(context, shard, epoch, op).await,
        ApiRequest::Route { key } => Ok(route(context, &key)),
        ApiRequest::Cluster => {
            let (nodes, shards) = context.cluster_snapshot();
            Ok(ApiResponse::Cluster { nodes, shards })
        }
        ApiRequest::NodeStatus => Ok(ApiResponse::NodeStatus(status(context))),
        ApiRequest::Join { address, token } => {
            super::placement::join(context, address, token).await
        }
        ApiRequest::Heartbeat(report) => super::placement::heartbeat(context, report).await,
        ApiRequest::ChangeReplicas {
            shard,
            change,
            conf_version,
        } => change_replicas(context, shard, change, conf_version).await,
        ApiRequest::SplitShard {
            shard,
            version,
            at,
            new_shard,
        } => split_shard(context, shard, version, at, new_shard).await,
        ApiRequest::AdminSplit {
            shard,
            at,
            sticky_seconds,
        } => super::placement::admin_split(context, shard, at, sticky_seconds).await,
        ApiRequest::AdminOperations => super::placement::operations(context).await,
        ApiRequest::TransferLeadership { shard, to } => transfer_leadership(context, shard, to),
        ApiRequest::AdminTransferLeader { shard, to } => {
            super::placement::admin_transfer_leader(context, shard, to).await
        }
        ApiRequest::AdminLeaderBalance { enabled } => {
            use super::placement::{set_scheduler, Scheduler};
            set_scheduler(context, Scheduler::LeaderBalance, enabled).await
        }
        ApiRequest::AdminCancel { id } => super::placement::cancel_operation(context, id).await,
        ApiRequest::AdminReplicaBalance { enabled } => {
            use super::placement::{set_scheduler, Scheduler};
            set_scheduler(context, Scheduler::ReplicaBalance, enabled).await
        }
        ApiRequest::AdminMoveReplica { shard, from, to } => {
            super::placement::admin_move_replica(context, shard, from, to).await
        }
        ApiRequest::AdminDrainNode { node, decommission } => {
            super::placement::admin_drain_node(context, node, decommission).await
        }
        ApiRequest::FreezeShard { shard, epoch, into } => {
            freeze_shard(context, shard, epoch, into).await
        }
        ApiRequest::MergeReady {
            shard,
            version,
            into,
        } => Ok(merge_ready(context, shard, version, into)),
        ApiRequest::MergeShards {
            shard,
            epoch,
            right,
        } => merge_shards(context, shard, epoch, right).await,
        ApiRequest::AdminMerge { shard } => super::placement::admin_merge(context, shard).await,
        ApiRequest::ReplicaHeld { shard } => Ok(replica_held(context, shard)),
        ApiRequest::AbortMerge {
            shard,
            version,
            right,
        } => abort_merge(context, shard, version, right).await,
        ApiRequest::UnfreezeShard {
            shard,
            version,
            into,
        } => unfreeze_shard(context, shard, version, into).await,
    };
    result.unwrap_or_else(ApiResponse::Error)
}

fn status(context: &NodeContext) -> NodeStatus {
    let view = context.driver.view();
    NodeStatus {
        node: context.identity.node,
        cluster: context.identity.cluster.clone(),
        address: context.address.clone(),
        replicas: view.replicas.len() as u64,
        leading: view.leading().count() as u64,
        ready: context.is_ready(),
    }
}

/// The shard owning `key` and its leader: from the local replica if there is one, else
/// from the cluster view.
pub(super) fn route(context: &NodeContext, key: &[u8]) -> ApiResponse {
    let view = context.driver.view();
    if let Some(replica) = view.replicas.values().find(|r| r.descriptor.contains(key)) {
        return ApiResponse::Route(ShardRoute {
            descriptor: replica.descriptor.clone(),
            leader: replica.leader.and_then(|node| context.node_info(node)),
            stats: None,
        });
    }
    let (_, shards) = context.cluster_snapshot();
    match shards.into_iter().find(|s| s.descriptor.contains(key)) {
        Some(route) => ApiResponse::Route(route),
        None => ApiResponse::Error(ApiError::ShardUnavailable {
            shard: 0,
            reason: "this node knows no shard for the key yet".to_string(),
        }),
    }
}

async fn shard_request(
    context: &NodeContext,
    shard: ShardId,
    epoch: Epoch,
    op: ShardOp,
) -> Result<ApiResponse, ApiError> {
    if shard == api::PLACEMENT_SHARD {
        return Err(ApiError::ReservedKey);
    }
    api::check_user_op(&op)?;
    if context.is_draining() {
        return Err(ApiError::Unavailable("draining".to_string()));
    }
    // What the request counts for in the shard's load and size (see `shard_stats`).
    let (load_key, written_bytes) = match &op {
        ShardOp::Get { key } => (key.clone(), 0),
        ShardOp::Scan { start, .. } => (start.clone(), 0),
        ShardOp::Write { ops } => (
            ops.first().map(|op| op.key().to_vec()).unwrap_or_default(),
            ops.iter()
                .map(|op| (op.key().len() + op.written_value().map_or(0, <[u8]>::len)) as u64)
                .sum(),
        ),
    };
    let request = match op {
        ShardOp::Get { key } => Request::Read { shard, epoch, key },
        ShardOp::Scan { start, end, limit } => Request::Scan {
            shard,
            epoch,
            start,
            end,
            limit,
        },
        ShardOp::Write { ops } => Request::Write(KvCommand { shard, epoch, ops }),
    };
    let response = match context.request(request).await {
        Ok(response) => response,
        Err(error @ (ApiError::NotLeader { .. } | ApiError::ShardUnavailable { .. })) => {
            return Err(newer_route(context, shard, epoch, &load_key).unwrap_or(error))
        }
        Err(error) => return Err(error),
    };
    context.shard_stats.record(shard, &load_key, written_bytes);
    match response {
        Response::Value(value) => Ok(ApiResponse::Value(value)),
        Response::Written(KvOutcome::Applied) => Ok(ApiResponse::Written {
            failed_condition: None,
        }),
        Response::Written(KvOutcome::ConditionFailed { op, current }) => Ok(ApiResponse::Written {
            failed_condition: Some((op, current.map(serde_bytes::ByteBuf::from))),
        }),
        Response::Items { items, more } => Ok(ApiResponse::Items {
            items: items
                .into_iter()
                .map(|(k, v)| (serde_bytes::ByteBuf::from(k), serde_bytes::ByteBuf::from(v)))
                .collect(),
            more,
        }),
        Response::MembershipChanged(descriptor) => Ok(ApiResponse::ReplicasChanged(descriptor)),
        Response::Split { left, right } => Ok(ApiResponse::Split { left, right }),
        Response::Frozen(descriptor) => Ok(ApiResponse::Frozen(descriptor)),
        Response::Merged(descriptor) => Ok(ApiResponse::Merged(descriptor)),
        Response::RangeChanged(descriptor) => Ok(ApiResponse::RangeChanged(descriptor)),
    }
}

/// Proposes the rollback of a merge of `right` into `shard` (this node must lead
/// `shard`), answered once it applied.
pub(super) async fn abort_merge(
    context: &NodeContext,
    shard: ShardId,
    version: u64,
    right: ShardId,
) -> Result<ApiResponse, ApiError> {
    let epoch = Epoch {
        version,
        conf_version: 0,
    };
    let request = Request::AbortMerge(crate::kv::AbortMergeCommand {
        shard,
        epoch,
        right,
    });
    match context.request(request).await? {
        Response::RangeChanged(descriptor) => Ok(ApiResponse::RangeChanged(descriptor)),
        other => Err(ApiError::Refused(format!("unexpected answer {other:?}"))),
    }
}

/// Proposes the unfreeze of `shard` (this node must lead it), frozen at `version` for a
/// merge into `into` that was rolled back; answered once it applied.
pub(super) async fn unfreeze_shard(
    context: &NodeContext,
    shard: ShardId,
    version: u64,
    into: ShardId,
) -> Result<ApiResponse, ApiError> {
    let epoch = Epoch {
        version,
        conf_version: 0,
    };
    let request = Request::Unfreeze(crate::kv::UnfreezeCommand { shard, epoch, into });
    match context.request(request).await? {
        Response::RangeChanged(descriptor) => Ok(ApiResponse::RangeChanged(descriptor)),
        other => Err(ApiError::Refused(format!("unexpected answer {other:?}"))),
    }
}

/// For a request routed to `shard` at `epoch`, which has no replica here: if a replica
/// here holds `key` at a higher epoch version (the shard was merged into it here, say),
/// the route is stale and that replica's descriptor is the newer one. (Versions only rise
/// for any one key: every split, freeze and merge covering it bumps them.)
fn newer_route(
    context: &NodeContext,
    shard: ShardId,
    epoch: Epoch,
    key: &[u8],
) -> Option<ApiError> {
    let view = context.driver.view();
    if view.replicas.contains_key(&shard) {
        return None;
    }
    view.replicas
        .values()
        .find(|replica| {
            replica.descriptor.contains(key)
                && replica.descriptor.merging_into.is_none()
                && replica.descriptor.epoch.version > epoch.version
        })
        .map(|replica| ApiError::StaleEpoch {
            descriptor: Box::new(replica.descriptor.clone()),
        })
}

/// Whether this node's replica of `shard` is frozen at `version` for its merge into
/// `into`, and this node holds a replica of `into`. The view is published after the
/// iteration's sync, so a frozen replica in it is durable, unless the driver stopped (a
/// failed sync): then it is not ready.
pub(super) fn merge_ready(
    context: &NodeContext,
    shard: ShardId,
    version: u64,
    into: ShardId,
) -> ApiResponse {
    let view = context.driver.view();
    let frozen = view.replicas.get(&shard).is_some_and(|replica| {
        replica.descriptor.merging_into == Some(into)
            && replica.descriptor.epoch.version == version
            && !replica.installing
    });
    let ready = view.stopped.is_none() && frozen && view.replicas.contains_key(&into);
    ApiResponse::MergeReady { ready }
}

pub(super) fn replica_held(context: &NodeContext, shard: ShardId) -> ApiResponse {
    let held = context.driver.view().replicas.contains_key(&shard);
    ApiResponse::ReplicaHeld { held }
}

/// Proposes the freeze of `shard` (this node must lead it) for its merge into `into`,
/// answered once it applied.
pub(super) async fn freeze_shard(
    context: &NodeContext,
    shard: ShardId,
    epoch: Epoch,
    into: ShardId,
) -> Result<ApiResponse, ApiError> {
    if shard == api::PLACEMENT_SHARD || into == api::PLACEMENT_SHARD {
        return Err(ApiError::Refused(
            "the placement shard is never merged".to_string(),
        ));
    }
    let request = Request::Freeze(crate::kv::FreezeCommand { shard, epoch, into });
    match context.request(request).await? {
        Response::Frozen(descriptor) => Ok(ApiResponse::Frozen(descriptor)),
        other => Err(ApiError::Refused(format!("unexpected answer {other:?}"))),
    }
}

/// Proposes the merge of `shard` (this node must lead it) with its frozen right neighbour
/// `right`, answered once it applied.
pub(super) async fn merge_shards(
    context: &NodeContext,
    shard: ShardId,
    epoch: Epoch,
    right: rshard_common::shard::ShardDescriptor,
) -> Result<ApiResponse, ApiError> {
    if shard == api::PLACEMENT_SHARD || right.id == api::PLACEMENT_SHARD {
        return Err(ApiError::Refused(
            "the placement shard is never merged".to_string(),
        ));
    }
    let request = Request::Merge(crate::kv::MergeCommand {
        shard,
        epoch,
        right,
    });
    match context.request(request).await? {
        Response::Merged(descriptor) => Ok(ApiResponse::Merged(descriptor)),
        other => Err(ApiError::Refused(format!("unexpected answer {other:?}"))),
    }
}

/// Asks this node's replica of `shard`, which must lead it, to hand leadership to `to`.
pub(super) fn transfer_leadership(
    context: &NodeContext,
    shard: ShardId,
    to: u64,
) -> Result<ApiResponse, ApiError> {
    let view = context.driver.view();
    let Some(replica) = view.replicas.get(&shard) else {
        return Err(ApiError::ShardUnavailable {
            shard,
            reason: "no replica on this node".to_string(),
        });
    };
    if replica.leader != Some(context.identity.node) {
        return Err(ApiError::NotLeader {
            shard,
            leader: replica.leader.and_then(|node| context.node_info(node)),
        });
    }
    if !replica.descriptor.replicas.contains(&to) {
        return Err(ApiError::Refused(format!(
            "node {to} is not a voter of shard {shard}"
        )));
    }
    if to != context.identity.node && !context.driver.offer(Input::TransferLeader { shard, to }) {
        return Err(ApiError::Busy("the driver's queue is full".to_string()));
    }
    Ok(ApiResponse::Accepted)
}

/// Proposes a split of `shard` (this node must lead it), answered once it applied.
pub(super) async fn split_shard(
    context: &NodeContext,
    shard: ShardId,
    version: u64,
    at: Vec<u8>,
    new_shard: ShardId,
) -> Result<ApiResponse, ApiError> {
    if shard == api::PLACEMENT_SHARD || new_shard == api::PLACEMENT_SHARD {
        return Err(ApiError::Refused(
            "the placement shard is never split".to_string(),
        ));
    }
    let conf_version = context
        .driver
        .view()
        .replicas
        .get(&shard)
        .map_or(0, |replica| replica.descriptor.epoch.conf_version);
    let request = Request::Split(crate::kv::SplitCommand {
        shard,
        epoch: Epoch {
            version,
            conf_version,
        },
        at,
        new_shard,
    });
    match context.request(request).await? {
        Response::Split { left, right } => Ok(ApiResponse::Split { left, right }),
        other => Err(ApiError::Refused(format!("unexpected answer {other:?}"))),
    }
}

pub(super) async fn change_replicas(
    context: &NodeContext,
    shard: ShardId,
    change: ReplicaChange,
    conf_version: u64,
) -> Result<ApiResponse, ApiError> {
    let check_caught_up = |node: rshard_common::api::NodeId| {
        let view = context.driver.view();
        let caught_up = view
            .replicas
            .get(&shard)
            .is_some_and(|r| r.caught_up_learners.contains(&node));
        if caught_up {
            Ok(())
        } else {
            Err(ApiError::Refused(format!(
                "node {node} is not a caught-up learner of shard {shard} here"
            )))
        }
    };
    let steps = match change {
        ReplicaChange::AddLearner(node) => vec![ConfChangeStep::AddLearner(node)],
        ReplicaChange::Promote(node) => {
            check_caught_up(node)?;
            vec![ConfChangeStep::AddVoter(node)]
        }
        ReplicaChange::Replace { add, remove } => {
            check_caught_up(add)?;
            vec![
                ConfChangeStep::AddVoter(add),
                ConfChangeStep::Remove(remove),
            ]
        }
        ReplicaChange::Remove(node) => vec![ConfChangeStep::Remove(node)],
    };
    let request = Request::ChangeReplicas {
        shard,
        change: ConfChange::new(steps),
        conf_version: Some(conf_version),
    };
    match context.request(request).await? {
        Response::MembershipChanged(descriptor) => Ok(ApiResponse::ReplicasChanged(descriptor)),
        other => Err(ApiError::Refused(format!("unexpected answer {other:?}"))),
    }
}

impl NodeContext {
    /// Sends `request` to the driver and turns what goes wrong into an [`ApiError`].
    pub(super) async fn request(&self, request: Request) -> Result<Response, ApiError> {
        let shard = request.shard();
        let changes_state = request.changes_state();
        let answer = self
            .driver
            .request(request, self.config.request_timeout)
            .await
            .map_err(|failure| match failure {
                RequestFailure::Busy => ApiError::Busy("the driver's queue is full".to_string()),
                RequestFailure::Timeout => {
                    ApiError::Timeout(format!("no answer from shard {shard} in time"))
                }
                RequestFailure::NotTaken => ApiError::Unavailable("the node stopped".to_string()),
                RequestFailure::Dropped if changes_state => ApiError::OutcomeUnknown,
                RequestFailure::Dropped => ApiError::Unavailable("the node stopped".to_string()),
            })?;
        answer.map_err(|error| self.api_error(shard, error))
    }

    fn api_error(&self, shard: ShardId, error: RequestError) -> ApiError {
        match error {
            RequestError::NotLeader { shard, leader } => ApiError::NotLeader {
                shard,
                leader: leader.and_then(|node| self.node_info(node)),
            },
            RequestError::UnknownShard(_) => match self.known_leader(shard) {
                Some(leader) => ApiError::NotLeader {
                    shard,
                    leader: Some(leader),
                },
                None => ApiError::ShardUnavailable {
                    shard,
                    reason: "no replica on this node and no known leader".to_string(),
                },
            },
            RequestError::Refused(refusal) => match refusal {
                KvError::KeyNotInShard { descriptor, .. } => ApiError::KeyNotInShard { descriptor },
                KvError::StaleEpoch { descriptor } => ApiError::StaleEpoch { descriptor },
                KvError::KeyTooLarge { .. }
                | KvError::ValueTooLarge { .. }
                | KvError::TooManyOps { .. } => ApiError::TooLarge(refusal.to_string()),
                KvError::SplitRefused(reason) | KvError::MergeRefused(reason) => {
                    ApiError::Refused(reason)
                }
                KvError::ShardMerging { .. } => ApiError::Busy(refusal.to_string()),
                other => ApiError::Malformed(other.to_string()),
            },
            RequestError::Busy(reason) => ApiError::Busy(reason.to_string()),
            RequestError::OutcomeUnknown => ApiError::OutcomeUnknown,
            RequestError::Stopped(reason) => ApiError::Unavailable(reason),
            RequestError::MembershipRefused(reason) => ApiError::Refused(reason),
        }
    }

    /// The leader of `shard` as the cluster view has it.
    fn known_leader(&self, shard: ShardId) -> Option<NodeInfo> {
        let (_, shards) = self.cluster_snapshot();
        shards
            .into_iter()
            .find(|route| route.descriptor.id == shard)
            .and_then(|route| route.leader)
    }
}
