//! Per-replica settings. Every limit carries its unit in its name.

use crate::types::{Index, NodeId};
use crate::Error;

/// How the leader confirms it still leads before serving a read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// A heartbeat round acknowledged by a quorum after the read arrived (thesis §6.4).
    #[default]
    Safe,
    /// Serve from the leader's lease when one is held (thesis §6.4.1): a quorum acknowledged
    /// a heartbeat sent less than an election timeout ago, and followers will not elect
    /// anyone else within an election timeout of hearing from us. Requires `check_quorum`, and
    /// assumes ticks advance at the same rate on every replica. Falls back to `Safe` whenever
    /// no lease is held (after election, transfer, quiescence). Every replica of a group must
    /// use the same read mode: a restarted replica honours leases only in this mode.
    LeaseBased,
}

/// Settings of one replica of one group.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's id; never 0.
    pub id: NodeId,
    /// Followers wait between this and twice this many ticks without hearing from a leader
    /// before campaigning; the leader checks quorum once per this many ticks.
    pub election_timeout_ticks: u32,
    /// The leader sends heartbeats every this many ticks.
    pub heartbeat_interval_ticks: u32,
    /// A snapshot sent and not acknowledged within this many ticks is presumed lost and sent
    /// again. Large snapshots need long; the driver reports failures sooner.
    pub snapshot_timeout_ticks: u32,
    /// Appends in flight to one follower in the replicate state.
    pub max_inflight_msgs: usize,
    /// Entry bytes in one append (at least one entry is always sent).
    pub max_msg_bytes: u64,
    /// Bytes of entries this leader proposed and has not yet handed out for applying; past it,
    /// proposals are refused until the log drains.
    pub max_uncommitted_bytes: u64,
    /// Bytes of committed entries handed out in one Ready.
    pub max_apply_bytes: u64,
    /// ReadIndex requests waiting for a heartbeat round.
    pub max_pending_reads: usize,
    /// Campaign only if a pre-vote round shows the campaign could win (thesis §9.6).
    pub pre_vote: bool,
    /// The leader steps down if it has not heard from a quorum for an election timeout, and
    /// followers ignore campaigns while they hear from a leader.
    pub check_quorum: bool,
    pub read_mode: ReadMode,
    /// The index the caller's state machine has applied (0 for a new replica). Never below
    /// the storage's snapshot index: a lower value is raised to it.
    pub applied: Index,
    /// Seeds the election-timeout randomness; with the same inputs a replica behaves the same.
    pub seed: u64,
}

impl Config {
    /// Settings for replica `id` with the defaults below.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 2,
            snapshot_timeout_ticks: 600,
            max_inflight_msgs: 256,
            max_msg_bytes: 1 << 20,
            max_uncommitted_bytes: 64 << 20,
            max_apply_bytes: 4 << 20,
            max_pending_reads: 4096,
            pre_vote: true,
            check_quorum: true,
            read_mode: ReadMode::Safe,
            applied: 0,
            seed: 0,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        let problem = if self.id == 0 {
            "id must not be 0"
        } else if self.heartbeat_interval_ticks == 0 {
            "heartbeat_interval_ticks must be positive"
        } else if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            "election_timeout_ticks must exceed heartbeat_interval_ticks"
        } else if self.max_inflight_msgs == 0 || self.max_pending_reads == 0 {
            "max_inflight_msgs and max_pending_reads must be positive"
        } else if self.snapshot_timeout_ticks == 0 {
            "snapshot_timeout_ticks must be positive"
        } else if self.max_msg_bytes == 0 || self.max_apply_bytes == 0 {
            "byte limits must be positive"
        } else if self.read_mode == ReadMode::LeaseBased && !self.check_quorum {
            "lease-based reads need check_quorum"
        } else {
            return Ok(());
        };
        Err(Error::InvalidConfig(problem))
    }
}
