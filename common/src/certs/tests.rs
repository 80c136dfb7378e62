use super::*;

fn certs_in(dir: &tempfile::TempDir) -> CertsDir {
    CertsDir::new(dir.path(), None)
}

fn cluster(dir: &tempfile::TempDir) -> CertsDir {
    test_cluster(dir.path())
}

#[test]
fn a_cluster_gets_a_ca_a_node_and_a_client_all_signed_by_the_ca() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let certs = cluster(&dir);
    let listed = list(&certs).expect("lists");
    let summary: Vec<(CertKind, &str, Vec<String>, bool)> = listed
        .iter()
        .map(|c| {
            (
                c.kind,
                c.common_name.as_str(),
                c.hosts.clone(),
                c.signed_by_ca,
            )
        })
        .collect();
    let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    assert_eq!(
        summary,
        vec![
            (CertKind::Ca, "rshard CA", vec![], true),
            (CertKind::Client, "root", vec![], true),
            (CertKind::Node, "node", hosts, true),
        ]
    );
    let in_30_days = time::OffsetDateTime::now_utc().unix_timestamp() + 30 * 86_400;
    assert!(listed
        .iter()
        .all(|c| (c.not_after_unix - in_30_days).abs() < 3_600));
}

#[cfg(unix)]
#[test]
fn private_keys_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a temp dir");
    let certs = cluster(&dir);
    for key in [CA_KEY_FILE, NODE_KEY_FILE, "client.root.key"] {
        let mode = std::fs::metadata(certs.dir.join(key))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
}

#[test]
fn nothing_is_overwritten_unless_asked() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let certs = cluster(&dir);
    let ca_before = std::fs::read(certs.ca_cert()).expect("reads");
    assert!(matches!(
        create_ca(&certs, 30, false),
        Err(CertError::Exists(_))
    ));
    let hosts = vec!["localhost".to_string()];
    assert!(matches!(
        create_node(&certs, &hosts, 30, false),
        Err(CertError::Exists(_))
    ));
    assert_eq!(std::fs::read(certs.ca_cert()).expect("reads"), ca_before);
    create_node(&certs, &hosts, 30, true).expect("replaced when asked");
}

/// A certificate made by another cluster's CA is listed as not signed by this one; a CA key
/// that is not this CA's is refused before anything is signed.
#[test]
fn a_foreign_ca_is_told_apart_and_a_wrong_ca_key_is_refused() {
    let ours = tempfile::tempdir().expect("a temp dir");
    let theirs = tempfile::tempdir().expect("a temp dir");
    let ours = cluster(&ours);
    let theirs = cluster(&theirs);
    std::fs::copy(theirs.client_cert("root"), ours.client_cert("intruder")).expect("copies");
    let listed = list(&ours).expect("lists");
    let intruder = listed
        .iter()
        .find(|c| c.file == ours.client_cert("intruder"))
        .expect("listed");
    assert!(!intruder.signed_by_ca);
    assert!(listed
        .iter()
        .filter(|c| c.file != ours.client_cert("intruder"))
        .all(|c| c.signed_by_ca));

    let wrong_key = CertsDir::new(&ours.dir, Some(&theirs.ca_key));
    assert!(matches!(
        create_client(&wrong_key, "alice", 30, false),
        Err(CertError::CaKeyMismatch { .. })
    ));
    assert!(!ours.client_cert("alice").exists());
}

#[test]
fn bad_names_hosts_lifetimes_and_files_are_typed_errors() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let certs = cluster(&dir);
    for name in ["", "Root", "a b", "../x", &"x".repeat(64)] {
        assert!(
            matches!(
                create_client(&certs, name, 30, false),
                Err(CertError::BadClientName(_))
            ),
            "{name:?}"
        );
    }
    for host in ["", "a..b", "bad host", "-\u{e9}"] {
        assert!(
            matches!(
                create_node(&certs, &[host.to_string()], 30, true),
                Err(CertError::BadHost(_))
            ),
            "{host:?}"
        );
    }
    assert!(matches!(
        create_node(&certs, &[], 30, true),
        Err(CertError::NoHosts)
    ));
    assert!(matches!(
        create_client(&certs, "bob", 0, false),
        Err(CertError::BadLifetime)
    ));
    std::fs::write(certs.dir.join("garbage.crt"), "not a certificate").expect("writes");
    assert!(matches!(list(&certs), Err(CertError::Invalid { .. })));
    std::fs::write(&certs.ca_key, "not a key").expect("writes");
    assert!(matches!(
        create_client(&certs, "carol", 30, false),
        Err(CertError::Invalid { .. })
    ));
    let empty = tempfile::tempdir().expect("a temp dir");
    assert!(matches!(
        create_client(&certs_in(&empty), "dave", 30, false),
        Err(CertError::Io { .. })
    ));
}
