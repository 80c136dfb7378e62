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
