//! A cluster of real `rshard serve` processes for end-to-end tests: certificates and data
//! directories in one temporary directory, nodes on 127.0.0.1 with ports the system picks,
//! every process killed when the cluster is dropped. Waits are polls with a deadline, never
//! fixed sleeps; a node's log is printed when a wait fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rshard_common::api::{NodeInfo, ShardRoute};
use rshard_common::certs::CertsDir;
use rshard_common::client::{Client, ClientOptions};
use rshard_common::quic;

pub const BINARY: &str = env!("CARGO_BIN_EXE_rshard");
/// How long a new cluster may take to give every shard its replicas.
pub const FORMATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to print that it listens.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProcess>,
    /// Extra flags every node starts with.
    pub flags: Vec<String>,
}

pub struct NodeProcess {
    pub child: Option<Child>,
    pub id: u64,
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The HTTP status address, if the node was started with `--http-listen`.
    pub http: Option<SocketAddr>,
}

/// Runs `rshard` with `args` to completion: (success, stdout, stderr).
pub fn rshard(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BINARY)
        .args(args)
        .output()
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Makes a CA, a node certificate for 127.0.0.1 and client `root` in `dir`.
pub fn make_certs(dir: &Path) {
    let dir = dir.to_str().expect("a UTF-8 path");
    for args in [
        &["cert", "create-ca", "--certs-dir", dir][..],
        &["cert", "create-node", "127.0.0.1", "--certs-dir", dir],
        &["cert", "create-client", "root", "--certs-dir", dir],
    ] {
        let (ok, _, stderr) = rshard(args);
        assert!(ok, "{args:?}: {stderr}");
    }
}

impl Cluster {
    /// Certificates, and no node yet.
    pub fn new(flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        make_certs(&dir.path().join("certs"));
        Cluster {
            dir,
            nodes: Vec::new(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        }
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Three nodes started with `flags`, once every shard has three replicas.
    pub async fn formed(flags: &[&str]) -> Self {
        let cluster = Cluster::start(flags, 3);
        cluster
            .wait_for(
                "3 replicas of every shard",
                FORMATION_TIMEOUT,
                |_, shards| fully_replicated(shards, 3),
            )
            .await;
        cluster
    }

    /// `rshard ARGS` run as a user runs it against node `node`, with the cluster's
    /// certificates: (success, stdout, stderr).
    pub fn cli(&self, node: usize, args: &[&str]) -> (bool, String, String) {
        let host = self.addresses()[node].to_string();
        let certs = self.certs();
        let certs = certs.to_str().expect("a UTF-8 temporary path");
        rshard(&[args, &["--host", &host, "--certs-dir", certs][..]].concat())
    }

    /// Starts the first node (bootstrap) and `more` nodes joining it.
    pub fn start(flags: &[&str], nodes: usize) -> Self {
        let mut cluster = Cluster::new(flags);
        cluster.add_node(None);
        for _ in 1..nodes {
            let seed = cluster.nodes[0].address;
            cluster.add_node(Some(seed));
        }
        cluster
    }

    /// Starts a new node (joining `join` if given) and returns its index.
    pub fn add_node(&mut self, join: Option<SocketAddr>) -> usize {
        let index = self.nodes.len();
        let data_dir = self.dir.path().join(format!("node{index}"));
        let log = self.dir.path().join(format!("node{index}.log"));
        let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
        let (child, id, address, http) = self
            .spawn_with_http(&data_dir, &log, listen, join)
            .unwrap_or_else(|error| panic!("node {index} did not start: {error}"));
        self.nodes.push(NodeProcess {
            child: Some(child),
            id,
            address,
            data_dir,
            log,
            http,
        });
        index
    }

    /// Starts a process; returns it, its node id and address once it listens, or what it
    /// printed if it exited or never said it listens.
    pub fn spawn(
        &self,
        data_dir: &Path,
        log: &Path,
        listen: SocketAddr,
        join: Option<SocketAddr>,
    ) -> Result<(Child, u64, SocketAddr), String> {
        self.spawn_with_http(data_dir, log, listen, join)
            .map(|(child, id, address, _)| (child, id, address))
    }

    fn spawn_with_http(
        &self,
        data_dir: &Path,
        log: &Path,
        listen: SocketAddr,
        join: Option<SocketAddr>,
    ) -> Result<(Child, u64, SocketAddr, Option<SocketAddr>), String> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| e.to_string())?;
        let mut command = Command::new(BINARY);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--certs-dir")
            .arg(self.certs())
            .args(&self.flags)
            .env("RSHARD_LOG", "info,fjall=warn,lsm_tree=warn")
            .stdout(Stdio::piped())
            .stderr(log_file);
        if let Some(join) = join {
            command.arg("--join").arg(join.to_string());
        }
        let mut child = command.spawn().map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (lines, receive) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                return Err(format!("exited with {status}: {log}"));
            }
            let Ok(line) = receive.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            // "rshard node N listening on ADDR[ (http HTTP)]"
            let words: Vec<&str> = line.split_whitespace().collect();
            if let (Some(id), Some(address)) = (words.get(2), words.get(5)) {
                let id = id.parse().map_err(|_| format!("bad line {line:?}"))?;
                let address = address.parse().map_err(|_| format!("bad line {line:?}"))?;
                let http = words
                    .get(7)
                    .and_then(|http| http.trim_end_matches(')').parse().ok());
                return Ok((child, id, address, http));
            }
        }
        let _killed = child.kill();
        Err("never said it listens".to_string())
    }

    /// SIGTERM to node `index`; waits at most `timeout` for it to exit. Returns whether
    /// it exited successfully.
    pub fn terminate(&mut self, index: usize, timeout: Duration) -> bool {
        let Some(mut child) = self.nodes[index].child.take() else {
            return false;
        };
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _killed = child.kill();
        let _reaped = child.wait();
        false
    }

    /// kill -9 of node `index`.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
    }

    /// Pauses (`SIGSTOP`) or resumes (`SIGCONT`) node `index`'s process: a node that is up
    /// but answers nothing while paused.
    pub fn pause(&self, index: usize, paused: bool) {
        if let Some(child) = &self.nodes[index].child {
            let signal = if paused { "-STOP" } else { "-CONT" };
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill {signal} failed");
        }
    }

    /// Restarts node `index` from its data directory, at its old address.
    pub fn restart(&mut self, index: usize) {
        self.kill(index);
        let node = &self.nodes[index];
        let (child, id, address, http) = self
            .spawn_with_http(&node.data_dir, &node.log, node.address, None)
            .unwrap_or_else(|error| panic!("node {index} did not restart: {error}"));
        assert_eq!(
            (id, address),
            (node.id, node.address),
            "same identity and address"
        );
        self.nodes[index].child = Some(child);
        self.nodes[index].http = http;
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.address)
            .collect()
    }

    pub fn client(&self, seeds: Vec<SocketAddr>) -> Client {
        let certs = CertsDir::new(&self.certs(), None);
        Client::new(
            &quic::Security::Certs(certs),
            "root",
            seeds,
            ClientOptions::default(),
        )
        .expect("a client")
    }

    /// The cluster view of the node at `seed`.
    pub async fn view(&self, seed: SocketAddr) -> Option<(Vec<NodeInfo>, Vec<ShardRoute>)> {
        self.client(vec![seed]).cluster().await.ok()
    }

    /// Polls until `done` holds for the view of some running node, or panics after
    /// `timeout` with the logs.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[NodeInfo], &[ShardRoute]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            for seed in self.addresses() {
                if let Some((nodes, shards)) = self.view(seed).await {
                    if done(&nodes, &shards) {
                        return;
                    }
                    last = Some((nodes, shards));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "timed out waiting for {what}; last view {last:?}\n{}",
            self.logs()
        );
    }

    /// The last lines of every node's log.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            text.push_str(&format!("--- node index {index} (id {}):\n", node.id));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}

/// True if every shard has `replicas` voters, no learners, and a leader.
pub fn fully_replicated(shards: &[ShardRoute], replicas: usize) -> bool {
    shards.len() >= 2
        && shards.iter().all(|s| {
            s.descriptor.replicas.len() == replicas
                && s.descriptor.learners.is_empty()
                && s.leader.is_some()
        })
}

/// Clients running puts, reads and compare-and-swaps on a few keys against a cluster,
/// recording a history for the linearizability checker, until [`CheckedLoad::finish`].
pub struct CheckedLoad {
    history: std::sync::Arc<LoadHistory>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

struct LoadHistory {
    start: Instant,
    events: std::sync::Mutex<Vec<rshard_common::linearizability::Event>>,
}

impl LoadHistory {
    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

impl CheckedLoad {
    /// Starts `clients` clients, each with every node of `cluster` as a seed.
    pub fn start(cluster: &Cluster, clients: u64) -> Self {
        use rshard_common::client::ClientError;
        use rshard_common::linearizability::{Event, Operation, Outcome};
        let history = std::sync::Arc::new(LoadHistory {
            start: Instant::now(),
            events: std::sync::Mutex::new(Vec::new()),
        });
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut handles = Vec::new();
        for client_id in 0..clients {
            let client = cluster.client(cluster.addresses());
            let (history, stop) = (history.clone(), stop.clone());
            handles.push(tokio::spawn(async move {
                let mut counter = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    counter += 1;
                    let key = format!("lin/{}", counter % 3).into_bytes();
                    let invoked_at = history.now();
                    let (operation, outcome) = match counter % 3 {
                        0 => {
                            let result = client.get(&key).await;
                            (Operation::Get, result.map(Outcome::Read))
                        }
                        1 => {
                            let value = format!("{client_id}-{counter}").into_bytes();
                            let result = client.put(&key, &value).await;
                            (Operation::Put(value), result.map(|()| Outcome::Done))
                        }
                        _ => {
                            let new = format!("cas-{client_id}-{counter}").into_bytes();
                            let result = client.compare_and_swap(&key, None, Some(&new)).await;
                            let operation = Operation::CompareAndSwap {
                                expected: None,
                                new: Some(new),
                            };
                            (
                                operation,
                                result.map(|failed| Outcome::Swapped(failed.is_none())),
                            )
                        }
                    };
                    let outcome = match outcome {
                        Ok(outcome) => outcome,
                        // Refused or given up: nothing was written; leave it out.
                        Err(ClientError::Refused(_) | ClientError::Unavailable { .. }) => continue,
                        Err(_) => Outcome::Unknown,
                    };
                    let event = Event {
                        client: client_id,
                        key,
                        operation,
                        outcome,
                        invoked_at,
                        completed_at: history.now(),
                    };
                    if let Ok(mut events) = history.events.lock() {
                        events.push(event);
                    }
                }
            }));
        }
        CheckedLoad {
            history,
            stop,
            clients: handles,
        }
    }

    /// Stops the clients and checks their history: more than `min_done` operations with a
    /// known outcome, and linearizable.
    pub async fn finish(self, min_done: usize) {
        use rshard_common::linearizability::{self, Outcome, Verdict};
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for client in self.clients {
            client.await.expect("a client");
        }
        let events = self
            .history
            .events
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        let done = events
            .iter()
            .filter(|e| e.outcome != Outcome::Unknown)
            .count();
        assert!(done > min_done, "only {done} operations completed");
        match linearizability::check(&events, 1_000_000) {
            Verdict::Linearizable => {}
            Verdict::Violation {
                key,
                events: involved,
            } => panic!(
                "not linearizable on key {:?}: {} of {} events involved, first {:?}",
                String::from_utf8_lossy(&key),
                involved.len(),
                events.len(),
                involved.first().map(|&i| &events[i])
            ),
            other => panic!("no verdict: {other:?}"),
        }
    }
}
