//! `rshard cert` as a user runs it: the real binary in a temporary directory.

use std::process::Command;

fn rshard(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_rshard"))
        .args(args)
        .arg("--certs-dir")
        .arg(dir)
        .output()
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn cert_commands_make_a_cluster_list_it_and_refuse_clearly() {
    let dir = tempfile::tempdir().expect("a temp dir");
    for args in [
        &["cert", "create-ca"][..],
        &["cert", "create-node", "localhost", "127.0.0.1"],
        &["cert", "create-client", "root"],
    ] {
        let (ok, _, stderr) = rshard(args, dir.path());
        assert!(ok, "{args:?}: {stderr}");
    }
    let (ok, listing, _) = rshard(&["cert", "list"], dir.path());
    assert!(ok);
    let rows: Vec<&str> = listing.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{listing}");
    assert!(rows.iter().all(|row| row.contains(" yes ")), "{listing}");
    assert!(listing.contains("localhost,127.0.0.1"));

    let (ok, _, stderr) = rshard(&["cert", "create-ca"], dir.path());
    assert!(!ok && stderr.starts_with("error: ") && stderr.contains("--overwrite"));
    let (ok, _, stderr) = rshard(&["cert", "create-client", "Not Valid"], dir.path());
    assert!(!ok && stderr.contains("invalid client name"), "{stderr}");
}
