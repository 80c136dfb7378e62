//! Key layout in the node's keyspaces. Big-endian integers, so byte order is numeric order
//! and one group's keys are contiguous.
//!
//! - `raft_log`: group id (8) ++ index (8) -> entry
//! - `raft_state`: group id (8) ++ tag (1) -> hard state | applied state | compaction point |
//!   shard descriptor | snapshot install marker | tombstone
//! - `snapshot_staging`: group id (8) ++ staging id (8) ++ user key -> value

use rshard_raft::Index;

/// A Raft group (one shard, or the placement group) on this node.
pub type GroupId = u64;

pub const HARD_STATE_TAG: u8 = b'h';
pub const APPLIED_STATE_TAG: u8 = b'a';
/// The shard descriptor the group replicates.
pub const DESCRIPTOR_TAG: u8 = b'd';
/// The last entry compacted away (or replaced by a snapshot): the log's "dummy" position.
pub const COMPACTED_TAG: u8 = b'c';
/// A snapshot install in progress: the group's data is not consistent until it is gone.
pub const INSTALL_TAG: u8 = b'i';
/// A replica removed from this node: the conf version at which this node was known not to
/// be a member (only what is above it may create the group here again).
pub const TOMBSTONE_TAG: u8 = b't';

/// Node-wide, in `raft_state`: how many times the store was opened (never a group key,
/// which is 9 bytes).
pub const INCARNATION_KEY: &[u8] = b"node/incarnation";
/// Key ranges whose shards this node may be given by a snapshot as a voter: ranges a
/// snapshot took away from a shard here, because the shard split while this replica was
/// behind (see the multiraft driver).
pub const SPLIT_GAPS_KEY: &[u8] = b"node/split-gaps";
/// Data ranges of removed replicas still to delete, in bounded steps (see the driver).
pub const PENDING_CLEARS_KEY: &[u8] = b"node/pending-clears";
/// Groups whose shard merged into a neighbour here (the merge is applied), to retire:
/// written in the batch that applies the merge, emptied by the one that retires them.
pub const RETIRING_KEY: &[u8] = b"node/retiring";
/// Which node of which cluster this store belongs to.
pub const IDENTITY_KEY: &[u8] = b"node/identity";
/// The token a node joins its cluster with, kept until it has an identity.
pub const JOIN_TOKEN_KEY: &[u8] = b"node/join-token";
/// The other nodes' addresses as last learned, to find the cluster again after a restart.
pub const KNOWN_PEERS_KEY: &[u8] = b"node/peers";

/// Identifies one received snapshot's staged chunks on this node.
pub type StagingId = u64;

/// The prefix of every staged key of one received snapshot.
pub fn staging_prefix(group: GroupId, staging: StagingId) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8..].copy_from_slice(&staging.to_be_bytes());
    key
}

pub fn staging_key(group: GroupId, staging: StagingId, key: &[u8]) -> Vec<u8> {
    let mut staged = Vec::with_capacity(16 + key.len());
    staged.extend_from_slice(&staging_prefix(group, staging));
    staged.extend_from_slice(key);
    staged
}

/// The group and staging id a staged key belongs to, if it is one.
pub fn parse_staging_key(key: &[u8]) -> Option<(GroupId, StagingId, &[u8])> {
    let group = GroupId::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let staging = StagingId::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    Some((group, staging, key.get(16..)?))
}

pub fn log_key(group: GroupId, index: Index) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The index a log key names, if it is one.
pub fn index_of_log_key(key: &[u8]) -> Option<Index> {
    let bytes: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    Some(Index::from_be_bytes(bytes))
}

pub fn group_prefix(group: GroupId) -> [u8; 8] {
    group.to_be_bytes()
}

pub fn state_key(group: GroupId, tag: u8) -> [u8; 9] {
    let mut key = [0; 9];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8] = tag;
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_group_then_index() {
        let keys = [log_key(1, 2), log_key(1, 256), log_key(2, 1)];
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(index_of_log_key(&log_key(7, 300)), Some(300));
        assert_eq!(index_of_log_key(b"short"), None);
    }

    #[test]
    fn staged_keys_sort_by_group_then_staging_then_key_and_parse_back() {
        let keys = [
            staging_key(1, 9, b"z"),
            staging_key(2, 1, b""),
            staging_key(2, 1, b"a"),
            staging_key(2, 2, b"a"),
        ];
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(parse_staging_key(&keys[2]), Some((2, 1, &b"a"[..])));
        assert_eq!(parse_staging_key(&keys[0][..15]), None);
    }
}
