//! `rshard shell` and `rshard demo` end to end, on real processes: a golden transcript,
//! the differential workload against the reference model, garbage input, exit codes, the
//! demo, and the REPL under a pseudo-terminal (tmux).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rshard_shell::render::Format;
use rshard_shell::session::Session;
use rshard_shell::store::Store;
use support::{Cluster, BINARY};

#[path = "../shell/tests/support/model.rs"]
mod model;

/// Rewrites what changes from run to run (operation and shard ids) so that a transcript
/// compares exactly.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = ["operation ", "shard "]
        .iter()
        .filter_map(|w| rest.find(w).map(|i| (i, w.len())))
        .min()
    {
        let (index, length) = at;
        out.push_str(&rest[..index + length]);
        rest = &rest[index + length..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 {
            out.push('N');
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

/// `rshard shell ARGS` against `cluster` with `stdin`: (exit code, stdout and stderr
/// interleaved as printed).
fn shell(cluster: &Cluster, args: &[&str], stdin: &str) -> (i32, String) {
    let host = cluster.addresses()[0].to_string();
    let certs = cluster.certs();
    let dir = tempfile::tempdir().expect("a temp dir");
    let output_path = dir.path().join("output");
    let output = std::fs::File::create(&output_path).expect("an output file");
    let mut child = Command::new(BINARY)
        .arg("shell")
        .args(args)
        .arg("--host")
        .arg(&host)
        .arg("--certs-dir")
        .arg(&certs)
        .env("RSHARD_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(output.try_clone().expect("a second handle"))
        .stderr(output)
        .spawn()
        .expect("the shell starts");
    {
        use std::io::Write;
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).expect("written");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitable") {
            break status;
        }
        assert!(Instant::now() < deadline, "the shell did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&output_path).expect("readable");
    (status.code().unwrap_or(-1), text)
}

fn golden(cluster: &Cluster, name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let script = dir.join(format!("{name}.sql"));
    let expected_path = dir.join(format!("{name}.out"));
    let script_path = script.to_str().expect("UTF-8");
    let (code, output) = shell(
        cluster,
        &["-f", script_path, "--echo", "--continue-on-error"],
        "",
    );
    let output = normalize(&output);
    if std::env::var_os("RSHARD_BLESS").is_some() {
        std::fs::write(&expected_path, &output).expect("blessed");
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    if output != expected {
        let diff: Vec<String> = output
            .lines()
            .zip(expected.lines().chain(std::iter::repeat("<missing>")))
            .enumerate()
            .filter(|(_, (got, want))| got != want)
            .take(5)
            .map(|(line, (got, want))| format!("line {}:\n  got:  {got}\n  want: {want}", line + 1))
            .collect();
        panic!(
            "{name}: the transcript differs from {} (RSHARD_BLESS=1 rewrites it after a deliberate change)\n{}\n--- whole output ---\n{output}",
            expected_path.display(),
            diff.join("\n")
        );
    }
    // The script has errors on purpose: --continue-on-error runs on, and says so in the code.
    assert_eq!(code, 3, "{output}");
}

/// `rshard admin shards --table T` lists exactly the shards holding T's rows: a table split
/// in three shows three shards (out of more in the cluster) that cover its span in order.
fn admin_shards_of_a_table(cluster: &Cluster) {
    let (code, output) = shell(
        cluster,
        &[
            "-e",
            "CREATE TABLE spread (k INT PRIMARY KEY); ALTER TABLE spread SPLIT AT VALUES (10), (20)",
        ],
        "",
    );
    assert_eq!(code, 0, "{output}");
    let (code, output) = shell(cluster, &["-e", "SHOW TABLES", "--format", "csv"], "");
    assert_eq!(code, 0, "{output}");
    let id: u64 = output
        .lines()
        .find_map(|line| line.strip_prefix("spread,"))
        .and_then(|rest| rest.split(',').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("spread has an id: {output}"));
    let show = |key: &[u8]| rshard_common::keytext::show(key);
    let (table_start, table_end) = rshard_shell::encoding::table_span(id);
    let at = |k: i64| {
        show(&rshard_shell::encoding::row_key(
            id,
            &[&rshard_shell::value::Value::Int(k)],
        ))
    };
    let shards_json = |args: &[&str]| -> Vec<serde_json::Value> {
        let (ok, stdout, stderr) = cluster.cli(
            0,
            &[&["admin", "shards", "--format", "json"], args].concat(),
        );
        assert!(ok, "{stderr}");
        serde_json::from_str(&stdout).expect("a JSON list")
    };
    let field = |shard: &serde_json::Value, name: &str| {
        shard[name].as_str().unwrap_or_default().to_string()
    };
    // The node's view may be a report behind the split operations that just ended.
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let listed = shards_json(&["--table", "SPREAD"]);
        let ends: Vec<String> = listed.iter().map(|shard| field(shard, "end")).collect();
        if listed.len() == 3 && ends[..2] == [at(10), at(20)] {
            break listed;
        }
        assert!(
            Instant::now() < deadline,
            "spread's shards, split at 10 and 20: {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let first_start = rshard_common::keytext::parse(&field(&listed[0], "start")).expect("a key");
    let last_end = rshard_common::keytext::parse(&field(&listed[2], "end")).expect("a key");
    assert!(first_start <= table_start, "{listed:?}");
    assert!(last_end.is_empty() || last_end >= table_end, "{listed:?}");
    assert_eq!(field(&listed[1], "start"), at(10), "{listed:?}");
    assert_eq!(field(&listed[2], "start"), at(20), "{listed:?}");
    assert!(
        shards_json(&[]).len() > listed.len(),
        "the filter left others out"
    );
    let (ok, _, stderr) = cluster.cli(0, &["admin", "shards", "--table", "nope"]);
    assert!(!ok && stderr.contains("nope"), "{stderr}");
}

/// `rshard shell --format csv` against `cluster`, statements on a pipe: (the process, its
/// stdin, the file its stdout and stderr go to).
fn piped_shell(
    cluster: &Cluster,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    tempfile::NamedTempFile,
) {
    let output_path = tempfile::NamedTempFile::new().expect("a temp file");
    let mut child = Command::new(BINARY)
        .args(["shell", "--format", "csv", "--host"])
        .arg(cluster.addresses()[0].to_string())
        .arg("--certs-dir")
        .arg(cluster.certs())
        .env("RSHARD_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(output_path.reopen().expect("a handle"))
        .stderr(output_path.reopen().expect("a handle"))
        .spawn()
        .expect("the shell starts");
    let input = child.stdin.take().expect("stdin");
    (child, input, output_path)
}

/// Waits (at most 30 s) until the file at `path` holds `wanted`.
fn wait_for_output(path: &Path, wanted: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(wanted)
    {
        assert!(Instant::now() < deadline, "{wanted:?} was not printed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `child` SIGINT and waits for it to end; it is killed if it is still running
/// after `timeout` (and then did not end with an exit code).
fn interrupt(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -INT");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waitable") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every user key and value, for "nothing changed" checks.
async fn everything(client: &rshard_common::client::Client) -> Vec<(Vec<u8>, Vec<u8>)> {
    client.scan(b"", b"", 1_000_000).await.expect("a full scan")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_statements_on_a_live_cluster() {
    let cluster = Cluster::formed(&[]).await;

    // A golden transcript: a script in, exactly this out.
    golden(&cluster, "basics");

    // Exit codes and the non-interactive inputs.
    let (code, output) = shell(
        &cluster,
        &["-e", "SELECT 1 + 1 AS two", "--format", "csv"],
        "",
    );
    assert_eq!((code, output.as_str()), (0, "two\n2\n"));
    let (code, output) = shell(
        &cluster,
        &["--format", "json"],
        "SELECT 'a' AS x;\nSELEC 2;\nSELECT 3;\n",
    );
    assert_eq!(code, 3, "{output}");
    assert!(
        output.starts_with("[{\"x\":\"a\"}]\nERROR: syntax error"),
        "{output}"
    );
    assert!(
        !output.contains('3'),
        "stopped at the first error: {output}"
    );
    let (code, output) = shell(
        &cluster,
        &["--continue-on-error", "--format", "tsv"],
        "SELEC 2;\nSELECT 3 AS n\n",
    );
    assert_eq!(code, 3, "{output}");
    assert!(
        output.ends_with("n\n3\n"),
        "went on, and ran the last statement without ';': {output}"
    );
    let (ok, _, stderr) = support::rshard(&[
        "shell",
        "-e",
        "SELECT 1",
        "--host",
        "127.0.0.1:9",
        "--insecure",
    ]);
    assert!(
        !ok && stderr.contains("cannot reach the cluster"),
        "{stderr}"
    );
    let unreachable = Command::new(BINARY)
        .args([
            "shell",
            "-e",
            "SELECT 1",
            "--host",
            "127.0.0.1:9",
            "--insecure",
        ])
        .env("RSHARD_LOG", "error")
        .output()
        .expect("runs");
    assert_eq!(unreachable.status.code(), Some(2));

    admin_shards_of_a_table(&cluster);

    // The differential workload, on tables split across shards.
    let client = cluster.client(cluster.addresses());
    for table in 1..=4u64 {
        for k in [8i64, 17] {
            let at = rshard_shell::encoding::row_key(table, &[&rshard_shell::value::Value::Int(k)]);
            rshard_shell::sql::admin::split_at(&client, &at)
                .await
                .expect("split");
        }
    }
    let session = Session::new(
        Store::Cluster(Arc::new(cluster.client(cluster.addresses()))),
        Format::Table,
    );
    // The golden script created and dropped tables: the workload's own start with an
    // empty catalog of its names.
    for name in ["t0", "t1", "t2"] {
        session
            .execute(&format!("DROP TABLE IF EXISTS {name}"))
            .await
            .expect("dropped");
    }
    let seed: u64 = std::env::var("RSHARD_SHELL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    let steps: usize = std::env::var("RSHARD_SHELL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let replay = format!(
        "RSHARD_SHELL_SEED={seed} RSHARD_SHELL_STEPS={steps} cargo test --test shell shell_statements_on_a_live_cluster"
    );
    println!("differential workload: seed {seed}, {steps} steps; replay: {replay}");
    model::run_differential(&session, seed, steps, &replay).await;

    // Garbage changes nothing.
    let before = everything(&client).await;
    // `client` routed before the splits: its scan must still cover every shard (it once
    // stopped at the end of the shard its stale route named).
    let fresh = everything(&cluster.client(cluster.addresses())).await;
    assert!(
        before == fresh,
        "a scan with stale routes saw {} items of {}",
        before.len(),
        fresh.len()
    );
    let mut rng = rshard_common::rng::SeededRng::new(seed);
    let mut inputs: Vec<String> = vec![
        format!("INSERT INTO users VALUES (100, '{}')", "x".repeat(2 << 20)),
        "DROP INDEX i".into(),
        "PUT '/s/table/users' 'x'".into(),
        "UPDATE users SET id = 'text'".into(),
        "DELETE FROM users WHERE name = 1".into(),
        "ALTER SHARD 99999 MERGE".into(),
        "ALTER SHARD 1 RELOCATE FROM 1 TO 1".into(),
        format!("SELECT {}", "1 + ".repeat(5000)),
    ];
    for _ in 0..100 {
        let bytes: Vec<u8> = (0..rng.below(48)).map(|_| rng.below(256) as u8).collect();
        inputs.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    for input in &inputs {
        if let Ok(outcome) = session.execute(input).await {
            assert!(
                matches!(outcome, rshard_shell::sql::Outcome::Rows { .. }),
                "{:?} ran: {outcome:?}",
                input.chars().take(60).collect::<String>()
            );
        }
    }
    let after = everything(&client).await;
    let changed: Vec<String> = before
        .iter()
        .filter(|item| !after.contains(item))
        .chain(after.iter().filter(|item| !before.contains(item)))
        .take(5)
        .map(|(k, v)| {
            format!(
                "{} = {}",
                rshard_common::keytext::show(k),
                rshard_common::keytext::show(v)
            )
        })
        .collect();
    assert!(changed.is_empty(), "garbage changed the data: {changed:?}");

    // Ctrl-C (SIGINT) cancels a non-interactive statement stuck on paused nodes and stops
    // the run with 130. The first statement (on stdin) shows the shell connected.
    let (mut child, mut input, output_path) = piped_shell(&cluster);
    let statement = b"SELECT COUNT(*) AS counted FROM users;\n";
    std::io::Write::write_all(&mut input, statement).expect("written");
    wait_for_output(output_path.path(), "counted\n");
    for node in 0..3 {
        cluster.pause(node, true);
    }
    std::io::Write::write_all(&mut input, statement).expect("written");
    // Long enough for the shell to be inside the statement, which cannot end while the
    // nodes are paused. Sent too early, the SIGINT would find no statement to cancel and
    // the run would not end with 130: never a false pass.
    std::thread::sleep(Duration::from_secs(1));
    let status = interrupt(&mut child, Duration::from_secs(3));
    for node in 0..3 {
        cluster.pause(node, false);
    }
    drop(input);
    let output = std::fs::read_to_string(output_path.path()).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "{output}");
    assert!(output.contains("ERROR: cancelled"), "{output}");

    // A Ctrl-C between statements (here while the shell waits for its next line) is kept:
    // the next line does not run, and the run ends with 130.
    let (mut child, mut input, output_path) = piped_shell(&cluster);
    std::io::Write::write_all(&mut input, b"SELECT 1 AS one;\n").expect("written");
    wait_for_output(output_path.path(), "one\n1\n");
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    std::io::Write::write_all(&mut input, b"SELECT 2 AS two;\n").expect("written");
    drop(input);
    // Waited for without a second signal, which could end the run by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitable") {
            break status;
        }
        assert!(Instant::now() < deadline, "the shell did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(output_path.path()).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "{output}");
    assert!(
        !output.contains("two"),
        "the statement after Ctrl-C ran: {output}"
    );
}

/// `rshard demo` with statements on stdin: it forms a cluster, loads the sample table over
/// several shards, runs them, and leaves no process or directory behind.
#[test]
fn the_demo_runs_from_nothing_to_a_query_and_cleans_up() {
    let child = Command::new(BINARY)
        .args(["demo", "--rows", "600", "--format", "csv"])
        .env("RSHARD_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the demo starts");
    let mut child = child;
    {
        use std::io::Write;
        let mut input = child.stdin.take().expect("stdin");
        input
            .write_all(
                b"SELECT COUNT(*), SUM(id) FROM accounts;\nSHOW SHARDS FROM TABLE accounts;\n",
            )
            .expect("written");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("waitable").is_none() {
        assert!(Instant::now() < deadline, "the demo did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("count,sum\n600,180300\n"), "{stdout}");
    let shards = stdout.lines().filter(|l| l.contains("/t/1/")).count();
    assert!(
        shards >= 3,
        "the sample table spans several shards: {stdout}"
    );
    // The temporary directory it named is gone, and with it every node.
    let dir = stderr
        .lines()
        .find_map(|l| l.strip_prefix("starting 3 nodes in "))
        .and_then(|l| l.strip_suffix(" ..."))
        .expect("the demo names its directory");
    assert!(!Path::new(dir).exists(), "{dir} was left behind");
    let left = Command::new("pgrep")
        .args(["-f", dir])
        .output()
        .expect("pgrep runs");
    assert!(
        left.stdout.is_empty(),
        "nodes left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// A tmux server of its own (its socket in a temporary directory) running one program in a
/// pseudo-terminal: keys in, the screen out. The server and what runs in it are killed when
/// this is dropped.
struct Terminal {
    socket: std::path::PathBuf,
    status_file: std::path::PathBuf,
}

impl Terminal {
    const SESSION: &'static str = "rshard";

    /// `program` started in a 200x60 terminal with `env` added to its environment.
    fn start(dir: &Path, program: &[&str], env: &[(&str, &str)]) -> Self {
        let present = Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            present,
            "tmux is needed to test the REPL under a pseudo-terminal (apt install tmux)"
        );
        let socket = dir.join("tmux.socket");
        let config = dir.join("tmux.conf");
        std::fs::write(&config, "set -g history-limit 10000\n").expect("a tmux config");
        let status_file = dir.join("exit-status");
        // The exit status is written by a wrapper: tmux 3.3 can mark a pane dead before it
        // has reaped its process, and then never reports the status. bash (not dash) waits
        // out a SIGINT that the program it runs handles, so Ctrl-C does not stop it.
        let mut command = vec![
            "bash".to_string(),
            "-c".to_string(),
            "\"$@\"; echo $? > \"$0\"".to_string(),
            status_file.to_str().expect("UTF-8").to_string(),
            "env".to_string(),
            "TERM=xterm".to_string(),
        ];
        command.extend(env.iter().map(|(name, value)| format!("{name}={value}")));
        command.extend(program.iter().map(|word| word.to_string()));
        let status = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args([
                "-f",
                config.to_str().expect("UTF-8"),
                "new-session",
                "-d",
                "-s",
                Self::SESSION,
                "-x",
                "200",
                "-y",
                "60",
            ])
            .args(&command)
            .status()
            .expect("tmux runs");
        assert!(status.success(), "tmux could not start {command:?}");
        Terminal {
            socket,
            status_file,
        }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Named keys (`Enter`, `Up`, `C-c`, `C-d`).
    fn key(&self, key: &str) {
        self.tmux(&["send-keys", "-t", Self::SESSION, key]);
    }

    /// Text typed as it is (sent as bytes: tmux would take a trailing `;` for its own
    /// command separator).
    fn type_text(&self, text: &str) {
        let bytes: Vec<String> = text.bytes().map(|b| format!("{b:02x}")).collect();
        let mut args = vec!["send-keys", "-t", Self::SESSION, "-H"];
        args.extend(bytes.iter().map(String::as_str));
        self.tmux(&args);
    }

    /// The whole screen and its scrollback, wrapped lines joined.
    fn screen(&self) -> String {
        self.tmux(&[
            "capture-pane",
            "-p",
            "-J",
            "-t",
            Self::SESSION,
            "-S",
            "-10000",
        ])
    }

    /// Waits until the screen after `from` (a byte offset into an earlier screen) shows
    /// `wanted`; the screen. Panics with the screen after `timeout`.
    fn wait_for(&self, from: usize, wanted: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if screen.get(from..).is_some_and(|rest| rest.contains(wanted)) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{wanted:?} did not appear within {timeout:?}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a one-row, one-column result after `from` and checks its value (the line
    /// before `(1 row)`); the screen after `from`.
    fn expect_value(&self, from: usize, wanted: &str) -> String {
        let screen = self.wait_for(from, "(1 row)", Duration::from_secs(30));
        let shown = screen[from..].to_string();
        let lines: Vec<&str> = shown.lines().map(str::trim).collect();
        let value = lines
            .iter()
            .position(|line| *line == "(1 row)")
            .and_then(|at| at.checked_sub(1))
            .map(|at| lines[at]);
        assert_eq!(value, Some(wanted), "{shown}");
        shown
    }

    /// The screen's length up to its last prompt: what a later `wait_for` looks past.
    fn mark(&self) -> usize {
        let screen = self.screen();
        screen.rfind("rshard>").unwrap_or(0)
    }

    /// The exit status of the program once it ended.
    fn exit_status(&self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            let written = std::fs::read_to_string(&self.status_file).unwrap_or_default();
            if written.ends_with('\n') {
                return written.trim().parse().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "the program did not exit:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .status();
    }
}

/// Sends SIGSTOP or SIGCONT to every node process whose command line names `dir`.
fn signal_nodes(dir: &Path, signal: &str) -> usize {
    let pattern = format!("serve --data-dir {}/n", dir.display());
    let found = Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .expect("pgrep runs");
    let pids: Vec<String> = String::from_utf8_lossy(&found.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    for pid in &pids {
        let status = Command::new("kill")
            .args([signal, pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }
    pids.len()
}

/// The REPL under a pseudo-terminal (tmux), in `rshard demo`: a statement over several
/// lines runs once it ends with `;` and is one history entry; Up recalls it; Ctrl-C drops
/// partial input; Ctrl-C cancels a statement stuck on a cluster that answers nothing,
/// promptly, and leaves the nodes running (they must not get the terminal's SIGINT);
/// Ctrl-D leaves with exit code 0.
#[test]
fn the_repl_under_a_terminal_has_history_multi_line_input_and_ctrl_c() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("demo");
    let history = dir.path().join("history");
    let data_text = data.to_str().expect("UTF-8");
    let terminal = Terminal::start(
        dir.path(),
        &[BINARY, "demo", "--rows", "300", "--keep", data_text],
        &[
            ("RSHARD_HISTORY", history.to_str().expect("UTF-8")),
            ("RSHARD_LOG", "warn"),
        ],
    );
    terminal.wait_for(0, "rshard> ", Duration::from_secs(120));

    // One statement over two lines; the first line alone runs nothing.
    let from = terminal.mark();
    terminal.type_text("SELECT COUNT(*) AS n");
    terminal.key("Enter");
    terminal.type_text("FROM accounts WHERE id <= 7;");
    terminal.key("Enter");
    terminal.expect_value(from, "7");

    // Ctrl-C drops a half-typed statement (over two lines): nothing of it runs.
    let from = terminal.mark();
    terminal.type_text("DELETE FROM accounts");
    terminal.key("Enter");
    terminal.type_text("WHERE id <= 7");
    terminal.key("C-c");
    terminal.type_text("SELECT COUNT(*) AS n FROM accounts;");
    terminal.key("Enter");
    terminal.expect_value(from, "300");

    // Up twice recalls the two-line statement as one entry.
    let from = terminal.mark();
    terminal.key("Up");
    terminal.key("Up");
    terminal.key("Enter");
    let shown = terminal.expect_value(from, "7");
    assert!(
        shown.contains("SELECT COUNT(*) AS n\nFROM accounts WHERE id <= 7;\n"),
        "{shown}"
    );

    // Ctrl-C while a statement runs: the nodes are stopped, so it cannot finish.
    assert_eq!(signal_nodes(&data, "-STOP"), 3, "the demo's three nodes");
    let from = terminal.mark();
    terminal.type_text("SELECT SUM(balance) FROM accounts;");
    terminal.key("Enter");
    terminal.wait_for(from, "FROM accounts;\n", Duration::from_secs(5));
    // Pressed once the statement has had time to start (it prints nothing before it ends,
    // and cannot end on its own this soon). Pressed too early, rustyline would drop the
    // input instead and the wait below would fail: never a false pass.
    std::thread::sleep(Duration::from_secs(1));
    let pressed = Instant::now();
    terminal.key("C-c");
    terminal.wait_for(from, "ERROR: cancelled", Duration::from_secs(3));
    let cancel_took = pressed.elapsed();
    signal_nodes(&data, "-CONT");
    println!("cancelled {cancel_took:?} after Ctrl-C");

    // The nodes are still there and the shell still works.
    let from = terminal.mark();
    terminal.type_text("SELECT COUNT(*) AS n FROM accounts;");
    terminal.key("Enter");
    terminal.expect_value(from, "300");

    terminal.key("C-d");
    assert_eq!(
        terminal.exit_status(Duration::from_secs(60)),
        0,
        "{}",
        terminal.screen()
    );

    // One entry per statement run, none for the dropped input; a multi-line statement is
    // one entry (rustyline keeps its newline escaped); recalled and run again, it is a new
    // entry.
    let entries: Vec<String> = std::fs::read_to_string(&history)
        .expect("the history file")
        .lines()
        .filter(|line| !line.starts_with("#V2"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        entries,
        [
            "SELECT COUNT(*) AS n\\nFROM accounts WHERE id <= 7;",
            "SELECT COUNT(*) AS n FROM accounts;",
            "SELECT COUNT(*) AS n\\nFROM accounts WHERE id <= 7;",
            "SELECT SUM(balance) FROM accounts;",
            "SELECT COUNT(*) AS n FROM accounts;",
        ],
        "the history file"
    );
    assert_eq!(
        signal_nodes(&data, "-CONT"),
        0,
        "the nodes stopped with the demo"
    );
}

/// Ctrl-C (SIGINT) while the demo loads its table stops the nodes and deletes the
/// directory, with exit code 130, instead of leaving both behind.
#[test]
fn the_demo_interrupted_while_loading_cleans_up() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let stderr_path = dir.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("a file");
    let mut child = Command::new(BINARY)
        .args(["demo", "--rows", "200000"])
        .env("RSHARD_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("the demo starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let demo_dir = loop {
        let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        if text.contains("creating table accounts") {
            break text
                .lines()
                .find_map(|l| l.strip_prefix("starting 3 nodes in "))
                .and_then(|l| l.strip_suffix(" ..."))
                .expect("the demo names its directory")
                .to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not start loading: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = interrupt(&mut child, Duration::from_secs(60));
    let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(text.contains("interrupted; stopping the nodes"), "{text}");
    assert!(!Path::new(&demo_dir).exists(), "{demo_dir} was left behind");
    assert_eq!(
        signal_nodes(Path::new(&demo_dir), "-CONT"),
        0,
        "nodes left running"
    );
}
