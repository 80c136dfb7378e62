//! End-to-end: placement operations on a cluster of real `rshard serve` processes.
//!
//! - a shard split 20 times by `rshard admin split`, with every key read throughout by a
//!   client whose cached routes go stale at each split; afterwards the shards cover the key
//!   space with no gap and no overlap, every key reads back, and every new shard takes
//!   writes;
//! - leadership moved by `rshard admin transfer-leader`, and leaders balanced;
//! - replicas moved by `rshard admin move` between four nodes under a checked load, one of
//!   them with the shard's leader killed -9 midway;
//! - a node down past the (shortened) dead-node timeout: its replicas are rebuilt on the
//!   other nodes, and when it is back it destroys the replicas it no longer holds;
//! - a node decommissioned by `rshard node decommission`: drained of every replica, then
//!   gone from the cluster;
//! - a fourth node gets its share of the replicas from the replica balance scheduler, and
//!   then nothing moves;
//! - a move stuck on its new replica shows its step, is cancelled by `rshard admin cancel`
//!   and rolled back;
//! - a shard written past the (scaled down) size limit splits into shards under it, and a
//!   hot key range splits at the key that halves its load;
//! - a merge by `rshard admin merge` moves the right shard's replicas onto the left's nodes
//!   and completes under a checked load; one whose right shard's leader is killed -9 right
//!   after it starts completes or rolls back, and loses nothing; small cold neighbours merge on their own once a
//!   manual split's stickiness runs out, and not across one that stays.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rshard_common::api::{ShardRoute, FIRST_DATA_SHARD};
use support::{CheckedLoad, Cluster, FORMATION_TIMEOUT};

const KEYS: usize = 200;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn key(index: usize) -> Vec<u8> {
    format!("key/{index:03}").into_bytes()
}

/// `rshard admin split` through node `via`, as an operator runs it: the new shard's id,
/// or the output.
fn split(cluster: &Cluster, via: usize, shard: u64, at: &str) -> Result<u64, String> {
    let shard = shard.to_string();
    let (ok, stdout, stderr) = cluster.cli(
        via,
        &["admin", "split", "--shard", &shard, "--at", at, "--wait"],
    );
    let new_shard = stdout
        .split("(new shard ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|id| id.parse().ok());
    match new_shard {
        Some(id) if ok && stdout.contains(": done") => Ok(id),
        _ => Err(format!("{stdout}{stderr}")),
    }
}

/// `rshard admin transfer-leader` through node `via`: (success, stdout, stderr).
fn transfer_leader(cluster: &Cluster, via: usize, shard: u64, to: u64) -> (bool, String, String) {
    let (shard, to) = (shard.to_string(), to.to_string());
    cluster.cli(
        via,
        &["admin", "transfer-leader", "--shard", &shard, "--to", &to],
    )
}

/// The shards as `rshard admin shards --format json` prints them through node `via`: (id,
/// start, end).
fn shards(cluster: &Cluster, via: usize) -> Vec<(u64, String, String)> {
    let (ok, stdout, stderr) = cluster.cli(via, &["admin", "shards", "--format", "json"]);
    assert!(ok, "{stderr}");
    let parsed: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    parsed
        .as_array()
        .expect("an array")
        .iter()
        .map(|shard| {
            let text = |field: &str| shard[field].as_str().expect("a string").to_string();
            (
                shard["id"].as_u64().expect("an id"),
                text("start"),
                text("end"),
            )
        })
        .collect()
}

/// True if the ranges, in the order given (`admin shards` lists them in key order), begin
/// at the first key, end at the last, and each starts where the one before ended.
fn cover_the_key_space(shards: &[(u64, String, String)]) -> bool {
    shards.first().is_some_and(|first| first.1.is_empty())
        && shards.last().is_some_and(|last| last.2.is_empty())
        && shards.windows(2).all(|pair| pair[0].2 == pair[1].1)
}

#[test]
fn a_shard_split_twenty_times_serves_every_key_throughout_and_covers_the_key_space() {
    runtime().block_on(async {
        let cluster = Cluster::formed(&[]).await;
        let writer = cluster.client(cluster.addresses());
        for index in 0..KEYS {
            writer.put(&key(index), &key(index)).await.expect("a put");
        }
        // A reader that keeps one client (and its cached routes) through every split.
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let reader = {
            let (client, stop, reads) = (
                cluster.client(cluster.addresses()),
                stop.clone(),
                reads.clone(),
            );
            tokio::spawn(async move {
                let mut index = 0;
                while !stop.load(Ordering::Relaxed) {
                    let found = client.get(&key(index)).await;
                    if found != Ok(Some(key(index))) {
                        return Err(format!("key {index} read {found:?}"));
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                    index = (index + 7) % KEYS;
                }
                Ok(())
            })
        };
        let via = 1;
        // Nineteen splits walking up the key space, each splitting the shard the one before
        // made; then one in the first shard.
        let mut upper = FIRST_DATA_SHARD;
        let mut made = Vec::new();
        for at in (1..20).map(|step| format!("key/{:03}", step * 10)) {
            upper = split(&cluster, via, upper, &at)
                .unwrap_or_else(|output| panic!("split at {at}: {output}"));
            made.push(upper);
        }
        made.push(split(&cluster, via, FIRST_DATA_SHARD, "key/005").expect("the twentieth split"));
        // A split key outside the shard is refused with the reason, and changes nothing.
        let refused = split(&cluster, via, FIRST_DATA_SHARD, "key/150").expect_err("refused");
        assert!(refused.contains("must lie inside"), "{refused}");

        stop.store(true, Ordering::Relaxed);
        reader
            .await
            .expect("the reader ran")
            .expect("every read succeeded");
        assert!(reads.load(Ordering::Relaxed) > 0);

        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let shards = shards(&cluster, via);
            let data_shards = shards.iter().filter(|s| s.0 != 0).count();
            if data_shards == 21 && cover_the_key_space(&shards) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the shards never settled: {shards:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let fresh = cluster.client(vec![cluster.addresses()[2]]);
        for index in 0..KEYS {
            assert_eq!(
                fresh.get(&key(index)).await,
                Ok(Some(key(index))),
                "key {index}"
            );
        }
        // Every shard takes writes: one key just above each split point.
        for step in 0..20 {
            let key = format!("key/{:03}+", step * 10);
            fresh
                .put(key.as_bytes(), b"new")
                .await
                .expect("a write to a split-off shard");
        }
        let items = fresh
            .scan(b"key/", b"key0", 1000)
            .await
            .expect("a scan over 21 shards");
        assert_eq!(items.len(), KEYS + 20, "one scan crosses every shard");
        let (ok, stdout, _) = cluster.cli(via, &["admin", "ops"]);
        assert!(ok && stdout.matches(" done ").count() == 20, "{stdout}");
        assert_eq!(made.len(), 20);
    });
}

#[test]
fn leadership_moves_to_each_voter_asked_and_a_node_without_a_replica_is_refused() {
    runtime().block_on(async {
        // Three ended operations kept: the history is pruned as more end.
        let cluster = Cluster::formed(&["--ended-operations-kept", "3"]).await;
        let via = 0;
        // Leaders placed by hand stay only while the balancer is paused.
        let (ok, stdout, stderr) = cluster.cli(via, &["admin", "leader-balance", "off"]);
        assert!(ok, "{stdout}{stderr}");
        let client = cluster.client(cluster.addresses());
        for to in [2u64, 3, 1, 1] {
            let (ok, stdout, stderr) = transfer_leader(&cluster, via, FIRST_DATA_SHARD, to);
            assert!(ok && stdout.contains(": done"), "to {to}: {stdout}{stderr}");
            // The cluster's view shows it within a report or two.
            cluster
                .wait_for(
                    "the leader asked for",
                    Duration::from_secs(10),
                    |_, shards| {
                        shards.iter().any(|route| {
                            route.descriptor.id == FIRST_DATA_SHARD
                                && route.leader.as_ref().is_some_and(|leader| leader.id == to)
                        })
                    },
                )
                .await;
            client
                .put(format!("moved/{to}").as_bytes(), b"v")
                .await
                .expect("a write under the new leader");
        }
        // A shard just split off can be moved at once (placement reads the registry, not a
        // view a report behind).
        let new_shard = split(&cluster, via, FIRST_DATA_SHARD, "m").expect("a split");
        let (ok, stdout, stderr) = transfer_leader(&cluster, via, new_shard, 2);
        assert!(ok && stdout.contains(": done"), "{stdout}{stderr}");
        let (ok, stdout, stderr) = transfer_leader(&cluster, via, FIRST_DATA_SHARD, 9);
        assert!(
            !ok && stderr.contains("not a voter of shard"),
            "{stdout}{stderr}"
        );
        // Six operations ended; within a few rounds only the newest three are on record.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ids: Vec<u64> = operations(&cluster, via)
                .iter()
                .filter_map(|op| op["id"].as_u64())
                .collect();
            if ids.len() == 3 {
                assert!(
                    ids.iter().all(|&id| id >= 4),
                    "the oldest went first: {ids:?}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "never pruned to 3: {ids:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

#[test]
fn thirty_shards_created_on_one_node_get_their_leaders_balanced_within_30_seconds() {
    runtime().block_on(async {
        let cluster = Cluster::formed(&[]).await;
        let via = 0;
        // With the balancer paused, 29 splits make 30 data shards, all led by node 1 (the
        // bootstrap node leads the first; each new shard campaigns where its parent is led).
        let (ok, stdout, stderr) = cluster.cli(via, &["admin", "leader-balance", "off"]);
        assert!(ok && stdout.contains("off"), "{stdout}{stderr}");
        let mut upper = FIRST_DATA_SHARD;
        for step in 1..30 {
            let at = format!("t/{step:03}");
            upper = split(&cluster, via, upper, &at)
                .unwrap_or_else(|output| panic!("split at {at}: {output}"));
        }
        // A new shard whose campaign on node 1 lost the race (its followers had not
        // applied the split yet) is led elsewhere; move those to node 1 too, looking again
        // until the view shows all 30 (each node's view may be a report behind).
        let client = cluster.client(cluster.addresses());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, shards) = client.cluster().await.expect("a view");
            let data: Vec<_> = shards.iter().filter(|r| r.descriptor.id != 0).collect();
            let elsewhere: Vec<u64> = data
                .iter()
                .filter(|r| r.leader.as_ref().is_none_or(|l| l.id != 1))
                .map(|r| r.descriptor.id)
                .collect();
            if data.len() == 30 && elsewhere.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "30 data shards all led by node 1 never showed: {} shards, led elsewhere {elsewhere:?}",
                data.len()
            );
            for shard in elsewhere {
                let (ok, stdout, stderr) = transfer_leader(&cluster, via, shard, 1);
                assert!(ok, "{stdout}{stderr}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (ok, stdout, stderr) = cluster.cli(via, &["admin", "leader-balance", "on"]);
        assert!(ok && stdout.contains("on"), "{stdout}{stderr}");
        let resumed = Instant::now();
        let balanced = |shards: &[rshard_common::api::ShardRoute]| {
            let mut leading = [0usize; 3];
            for route in shards {
                match route.leader.as_ref().map(|l| l.id) {
                    Some(node @ 1..=3) => leading[(node - 1) as usize] += 1,
                    _ => return false,
                }
            }
            // 31 shards with the placement shard: the mean is 10.3.
            shards.len() == 31 && leading.iter().all(|&count| (10..=11).contains(&count))
        };
        cluster
            .wait_for(
                "leaders balanced to 10 or 11 per node",
                Duration::from_secs(30),
                |_, shards| balanced(shards),
            )
            .await;
        eprintln!(
            "balanced {:?} after the balancer resumed",
            resumed.elapsed()
        );
        // Balanced, it stays so: no leader moves over three report intervals.
        let leaders = |shards: &[rshard_common::api::ShardRoute]| {
            shards
                .iter()
                .map(|route| (route.descriptor.id, route.leader.as_ref().map(|l| l.id)))
                .collect::<Vec<_>>()
        };
        // (Each node's view is its last report's answer: let them all catch up first.)
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let client = cluster.client(cluster.addresses());
        let (_, before) = client.cluster().await.expect("a view");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_, after) = client.cluster().await.expect("a view");
        assert!(balanced(&after), "{after:?}");
        assert_eq!(leaders(&before), leaders(&after), "leaders kept moving");
    });
}

/// Starts a fourth node (joining node 0) and waits until every node is live; its index.
async fn add_fourth_node(cluster: &mut Cluster) -> usize {
    let index = cluster.add_node(Some(cluster.addresses()[0]));
    cluster
        .wait_for("4 live nodes", FORMATION_TIMEOUT, |nodes, _| {
            nodes.len() == 4 && nodes.iter().all(|n| n.live)
        })
        .await;
    index
}

/// Writes `KEYS` keys, each with the value the key's number names.
async fn write_keys(client: &rshard_common::client::Client) {
    for i in 0..KEYS {
        client
            .put(&key(i), format!("v{i}").as_bytes())
            .await
            .expect("a put");
    }
}

/// Every key [`write_keys`] wrote reads back with its value.
async fn read_keys_back(client: &rshard_common::client::Client) {
    for i in 0..KEYS {
        let value = client.get(&key(i)).await.expect("a read");
        assert_eq!(value, Some(format!("v{i}").into_bytes()), "key {i}");
    }
}

/// `rshard admin move` through node `via`, following the operation: (success, stdout,
/// stderr).
fn move_replica(cluster: &Cluster, via: usize, from: u64, to: u64) -> (bool, String, String) {
    let (shard, from, to) = (
        FIRST_DATA_SHARD.to_string(),
        from.to_string(),
        to.to_string(),
    );
    cluster.cli(
        via,
        &[
            "admin", "move", "--shard", &shard, "--from", &from, "--to", &to, "--wait",
        ],
    )
}

/// The data shard's voters, learners and leader, as the cluster's view has them.
async fn data_shard(client: &rshard_common::client::Client) -> (Vec<u64>, Vec<u64>, Option<u64>) {
    let (_, shards) = client.cluster().await.expect("a view");
    let route = shards
        .into_iter()
        .find(|route| route.descriptor.id == FIRST_DATA_SHARD)
        .expect("the data shard");
    (
        route.descriptor.replicas,
        route.descriptor.learners,
        route.leader.map(|leader| leader.id),
    )
}

fn index_of(cluster: &Cluster, node: u64) -> usize {
    cluster
        .nodes
        .iter()
        .position(|n| n.id == node)
        .expect("one of ours")
}

async fn replicas_held(cluster: &Cluster, node: u64) -> u64 {
    let address = cluster.nodes[index_of(cluster, node)].address;
    let client = cluster.client(vec![address]);
    client
        .node_status(address)
        .await
        .map_or(u64::MAX, |status| status.replicas)
}

/// Waits until the view shows the data shard on `voters` (in any order), with no learner.
async fn wait_for_voters(cluster: &Cluster, voters: &[u64]) {
    let mut expected = voters.to_vec();
    expected.sort_unstable();
    cluster
        .wait_for(
            "the data shard on the voters the move left",
            Duration::from_secs(20),
            |_, shards| {
                shards.iter().any(|route| {
                    let d = &route.descriptor;
                    let mut replicas = d.replicas.clone();
                    replicas.sort_unstable();
                    d.id == FIRST_DATA_SHARD && replicas == expected && d.learners.is_empty()
                })
            },
        )
        .await;
}

#[test]
fn replicas_move_between_four_nodes_under_a_checked_load_and_a_leader_killed_mid_move() {
    runtime().block_on(async {
        let mut cluster = Cluster::formed(&[]).await;
        // Leaders and replicas stay where the moves put them (paused before the fourth
        // node joins, or the replica balancer gives it a replica of its own accord).
        for scheduler in ["leader-balance", "replica-balance"] {
            let (ok, stdout, stderr) = cluster.cli(0, &["admin", scheduler, "off"]);
            assert!(ok, "{stdout}{stderr}");
        }
        add_fourth_node(&mut cluster).await;
        let client = cluster.client(cluster.addresses());
        write_keys(&client).await;
        let load = CheckedLoad::start(&cluster, 3);

        // A follower's replica, then the leader's (its leadership moves first), then a
        // follower's again: each lands on the node that holds none.
        // (Each node's view is up to a report old: the voters are tracked here, from what
        // each move was seen to leave.)
        let (mut voters, _, _) = data_shard(&client).await;
        for round in 0..3 {
            let (_, _, leader) = data_shard(&client).await;
            let leader = leader.expect("a leader");
            let to = (1..=4).find(|n| !voters.contains(n)).expect("a spare node");
            let from = match round {
                1 if voters.contains(&leader) => leader,
                _ => *voters.iter().find(|&&v| v != leader).expect("a follower"),
            };
            let held = replicas_held(&cluster, from).await;
            let via = index_of(&cluster, to);
            let (ok, stdout, stderr) = move_replica(&cluster, via, from, to);
            assert!(
                ok && stdout.contains(": done"),
                "move {from} -> {to}: {stdout}{stderr}"
            );
            voters = voters
                .iter()
                .map(|&v| if v == from { to } else { v })
                .collect();
            wait_for_voters(&cluster, &voters).await;
            // The node moved from destroys its replica.
            let deadline = Instant::now() + Duration::from_secs(10);
            while replicas_held(&cluster, from).await != held - 1 {
                assert!(
                    Instant::now() < deadline,
                    "node {from} kept its replica (held {held}, now {})\n{}",
                    replicas_held(&cluster, from).await,
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        // A move whose shard leader is killed -9 midway (with the balancer off, the data
        // shard's leader usually leads placement too): it completes under the next leaders.
        let leader = loop {
            match data_shard(&client).await {
                (_, _, Some(leader)) if voters.contains(&leader) => break leader,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let to = (1..=4).find(|n| !voters.contains(n)).expect("a spare node");
        let from = *voters.iter().find(|&&v| v != leader).expect("a follower");
        let via = index_of(&cluster, to);
        let (host, certs) = (
            cluster.addresses()[via].to_string(),
            cluster.certs().to_string_lossy().to_string(),
        );
        let started = tokio::task::spawn_blocking(move || {
            let (shard, from, to) = (
                FIRST_DATA_SHARD.to_string(),
                from.to_string(),
                to.to_string(),
            );
            support::rshard(&[
                "admin",
                "move",
                "--shard",
                &shard,
                "--from",
                &from,
                "--to",
                &to,
                "--host",
                &host,
                "--certs-dir",
                &certs,
            ])
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let victim = index_of(&cluster, leader);
        cluster.kill(victim);
        let (_, stdout, stderr) = started.await.expect("the command ran");
        assert!(stdout.contains("operation "), "{stdout}{stderr}");
        let left: Vec<u64> = voters
            .iter()
            .map(|&v| if v == from { to } else { v })
            .collect();
        wait_for_voters(&cluster, &left).await;
        cluster.restart(victim);
        // Recorded done by whichever node leads placement now (resumed if its first
        // runner died).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, ops, stderr) = cluster.cli(via, &["admin", "ops"]);
            let last = ops.lines().last().unwrap_or_default().to_string();
            if ok && last.contains("move") && last.contains("done") {
                break;
            }
            assert!(Instant::now() < deadline, "{ops}{stderr}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        load.finish(50).await;
        // Nothing lost: every key written before the moves reads back.
        let client = cluster.client(cluster.addresses());
        read_keys_back(&client).await;
    });
}

#[test]
fn a_dead_nodes_replicas_are_rebuilt_elsewhere_and_it_is_reconciled_when_it_is_back() {
    runtime().block_on(async {
        // Dead after 3 s here (5 minutes by default).
        let flags = [
            "--suspect-node-timeout-seconds",
            "2",
            "--dead-node-timeout-seconds",
            "3",
        ];
        let mut cluster = Cluster::formed(&flags).await;
        // Node 4 takes replicas only by repair here.
        let (ok, stdout, stderr) = cluster.cli(0, &["admin", "replica-balance", "off"]);
        assert!(ok, "{stdout}{stderr}");
        add_fourth_node(&mut cluster).await;
        let client = cluster.client(cluster.addresses());
        write_keys(&client).await;
        // Node 2 holds a replica of both shards (the placement shard and the data shard).
        let victim = 1;
        let dead = cluster.nodes[victim].id;
        cluster.kill(victim);
        let killed = Instant::now();
        cluster
            .wait_for(
                "every shard on 3 voters again, none on the dead node",
                Duration::from_secs(60),
                |_, shards| {
                    shards.len() == 2
                        && shards.iter().all(|route| {
                            let d = &route.descriptor;
                            d.replicas.len() == 3
                                && !d.replicas.contains(&dead)
                                && d.learners.is_empty()
                        })
                },
            )
            .await;
        eprintln!("repaired {:?} after the kill", killed.elapsed());
        let client = cluster.client(cluster.addresses());
        read_keys_back(&client).await;
        // Back, the node learns its replicas were removed and destroys them.
        cluster.restart(victim);
        let deadline = Instant::now() + Duration::from_secs(30);
        while replicas_held(&cluster, dead).await != 0 {
            assert!(
                Instant::now() < deadline,
                "node {dead} kept its replicas\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

#[test]
fn a_decommissioned_node_is_drained_of_every_replica_and_leaves_the_cluster() {
    runtime().block_on(async {
        let mut cluster = Cluster::formed(&[]).await;
        add_fourth_node(&mut cluster).await;
        let client = cluster.client(cluster.addresses());
        write_keys(&client).await;
        let (ok, stdout, stderr) = cluster.cli(0, &["node", "drain", "9"]);
        assert!(!ok && stderr.contains("no node 9"), "{stdout}{stderr}");
        // Node 2 holds a replica of both shards, and may lead either (or placement).
        let (ok, stdout, stderr) = cluster.cli(0, &["node", "decommission", "2", "--wait"]);
        assert!(ok && stdout.contains(": done"), "{stdout}{stderr}");
        cluster
            .wait_for(
                "node 2 gone from the nodes and from every shard",
                Duration::from_secs(10),
                |nodes, shards| {
                    nodes.len() == 3
                        && !nodes.iter().any(|n| n.id == 2)
                        && shards.iter().all(|route| {
                            let d = &route.descriptor;
                            d.replicas.len() == 3 && !d.members().any(|m| m == 2)
                        })
                },
            )
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while replicas_held(&cluster, 2).await != 0 {
            assert!(Instant::now() < deadline, "node 2 kept replicas");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Three nodes for three replicas: none of them may go.
        let (ok, stdout, stderr) = cluster.cli(0, &["node", "drain", "3"]);
        assert!(
            !ok && stderr.contains("would leave 2 live nodes"),
            "{stdout}{stderr}"
        );
        read_keys_back(&client).await;
    });
}

#[test]
fn a_new_node_gets_its_share_of_replicas_and_then_nothing_moves() {
    runtime().block_on(async {
        let mut cluster = Cluster::formed(&[]).await;
        // 8 data shards and the placement shard: 27 replicas, 9 per node.
        let mut upper = FIRST_DATA_SHARD;
        for step in 1..8 {
            let at = format!("b/{step}");
            upper = split(&cluster, 0, upper, &at)
                .unwrap_or_else(|output| panic!("split at {at}: {output}"));
        }
        cluster.add_node(Some(cluster.addresses()[0]));
        let started = Instant::now();
        // A mean of 6.75: 7, 7, 7 and 6 is within 10%.
        let balanced = |nodes: &[rshard_common::api::NodeInfo], shards: &[ShardRoute]| {
            let mut held = [0usize; 4];
            for shard in shards {
                if !shard.descriptor.learners.is_empty() || shard.descriptor.replicas.len() != 3 {
                    return false;
                }
                for &voter in &shard.descriptor.replicas {
                    match held.get_mut((voter - 1) as usize) {
                        Some(count) => *count += 1,
                        None => return false,
                    }
                }
            }
            nodes.len() == 4 && shards.len() == 9 && held.iter().all(|&n| (6..=7).contains(&n))
        };
        cluster
            .wait_for(
                "replicas balanced over four nodes",
                Duration::from_secs(60),
                |nodes, shards| balanced(nodes, shards),
            )
            .await;
        eprintln!(
            "balanced {:?} after the fourth node started",
            started.elapsed()
        );
        let moves = |ops: &str| ops.lines().filter(|l| l.contains("move")).count();
        let (ok, before, stderr) = cluster.cli(0, &["admin", "ops"]);
        assert!(ok, "{stderr}");
        assert!(moves(&before) >= 6, "{before}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_, after, _) = cluster.cli(0, &["admin", "ops"]);
        assert_eq!(
            moves(&before),
            moves(&after),
            "replicas kept moving:\n{after}"
        );
        assert!(!after.contains("running"), "{after}");
    });
}

/// The operations as `rshard admin ops --format json` prints them through node `via`.
fn operations(cluster: &Cluster, via: usize) -> Vec<serde_json::Value> {
    let (ok, stdout, stderr) = cluster.cli(via, &["admin", "ops", "--format", "json"]);
    assert!(ok, "{stderr}");
    let parsed: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    parsed.as_array().cloned().unwrap_or_default()
}

#[test]
fn a_move_stuck_on_its_new_replica_shows_its_step_and_is_cancelled_and_rolled_back() {
    runtime().block_on(async {
        // The paused node must still count as live when the cancel comes (else the move
        // fails by itself first).
        let flags = [
            "--suspect-node-timeout-seconds",
            "60",
            "--dead-node-timeout-seconds",
            "120",
        ];
        let mut cluster = Cluster::formed(&flags).await;
        let (ok, stdout, stderr) = cluster.cli(0, &["admin", "replica-balance", "off"]);
        assert!(ok, "{stdout}{stderr}");
        let spare = add_fourth_node(&mut cluster).await;
        // The new replica's node stops answering (it still counts as live for a while):
        // the move waits for its snapshot.
        cluster.pause(spare, true);
        let (voters, _, leader) = data_shard(&cluster.client(cluster.addresses())).await;
        let from = *voters
            .iter()
            .find(|&&v| Some(v) != leader)
            .expect("a follower");
        let shard = FIRST_DATA_SHARD.to_string();
        let (from_arg, to_arg) = (from.to_string(), "4".to_string());
        let (ok, stdout, stderr) = cluster.cli(
            0,
            &[
                "admin", "move", "--shard", &shard, "--from", &from_arg, "--to", &to_arg,
            ],
        );
        assert!(ok || stdout.contains("running"), "{stdout}{stderr}");
        let id = stdout
            .split("operation ")
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .and_then(|id| id.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no operation id in {stdout}"));
        let move_op = operations(&cluster, 0)
            .into_iter()
            .find(|op| op["id"] == id)
            .expect("the move is listed");
        assert_eq!(move_op["state"], "running", "{move_op}");
        let step = move_op["progress"]["step"].as_str().unwrap_or_default();
        assert!(step.contains("catching up"), "{move_op}");

        let (ok, stdout, stderr) = cluster.cli(0, &["admin", "cancel", &id.to_string()]);
        assert!(ok && stdout.contains("cancelled"), "{stdout}{stderr}");
        // Rolled back: the learner goes, the voters stay.
        let mut expected = voters.clone();
        expected.sort_unstable();
        wait_for_voters(&cluster, &expected).await;
        let (ok, stdout, stderr) = cluster.cli(0, &["admin", "cancel", &id.to_string()]);
        assert!(!ok && stderr.contains("already ended"), "{stdout}{stderr}");
        cluster.pause(spare, false);
        // Back, node 4 holds nothing of the shard (a replica it may have started is
        // removed), and nothing else moves there.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (_, shards) = cluster
            .client(cluster.addresses())
            .cluster()
            .await
            .expect("a view");
        assert!(
            shards
                .iter()
                .all(|route| !route.descriptor.members().any(|m| m == 4)),
            "{shards:?}"
        );
    });
}

/// The data shards as `rshard admin shards --format json` prints them through node `via`:
/// (id, start, end, bytes as placement last heard).
fn data_shard_sizes(cluster: &Cluster, via: usize) -> Vec<(u64, String, String, Option<u64>)> {
    let (ok, stdout, stderr) = cluster.cli(via, &["admin", "shards", "--format", "json"]);
    assert!(ok, "{stderr}");
    let parsed: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    parsed
        .as_array()
        .expect("an array")
        .iter()
        .map(|shard| {
            let text = |field: &str| shard[field].as_str().expect("a string").to_string();
            (
                shard["id"].as_u64().expect("an id"),
                text("start"),
                text("end"),
                shard["bytes"].as_u64(),
            )
        })
        .filter(|shard| shard.0 != 0)
        .collect()
}

#[test]
fn a_shard_written_past_the_size_limit_splits_into_shards_under_it() {
    // The 200 MiB into one shard of a 64 MiB limit, scaled down: about 0.9 MiB
    // into a 256 KiB limit (the same three to four times the limit).
    const LIMIT_BYTES: u64 = 256 << 10;
    const VALUES: usize = 1024;
    runtime().block_on(async {
        let limit = LIMIT_BYTES.to_string();
        let cluster =
            Cluster::formed(&["--split-size-bytes", &limit, "--merge-size-bytes", "0"]).await;
        let client = cluster.client(cluster.addresses());
        let big = |i: usize| format!("big/{i:04}").into_bytes();
        let value = vec![b'v'; 900];
        for i in 0..VALUES {
            client.put(&big(i), &value).await.expect("a put");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let settled = loop {
            let shards = data_shard_sizes(&cluster, 0);
            let measured: Option<Vec<u64>> = shards.iter().map(|s| s.3).collect();
            // The data shards end where the system range (placement's shard) starts.
            let covered = cover_the_key_space(&self::shards(&cluster, 0));
            let under = measured
                .as_ref()
                .is_some_and(|sizes| sizes.iter().all(|&bytes| bytes < LIMIT_BYTES));
            let total: u64 = measured.iter().flatten().sum();
            if covered && under && total >= (VALUES * 908) as u64 {
                break shards;
            }
            assert!(
                Instant::now() < deadline,
                "the shard never split under the limit: {shards:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(settled.len() >= 4, "{settled:?}");
        for i in 0..VALUES {
            assert_eq!(
                client.get(&big(i)).await,
                Ok(Some(value.clone())),
                "key {i}"
            );
        }
        let (ok, stdout, _) = cluster.cli(0, &["admin", "ops"]);
        assert!(ok && stdout.contains("split"), "{stdout}");
    });
}

#[test]
fn a_hot_key_range_splits_at_the_key_that_halves_its_load() {
    runtime().block_on(async {
        let cluster = Cluster::formed(&[
            "--split-load-requests-per-second",
            "100",
            "--split-load-seconds",
            "3",
            "--merge-size-bytes",
            "0",
        ])
        .await;
        let client = cluster.client(cluster.addresses());
        write_keys(&client).await;
        // Reads of keys 100 to 199 only: the load halves at about key 150.
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (client, stop) = (cluster.client(cluster.addresses()), stop.clone());
            tokio::spawn(async move {
                let mut index = 100;
                while !stop.load(Ordering::Relaxed) {
                    client.get(&key(index)).await.expect("a read");
                    index = if index == 199 { 100 } else { index + 1 };
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let split_at = loop {
            let shards = data_shard_sizes(&cluster, 0);
            let inside_hot_range = shards
                .iter()
                .map(|s| s.1.clone())
                .find(|start| start.as_str() >= "key/120" && start.as_str() <= "key/180");
            if let Some(start) = inside_hot_range {
                break start;
            }
            assert!(
                Instant::now() < deadline,
                "no split inside the hot range: {shards:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        stop.store(true, Ordering::Relaxed);
        reader.await.expect("the reader ran");
        // Nothing split the cold half: no boundary below key 100.
        let shards = data_shard_sizes(&cluster, 0);
        assert!(
            shards
                .iter()
                .all(|s| s.1.is_empty() || s.1.as_str() >= "key/100"),
            "split at {split_at}: {shards:?}"
        );
        read_keys_back(&client).await;
    });
}

#[test]
fn a_merge_aligns_the_right_shards_replicas_and_completes_under_a_checked_load() {
    runtime().block_on(async {
        let mut cluster = Cluster::formed(&[]).await;
        for scheduler in ["leader-balance", "replica-balance"] {
            let (ok, stdout, stderr) = cluster.cli(0, &["admin", scheduler, "off"]);
            assert!(ok, "{stdout}{stderr}");
        }
        add_fourth_node(&mut cluster).await;
        let client = cluster.client(cluster.addresses());
        write_keys(&client).await;
        let right = split(&cluster, 0, FIRST_DATA_SHARD, "key/100").expect("a split");
        // The right shard's replicas differ from the left's: one moved to the spare node.
        let (voters, _, _) = data_shard(&client).await;
        let spare = (1..=4).find(|n| !voters.contains(n)).expect("a spare node");
        let from = *voters.iter().find(|&&v| v != 1).expect("a voter");
        let (shard, from_text, to_text) = (right.to_string(), from.to_string(), spare.to_string());
        let (ok, stdout, stderr) = cluster.cli(
            0,
            &[
                "admin", "move", "--shard", &shard, "--from", &from_text, "--to", &to_text,
                "--wait",
            ],
        );
        assert!(ok && stdout.contains(": done"), "{stdout}{stderr}");
        // The checked keys (lin/...) lie in the right shard: frozen, then merged away
        // while the clients write and read them.
        let load = CheckedLoad::start(&cluster, 3);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let first = FIRST_DATA_SHARD.to_string();
        let (ok, stdout, stderr) = cluster.cli(
            0,
            &[
                "admin",
                "merge",
                "--shard",
                &first,
                "--wait",
                "--timeout",
                "90s",
            ],
        );
        assert!(ok && stdout.contains(": done"), "{stdout}{stderr}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        load.finish(30).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let listed = shards(&cluster, 0);
            if listed.len() == 2 && cover_the_key_space(&listed) {
                break;
            }
            assert!(Instant::now() < deadline, "{listed:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        read_keys_back(&client).await;
        // The merged shard takes writes over the whole range, the retired one's included.
        let fresh = cluster.client(vec![cluster.addresses()[1]]);
        for key in ["key/050+", "key/150+"] {
            fresh.put(key.as_bytes(), b"new").await.expect("a write");
        }
        // Every node retires its replica of the right shard.
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in 1..=4u64 {
            while replicas_held(&cluster, node).await > 2 {
                assert!(
                    Instant::now() < deadline,
                    "node {node} keeps a replica of shard {right}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });
}

#[test]
fn a_merge_with_the_right_shards_leader_killed_completes_or_rolls_back_and_loses_nothing() {
    runtime().block_on(async {
        let mut cluster = Cluster::formed(&["--suspect-node-timeout-seconds", "3"]).await;
        let client = cluster.client(cluster.addresses());
        write_keys(&client).await;
        let right = split(&cluster, 0, FIRST_DATA_SHARD, "key/100").expect("a split");
        // The checked keys (lin/...) lie in the right shard.
        let load = CheckedLoad::start(&cluster, 3);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, routes) = client.cluster().await.expect("a view");
        let leader = routes
            .iter()
            .find(|route| route.descriptor.id == right)
            .and_then(|route| route.leader.as_ref())
            .map(|leader| leader.id)
            .expect("the right shard has a leader");
        let victim = index_of(&cluster, leader);
        let via = (0..3).find(|&i| i != victim).expect("another node");
        // The merge starts; the right shard's leader is killed -9 a moment later.
        let args: Vec<String> = [
            "admin",
            "merge",
            "--shard",
            &FIRST_DATA_SHARD.to_string(),
            "--host",
            &cluster.addresses()[via].to_string(),
            "--certs-dir",
            cluster.certs().to_str().expect("UTF-8"),
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        let command = std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            support::rshard(&args)
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        cluster.kill(victim);
        let (_, stdout, stderr) = command.join().expect("the command ran");
        let id: u64 = stdout
            .split("operation ")
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no operation id: {stdout}{stderr}"));
        // It ends: done, or rolled back once the dead node is not live.
        let deadline = Instant::now() + Duration::from_secs(90);
        let ended = loop {
            let (ok, listed, _) = cluster.cli(via, &["admin", "ops", "--format", "json"]);
            let found = ok
                .then(|| serde_json::from_str::<serde_json::Value>(&listed).ok())
                .flatten()
                .and_then(|all| {
                    all.as_array()?
                        .iter()
                        .find(|op| op["id"].as_u64() == Some(id))
                        .cloned()
                });
            if let Some(op) = found.filter(|op| op["state"] != "running") {
                break op;
            }
            assert!(Instant::now() < deadline, "the merge never ended");
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        eprintln!("the merge under a kill ended: {ended}");
        let merged = ended["state"] == "done";
        if !merged {
            let reason = ended["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("rolled back"), "{ended}");
        }
        cluster.restart(victim);
        load.finish(20).await;
        let data_shards = if merged { 1 } else { 2 };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed = shards(&cluster, via);
            if listed.len() == data_shards + 1 && cover_the_key_space(&listed) {
                break;
            }
            assert!(Instant::now() < deadline, "{ended} {listed:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        read_keys_back(&client).await;
        for key in ["key/050+", "key/150+"] {
            client.put(key.as_bytes(), b"new").await.expect("a write");
        }
    });
}

#[test]
fn small_cold_neighbours_merge_on_their_own_but_not_across_a_sticky_split() {
    runtime().block_on(async {
        let cluster = Cluster::formed(&[
            "--split-size-bytes",
            "4194304",
            "--merge-size-bytes",
            "1048576",
            "--merge-after-range-change-seconds",
            "2",
        ])
        .await;
        let client = cluster.client(cluster.addresses());
        write_keys(&client).await;
        // Two manual splits: one sticky for a second only, one for ever.
        let first = FIRST_DATA_SHARD.to_string();
        let (ok, stdout, stderr) = cluster.cli(
            0,
            &[
                "admin",
                "split",
                "--shard",
                &first,
                "--at",
                "key/100",
                "--sticky-for",
                "1s",
                "--wait",
            ],
        );
        assert!(ok && stdout.contains(": done"), "{stdout}{stderr}");
        split(&cluster, 0, FIRST_DATA_SHARD, "key/050").expect("a split");
        // The boundary at key/100 expires and its two small cold sides merge; the one at
        // key/050 stays. (Node 0's view can be a report behind: both boundaries must show
        // in it before one's absence counts.)
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen_both = false;
        loop {
            let starts: Vec<String> = shards(&cluster, 0).into_iter().map(|s| s.1).collect();
            let has = |key: &str| starts.iter().any(|s| s == key);
            seen_both |= has("key/050") && has("key/100");
            if seen_both && !has("key/100") {
                assert!(has("key/050"), "{starts:?}");
                break;
            }
            assert!(Instant::now() < deadline, "never merged: {starts:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let (ok, stdout, _) = cluster.cli(0, &["admin", "ops"]);
        assert!(ok && stdout.contains("merge shard"), "{stdout}");
        // Nothing else merges: the sticky boundary holds.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let listed = shards(&cluster, 0);
        assert!(listed.iter().any(|s| s.1 == "key/050"), "{listed:?}");
        assert!(cover_the_key_space(&listed), "{listed:?}");
        read_keys_back(&client).await;
    });
}

#[test]
fn coverage_check_catches_gaps_and_overlaps() {
    let shard = |id: u64, start: &str, end: &str| (id, start.to_string(), end.to_string());
    assert!(cover_the_key_space(&[shard(1, "", "m"), shard(2, "m", "")]));
    assert!(
        !cover_the_key_space(&[shard(1, "", "k"), shard(2, "m", "")]),
        "a gap"
    );
    assert!(
        !cover_the_key_space(&[shard(1, "", "p"), shard(2, "m", "")]),
        "an overlap"
    );
    assert!(
        !cover_the_key_space(&[shard(1, "a", "")]),
        "the start is missing"
    );
}
