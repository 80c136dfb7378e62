//! Key layout in the node's keyspaces. Big-endian integers, so byte order is numeric order
//! and one group's keys are contiguous.
//!
//! - `raft_log`: group id (8) ++ index (8) -> entry
//! - `raft_state`: group id (8) ++ tag (1) -> hard state | applied state | compaction point |
//!   shard descriptor

use rshard_raft::Index;

/// A Raft group (one shard, or the placement group) on this node.
pub type GroupId = u64;

pub const HARD_STATE_TAG: u8 = b'h';
pub const APPLIED_STATE_TAG: u8 = b'a';
/// The shard descriptor the group replicates.
pub const DESCRIPTOR_TAG: u8 = b'd';
/// The last entry compacted away (or replaced by a snapshot): the log's "dummy" position.
pub const COMPACTED_TAG: u8 = b'c';

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
}
