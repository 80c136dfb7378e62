//! End-to-end: clusters of real `rshard serve` processes on 127.0.0.1 (see `support`).
//!
//! - three nodes form a cluster, every shard reaches three replicas, and writes through
//!   any node read back through every node;
//! - kill -9 of the node leading the data shard: writes resume within 3 s, the node
//!   restarts and catches up, and the clients' recorded history is linearizable;
//! - a fourth node joins and gets replicas; a node restarted with an empty data directory
//!   at a registered address is refused;
//! - bad input on both protocols is refused with a clear error and the cluster keeps
//!   serving.

mod support;

use std::time::{Duration, Instant};

use rshard_common::api::{ApiRequest, ApiResponse, WriteOp, FIRST_DATA_SHARD, MAX_API_FRAME_BYTES};
use rshard_common::certs::CertsDir;
use rshard_common::{quic, tls, wire};
use support::{fully_replicated, rshard, CheckedLoad, Cluster, FORMATION_TIMEOUT};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn three_nodes_form_a_cluster_and_serve_from_every_node() {
    runtime().block_on(async {
        let cluster = Cluster::formed(&[]).await;
        cluster
            .wait_for("3 live nodes", FORMATION_TIMEOUT, |nodes, _| {
                nodes.len() == 3 && nodes.iter().all(|n| n.live)
            })
            .await;
        // The registry has each node's capacity: both replicas, and its disk.
        cluster
            .wait_for("capacity reports", FORMATION_TIMEOUT, |nodes, _| {
                nodes.iter().all(|n| {
                    n.capacity.is_some_and(|c| {
                        c.replicas == 2
                            && c.disk.is_some_and(|d| {
                                d.total_bytes > 0 && d.available_bytes <= d.total_bytes
                            })
                    })
                })
            })
            .await;
        for (index, &address) in cluster.addresses().iter().enumerate() {
            let client = cluster.client(vec![address]);
            for key in 0..20 {
                let key = format!("user/{index}/{key:02}");
                client.put(key.as_bytes(), b"v").await.expect("a put");
            }
        }
        for &address in &cluster.addresses() {
            let client = cluster.client(vec![address]);
            let items = client.scan(b"user/", b"user0", 1000).await.expect("a scan");
            assert_eq!(items.len(), 60, "every write, read back through {address}");
        }
        // A scan larger than one answer page (4 MiB) comes back whole, in order; a limit
        // stops it exactly.
        let client = cluster.client(cluster.addresses());
        let big = vec![b'x'; 100 << 10];
        for index in 0..48u8 {
            client
                .put(&[b"big/", &[index][..]].concat(), &big)
                .await
                .expect("a put");
        }
        let items = client.scan(b"big/", b"big0", 1_000).await.expect("a scan");
        let indexes: Vec<u8> = items.iter().map(|(key, _)| key[4]).collect();
        assert_eq!(
            indexes,
            (0..48).collect::<Vec<u8>>(),
            "every page, in order"
        );
        assert!(items.iter().all(|(_, value)| value == &big));
        let limited = client.scan(b"big/", b"big0", 7).await.expect("a scan");
        assert_eq!(limited.len(), 7);

        // An atomic batch: all of it, or (a condition fails) none of it.
        let client = cluster.client(cluster.addresses());
        let put = |key: &str, value: &str| WriteOp::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        };
        let cas = |key: &str, expected: &str, new: &str| WriteOp::CompareAndSwap {
            key: key.as_bytes().to_vec(),
            expected: Some(expected.as_bytes().to_vec()),
            new: Some(new.as_bytes().to_vec()),
        };
        let refused = client
            .write(vec![
                put("batch/a", "1"),
                cas("user/0/00", "not v", "x"),
                put("batch/b", "1"),
            ])
            .await
            .expect("answered");
        assert_eq!(
            refused,
            Some((1, Some(b"v".to_vec()))),
            "op 1 failed, seeing v"
        );
        assert_eq!(
            client.get(b"batch/a").await,
            Ok(None),
            "nothing of it applied"
        );
        let applied = client
            .write(vec![
                put("batch/a", "2"),
                cas("user/0/00", "v", "w"),
                put("batch/b", "2"),
            ])
            .await
            .expect("answered");
        assert_eq!(applied, None);
        for &address in &cluster.addresses() {
            let reader = cluster.client(vec![address]);
            for (key, value) in [("batch/a", "2"), ("batch/b", "2"), ("user/0/00", "w")] {
                assert_eq!(
                    reader.get(key.as_bytes()).await,
                    Ok(Some(value.as_bytes().to_vec())),
                    "{key} through {address}"
                );
            }
        }
        // The scripting CLI, as a user runs it.
        let (ok, stdout, stderr) = cluster.cli(2, &["kv", "get", "user/0/07"]);
        assert!(ok && stdout == "v\n", "{stdout} {stderr}");
        let (ok, _, stderr) = cluster.cli(2, &["kv", "get", "\\xffsystem"]);
        assert!(!ok && stderr.contains("reserved"), "{stderr}");
        let (ok, stdout, _) = cluster.cli(2, &["node", "ls"]);
        assert!(ok && stdout.lines().filter(|l| l.contains("127.0.0.1")).count() == 3);
        assert!(
            stdout.contains("DISK FREE") && stdout.contains(" GiB"),
            "{stdout}"
        );
        // The load generator writes real keys and reports what completed in its window.
        let bench = [
            "bench",
            "--clients",
            "4",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--keys",
            "50",
        ];
        let (ok, stdout, stderr) = cluster.cli(2, &bench);
        let puts: f64 = stdout
            .lines()
            .find_map(|line| line.strip_prefix("put: "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse().ok())
            .unwrap_or(0.0);
        assert!(
            ok && puts > 0.0 && stdout.contains("errors: 0"),
            "{stdout} {stderr}"
        );
        let written = client
            .scan(b"bench/", b"bench0", 1000)
            .await
            .expect("a scan");
        assert!(
            !written.is_empty() && written.len() <= 50,
            "{} bench keys",
            written.len()
        );
        let (ok, _, stderr) = cluster.cli(2, &["bench", "--threads", "0"]);
        assert!(!ok && stderr.contains("--threads"), "{stderr}");
    });
}

/// The index of the node leading the data shard.
async fn data_leader(cluster: &Cluster) -> usize {
    let (_, shards) = cluster.view(cluster.addresses()[0]).await.expect("a view");
    let leader = shards
        .iter()
        .find(|s| s.descriptor.id == FIRST_DATA_SHARD)
        .and_then(|s| s.leader.clone())
        .expect("the data shard has a leader");
    cluster
        .nodes
        .iter()
        .position(|n| n.id == leader.id)
        .expect("the leader is one of ours")
}

#[test]
fn killing_the_leaders_node_loses_no_acknowledged_write() {
    runtime().block_on(async {
        let mut cluster = Cluster::formed(&[]).await;
        let load = CheckedLoad::start(&cluster, 4);
        tokio::time::sleep(Duration::from_secs(1)).await;

        let victim = data_leader(&cluster).await;
        cluster.kill(victim);
        let killed_at = Instant::now();
        // A fresh client (no connection to the dead node) measures when writes resume.
        let probe = cluster.client(cluster.addresses());
        let mut resumed = None;
        while killed_at.elapsed() < Duration::from_secs(10) {
            if probe.put(b"probe", b"after the kill").await.is_ok() {
                resumed = Some(killed_at.elapsed());
                break;
            }
        }
        let resumed = resumed.expect("writes resumed");
        assert!(
            resumed < Duration::from_secs(3),
            "writes resumed {resumed:?} after the kill\n{}",
            cluster.logs()
        );

        cluster.restart(victim);
        let restarted = cluster.nodes[victim].address;
        tokio::time::sleep(Duration::from_secs(2)).await;
        load.finish(50).await;
        // The restarted node catches up: its replica serves once it leads.
        cluster
            .wait_for("3 replicas again", FORMATION_TIMEOUT, |nodes, shards| {
                nodes.iter().all(|n| n.live) && fully_replicated(shards, 3)
            })
            .await;
        let value = cluster.client(vec![restarted]).get(b"probe").await;
        assert_eq!(value, Ok(Some(b"after the kill".to_vec())));
    });
}

#[test]
fn a_fourth_node_gets_replicas_and_an_empty_data_dir_at_its_address_is_refused() {
    runtime().block_on(async {
        // A factor above three, so that a fourth node has replicas to take.
        let mut cluster = Cluster::formed(&["--replication-factor", "5"]).await;
        let client = cluster.client(cluster.addresses());
        client.put(b"before", b"the join").await.expect("a put");
        let fourth = cluster.add_node(Some(cluster.nodes[0].address));
        let fourth_id = cluster.nodes[fourth].id;
        assert_eq!(fourth_id, 4);
        cluster
            .wait_for(
                "4 replicas of every shard",
                FORMATION_TIMEOUT,
                |_, shards| {
                    fully_replicated(shards, 4)
                        && shards
                            .iter()
                            .all(|s| s.descriptor.replicas.contains(&fourth_id))
                },
            )
            .await;

        // The fourth node, wiped, comes back at its old address asking to join as new.
        let node = &cluster.nodes[fourth];
        let (address, data_dir, log) = (node.address, node.data_dir.clone(), node.log.clone());
        cluster.kill(fourth);
        std::fs::remove_dir_all(&data_dir).expect("wipe");
        let refused = cluster.spawn(&data_dir, &log, address, Some(cluster.nodes[0].address));
        let error = match refused {
            Err(error) => error,
            Ok((mut child, id, _)) => {
                let _killed = child.kill();
                panic!("an empty data dir at a registered address joined as node {id}");
            }
        };
        assert!(error.contains("belongs to node 4"), "{error}");
        assert_eq!(
            client.get(b"before").await,
            Ok(Some(b"the join".to_vec())),
            "the cluster serves on"
        );
    });
}

#[test]
fn bad_input_is_refused_clearly_and_the_cluster_serves_on() {
    runtime().block_on(async {
        let cluster = Cluster::start(&[], 1);
        cluster
            .wait_for("a leader", FORMATION_TIMEOUT, |_, shards| {
                fully_replicated(shards, 1)
            })
            .await;
        let address = cluster.addresses()[0];
        let certs = CertsDir::new(&cluster.certs(), None);
        let user = tls::Identity::Client("root".to_string());
        let endpoint = quic::client_endpoint(&certs, &user).expect("an endpoint");
        let connection = endpoint
            .connect(address, "127.0.0.1")
            .expect("dials")
            .await
            .expect("connects");

        // Garbage, an unknown request kind, an oversized length: each answered or stopped,
        // each on its own stream.
        let unknown = rmp_serde::to_vec(&("Frobnicate", 1)).expect("encodes");
        let unknown = [&(unknown.len() as u32).to_be_bytes()[..], &unknown].concat();
        let oversized = ((MAX_API_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec();
        for bytes in [b"\x00\x00\x00\x05garba".to_vec(), unknown, oversized] {
            let (mut send, mut receive) = connection.open_bi().await.expect("a stream");
            send.write_all(&bytes).await.expect("written");
            let _finished = send.finish();
            let answer = wire::read_frame::<ApiResponse>(&mut receive, MAX_API_FRAME_BYTES).await;
            match answer {
                Ok(Some(ApiResponse::Error(error))) => {
                    assert!(error.to_string().contains("malformed"), "{error}")
                }
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        // Requests announced at the largest size whose bodies never come, more than the
        // node's request memory holds: one connection holds at most 24 MiB of it and its
        // waits end with the request timeout, so another client is served meanwhile
        // (without these bounds it waited forever).
        let mut announced = Vec::new();
        for _ in 0..20 {
            let (mut send, receive) = connection.open_bi().await.expect("a stream");
            let prefix = (MAX_API_FRAME_BYTES as u32).to_be_bytes();
            send.write_all(&prefix).await.expect("written");
            announced.push((send, receive));
        }
        let started = Instant::now();
        let other = cluster.client(vec![address]);
        assert_eq!(other.get(b"anything").await, Ok(None));
        assert!(started.elapsed() < Duration::from_secs(9), "{:?}", started.elapsed());
        // Those that could not reserve in time are told so (nothing was written), before
        // their streams are refused.
        let mut busy = 0;
        for (_, receive) in &mut announced {
            let answer = tokio::time::timeout(
                Duration::from_secs(15),
                wire::read_frame::<ApiResponse>(receive, MAX_API_FRAME_BYTES),
            )
            .await;
            if let Ok(Ok(Some(ApiResponse::Error(error)))) = answer {
                assert!(error.wrote_nothing(), "{error}");
                busy += usize::from(error.to_string().contains("busy"));
            }
        }
        assert!(busy > 0, "no request was refused as busy");
        drop(announced);

        // Node-only requests from a client certificate.
        let join = ApiRequest::Join {
            address: "127.0.0.1:1".to_string(),
            token: "t".to_string(),
        };
        let (mut send, mut receive) = connection.open_bi().await.expect("a stream");
        let frame = wire::encode_frame(&join, MAX_API_FRAME_BYTES).expect("encodes");
        wire::write_frame(&mut send, &frame).await.expect("written");
        let _finished = send.finish();
        let answer = wire::read_frame::<ApiResponse>(&mut receive, MAX_API_FRAME_BYTES).await;
        assert!(
            matches!(&answer, Ok(Some(ApiResponse::Error(e))) if e.to_string().contains("not permitted")),
            "{answer:?}"
        );

        // A client certificate on the node protocol: the connection is closed.
        let as_node = quic::client_config(&certs, &user, tls::ALPN_RAFT).expect("a config");
        let raft = endpoint
            .connect_with(as_node, address, "127.0.0.1")
            .expect("dials")
            .await
            .expect("the handshake passes: the CA signed it");
        let closed = raft.closed().await;
        assert!(closed.to_string().contains("node certificate required"), "{closed}");

        // Another CA's client: refused in the handshake.
        let foreign = tempfile::tempdir().expect("a temp dir");
        support::make_certs(foreign.path());
        let foreign = CertsDir::new(foreign.path(), None);
        let intruder = quic::client_endpoint(&foreign, &user).expect("an endpoint");
        let attempt = intruder.connect(address, "127.0.0.1").expect("dials").await;
        assert!(attempt.is_err(), "a foreign CA's client connected");

        // Garbage on a node stream, with a node's certificate: that stream ends.
        let node_endpoint =
            quic::node_endpoint(&certs, ([127, 0, 0, 1], 0).into()).expect("an endpoint");
        let peer = node_endpoint
            .connect(address, "127.0.0.1")
            .expect("dials")
            .await
            .expect("connects");
        let mut stream = peer.open_uni().await.expect("a stream");
        stream.write_all(b"\x00\x00\x00\x03abc").await.expect("written");
        let stopped = stream.stopped().await;
        assert!(matches!(stopped, Ok(Some(_))), "{stopped:?}");

        let client = cluster.client(vec![address]);
        client.put(b"still", b"serving").await.expect("the cluster serves on");
        assert_eq!(client.get(b"still").await, Ok(Some(b"serving".to_vec())));
    });
}

/// GET `path` on `address`: (status code, body).
fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connects");
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("written");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn sigterm_hands_leadership_away_and_exits_and_the_status_listener_answers() {
    runtime().block_on(async {
        let mut cluster = Cluster::formed(&["--http-listen", "127.0.0.1:0"]).await;
        let index = data_leader(&cluster).await;
        let http = cluster.nodes[index].http.expect("an HTTP address");
        assert_eq!(http_get(http, "/livez").0, 200);
        let deadline = Instant::now() + FORMATION_TIMEOUT;
        while http_get(http, "/readyz").0 != 200 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(http_get(http, "/readyz"), (200, "ready\n".to_string()));
        let (status, metrics) = http_get(http, "/metrics");
        assert_eq!(status, 200);
        assert!(metrics.contains("rshard_leaders ") && metrics.contains("rshard_replicas 2"));
        assert_eq!(http_get(http, "/nothing").0, 404);

        let client = cluster.client(cluster.addresses());
        client.put(b"before", b"sigterm").await.expect("a put");
        assert!(
            cluster.terminate(index, Duration::from_secs(15)),
            "the node did not exit cleanly within its deadline\n{}",
            cluster.logs()
        );
        let log = std::fs::read_to_string(&cluster.nodes[index].log).unwrap_or_default();
        assert!(
            log.contains("draining")
                && log.contains("node stopped stopped=true still_leading=0 unanswered=0"),
            "{log}"
        );
        // Leadership moved before it left: the survivors serve at once.
        let survivors = cluster.client(cluster.addresses());
        let started = Instant::now();
        survivors.put(b"after", b"sigterm").await.expect("a put");
        assert_eq!(
            survivors.get(b"before").await,
            Ok(Some(b"sigterm".to_vec()))
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    });
}

#[test]
fn insecure_nodes_serve_on_loopback_refuse_reachable_addresses_and_never_mix_with_certificates() {
    let cluster = Cluster::start(&["--insecure"], 2);
    let host = cluster.addresses()[1].to_string();
    let insecure = ["--insecure", "--host", &host];
    let (ok, _, stderr) = rshard(&[&["kv", "put", "greeting", "hello"][..], &insecure].concat());
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = rshard(&[&["kv", "get", "greeting"][..], &insecure].concat());
    assert!(ok && stdout == "hello\n", "{stdout} {stderr}");
    assert!(
        cluster.logs().contains("INSECURE MODE"),
        "insecure mode is announced"
    );

    // A client with certificates does not trust an insecure node, and vice versa.
    let certs = cluster.certs();
    let certs = certs.to_str().expect("UTF-8");
    let secure = ["--host", &host, "--certs-dir", certs];
    let (ok, _, stderr) = rshard(&[&["kv", "get", "greeting"][..], &secure].concat());
    assert!(
        !ok && stderr.contains("no trusted connection"),
        "a client with certificates and an insecure node: {stderr}"
    );

    // An address other machines can reach is refused, with the way out in the message.
    let data_dir = cluster.dir.path().join("exposed");
    let log = cluster.dir.path().join("exposed.log");
    let refused = cluster.spawn(&data_dir, &log, ([0, 0, 0, 0], 0).into(), None);
    let error = refused.expect_err("refused");
    assert!(
        error.contains("--insecure refuses") && error.contains("--allow-insecure-remote"),
        "{error}"
    );
}

#[test]
fn a_secure_cluster_refuses_an_insecure_client() {
    let cluster = Cluster::start(&[], 1);
    let host = cluster.addresses()[0].to_string();
    let (ok, _, stderr) = rshard(&["kv", "get", "k", "--insecure", "--host", &host]);
    assert!(
        !ok && stderr.contains("no trusted connection"),
        "an insecure client and a secure node: {stderr}"
    );
}

#[test]
fn a_node_without_placement_quorum_is_not_ready() {
    runtime().block_on(async {
        let mut cluster = Cluster::formed(&["--http-listen", "127.0.0.1:0"]).await;
        for index in 0..3 {
            cluster.kill(index);
        }
        // Alone, the node cannot reach a placement leader (no quorum), so it does not serve.
        cluster.restart(0);
        let http = cluster.nodes[0].http.expect("an HTTP address");
        assert_eq!(http_get(http, "/livez").0, 200, "alive all the same");
        let alone_until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < alone_until {
            assert_eq!(
                http_get(http, "/readyz"),
                (503, "not ready\n".to_string()),
                "ready without a placement quorum"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cluster.restart(1);
        let deadline = Instant::now() + FORMATION_TIMEOUT;
        while http_get(http, "/readyz").0 != 200 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            http_get(http, "/readyz"),
            (200, "ready\n".to_string()),
            "a quorum is back\n{}",
            cluster.logs()
        );
    });
}
