//! `rshard demo`: a 3-node cluster on loopback in a fresh directory (with its own
//! certificates), a sample table spread over several shards, and a shell on it.
//!
//! The nodes are child processes started with `--exit-with-stdin`: they stop gracefully
//! when the demo exits, and also if it is killed. The directory is deleted on exit unless
//! `--keep DIR` names it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rshard_common::certs::{self, CertsDir};
use rshard_common::client::{Client, ClientOptions};
use rshard_common::quic::Security;
use rshard_shell::render::Format;
use rshard_shell::runner::EXIT_INTERRUPTED;
use rshard_shell::session::Session;
use rshard_shell::store::Store;
use tokio::signal::unix::{signal, SignalKind};

use crate::kv::ClientArgs;
use crate::shell::{run_session, ShellArgs};

const NODES: usize = 3;
const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);
const FORMATION_TIMEOUT: Duration = Duration::from_secs(60);
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Rows per INSERT while loading the sample table.
const LOAD_BATCH_ROWS: u64 = 500;
const CITIES: [&str; 8] = [
    "Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Austin", "Cairo", "Perth",
];

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the cluster's data, certificates and logs in DIR (new or empty) instead of a
    /// temporary directory deleted on exit.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Rows in the sample table.
    #[arg(long, default_value_t = 3000)]
    pub rows: u64,
    /// Output format of the shell: table, csv, tsv or json.
    #[arg(long, default_value = "table")]
    pub format: Format,
}

/// The demo's node processes; stopped (gracefully, then killed) when dropped.
struct Nodes {
    children: Vec<Child>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        // Closing stdin asks each node to shut down gracefully.
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        let until = Instant::now() + NODE_STOP_TIMEOUT;
        for child in &mut self.children {
            while Instant::now() < until && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn start_node(
    dir: &Path,
    index: usize,
    join: Option<SocketAddr>,
) -> anyhow::Result<(Child, SocketAddr)> {
    let log_path = dir.join(format!("n{index}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut command = Command::new(std::env::current_exe().context("cannot find rshard itself")?);
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join(format!("n{index}")))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--certs-dir")
        .arg(dir.join("certs"))
        .arg("--exit-with-stdin")
        // The nodes stop together: there is nobody to hand leadership to, so the drain
        // that would try for the default 10 s is cut short.
        .args(["--shutdown-timeout-seconds", "1"])
        .env("RSHARD_LOG", "info,fjall=warn,lsm_tree=warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log);
    // Its own process group: Ctrl-C at the terminal cancels the shell's statement and
    // must not reach (and stop) the nodes, which share the demo's terminal.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    if let Some(join) = join {
        command.arg("--join").arg(join.to_string());
    }
    let mut child = command.spawn().context("cannot start a node")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (lines, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    // "rshard node N listening on ADDR[ (http ...)]"
    let until = Instant::now() + NODE_START_TIMEOUT;
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "node {index} exited with {status}; see {}",
                log_path.display()
            );
        }
        if let Ok(line) = receive.recv_timeout(Duration::from_millis(100)) {
            if let Some(address) = line.split_whitespace().nth(5) {
                if let Ok(address) = address.parse() {
                    return Ok((child, address));
                }
            }
        }
    }
    let _ = child.kill();
    bail!(
        "node {index} did not start listening; see {}",
        log_path.display()
    )
}

fn sample_rows(first: u64, last: u64) -> String {
    let rows: Vec<String> = (first..=last)
        .map(|id| {
            let city = CITIES[(id % CITIES.len() as u64) as usize];
            let balance = (id * 7919 % 100_000) as f64 / 100.0;
            let active = id % 5 != 0;
            format!("({id}, 'user{id:05}', '{city}', {balance:.2}, {active})")
        })
        .collect();
    format!(
        "INSERT INTO accounts (id, owner, city, balance, active) VALUES {}",
        rows.join(", ")
    )
}

pub fn run(args: DemoArgs) -> anyhow::Result<u8> {
    let runtime = crate::runtime()?;
    // The client's endpoint needs the runtime's context.
    let _context = runtime.enter();
    // Ctrl-C while the cluster starts and loads: noticed at the next step, which then
    // stops the nodes and deletes the directory as a normal exit does (the default action
    // would end the process at once and leave the directory, certificates and all).
    let interrupted = Arc::new(AtomicBool::new(false));
    let watcher = runtime.spawn({
        let interrupted = Arc::clone(&interrupted);
        async move {
            let Ok(mut interrupts) = signal(SignalKind::interrupt()) else {
                return;
            };
            while interrupts.recv().await.is_some() {
                interrupted.store(true, Ordering::SeqCst);
            }
        }
    });
    let stop_if_interrupted = || {
        if interrupted.load(Ordering::SeqCst) {
            eprintln!("interrupted; stopping the nodes ...");
            true
        } else {
            false
        }
    };
    let (temporary, dir) = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            if std::fs::read_dir(dir)?.next().is_some() {
                bail!(
                    "{} is not empty: --keep needs a new or empty directory",
                    dir.display()
                );
            }
            (None, dir.clone())
        }
        None => {
            let temporary = tempfile::Builder::new().prefix("rshard-demo-").tempdir()?;
            let dir = temporary.path().to_path_buf();
            (Some(temporary), dir)
        }
    };
    let place = CertsDir::new(&dir.join("certs"), None);
    certs::create_ca(&place, certs::DEFAULT_CA_LIFETIME_DAYS, false)?;
    certs::create_node(
        &place,
        &["127.0.0.1".to_string()],
        certs::DEFAULT_CERT_LIFETIME_DAYS,
        false,
    )?;
    certs::create_client(&place, "root", certs::DEFAULT_CERT_LIFETIME_DAYS, false)?;

    eprintln!("starting {NODES} nodes in {} ...", dir.display());
    let mut nodes = Nodes {
        children: Vec::new(),
    };
    let mut addresses = Vec::new();
    for index in 1..=NODES {
        let (child, address) = start_node(&dir, index, addresses.first().copied())?;
        nodes.children.push(child);
        addresses.push(address);
        if stop_if_interrupted() {
            return Ok(EXIT_INTERRUPTED);
        }
    }
    let client = Client::new(
        &Security::Certs(CertsDir::new(&dir.join("certs"), None)),
        "root",
        addresses.clone(),
        ClientOptions::default(),
    )?;
    eprintln!("waiting for every shard to have {NODES} replicas ...");
    let until = Instant::now() + FORMATION_TIMEOUT;
    loop {
        let formed = runtime.block_on(client.cluster()).is_ok_and(|(_, shards)| {
            !shards.is_empty()
                && shards
                    .iter()
                    .all(|s| s.descriptor.replicas.len() == NODES && s.leader.is_some())
        });
        if formed {
            break;
        }
        if stop_if_interrupted() {
            return Ok(EXIT_INTERRUPTED);
        }
        if Instant::now() > until {
            bail!(
                "the cluster did not form within {} s; see the logs in {}",
                FORMATION_TIMEOUT.as_secs(),
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut session = Session::new(Store::Cluster(Arc::new(client)), args.format);
    eprintln!("creating table accounts with {} rows ...", args.rows);
    let setup = [
        "CREATE TABLE accounts (id INT PRIMARY KEY, owner TEXT NOT NULL, city TEXT, \
         balance FLOAT DEFAULT 0, active BOOL)"
            .to_string(),
        format!(
            "ALTER TABLE accounts SPLIT AT VALUES ({}), ({})",
            args.rows / 3 + 1,
            2 * args.rows / 3 + 1
        ),
    ];
    for statement in setup {
        if let Err(error) = runtime.block_on(session.execute(&statement)) {
            bail!("{statement}: {error}");
        }
    }
    let mut first = 1;
    while first <= args.rows {
        if stop_if_interrupted() {
            return Ok(EXIT_INTERRUPTED);
        }
        let last = (first + LOAD_BATCH_ROWS - 1).min(args.rows);
        let statement = sample_rows(first, last);
        if let Err(error) = runtime.block_on(session.execute(&statement)) {
            bail!("loading rows {first}..{last}: {error}");
        }
        first = last + 1;
    }
    let hosts: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    let kept = if temporary.is_some() {
        "deleted when you quit".to_string()
    } else {
        format!("kept in {}", dir.display())
    };
    let banner = format!(
        "\nrshard demo: {NODES} nodes on {hosts}; data {kept}.\n\
         Connect from another terminal:\n  rshard shell --host {hosts} --certs-dir {certs}\n\n\
         Try:\n  SELECT * FROM accounts WHERE id BETWEEN 10 AND 14;\n  \
         SELECT city, balance FROM accounts WHERE active AND balance > 990 ORDER BY balance DESC LIMIT 5;\n  \
         SELECT COUNT(*), AVG(balance) FROM accounts;\n  SHOW SHARDS FROM TABLE accounts;\n  \
         \\? for help, \\q to quit.\n\n",
        hosts = hosts.join(","),
        certs = dir.join("certs").display(),
    );
    let shell = ShellArgs {
        client: ClientArgs {
            host: addresses,
            certs_dir: dir.join("certs"),
            user: "root".to_string(),
            insecure: false,
        },
        format: args.format,
        execute: Vec::new(),
        file: None,
        continue_on_error: true,
        echo: false,
    };
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("{banner}");
    }
    if stop_if_interrupted() {
        return Ok(EXIT_INTERRUPTED);
    }
    // The shell handles Ctrl-C itself from here on.
    watcher.abort();
    let code = run_session(&mut session, &runtime, &shell, &banner);
    eprintln!("stopping the nodes ...");
    drop(nodes);
    drop(temporary);
    Ok(code)
}
