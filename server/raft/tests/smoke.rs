//! A first end-to-end check of the harness: elect, replicate, apply everywhere.

mod support;

use support::Cluster;

#[test]
fn three_replicas_elect_a_leader_and_apply_a_proposal_everywhere() {
    let mut cluster = Cluster::new(&[1, 2, 3], |_| {});
    cluster.campaign(1);
    assert_eq!(cluster.leaders(), vec![1]);
    cluster.propose(1, b"hello").expect("leader accepts");
    for id in 1..=3 {
        assert_eq!(
            cluster.applied_data(id),
            vec![b"hello".to_vec()],
            "node {id}"
        );
    }
}
