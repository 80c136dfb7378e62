use super::*;
fn cluster(dir: &tempfile::TempDir) -> CertsDir {
    crate::certs::test_cluster(dir.path())
}

/// A TLS handshake in memory. Returns the ALPN protocol the server chose (after checking
/// it saw a client certificate), or the first error, prefixed by the side that raised it.
fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> Result<Option<Vec<u8>>, String> {
    match exchange(client, server)? {
        (alpn, true) => Ok(alpn),
        (_, false) => Err("the server saw no client certificate".to_string()),
    }
}

/// A TLS handshake in memory: the ALPN protocol the server chose and whether it saw a
/// client certificate, or the first error, prefixed by the side that raised it.
fn exchange(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> Result<(Option<Vec<u8>>, bool), String> {
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("a name");
    let mut client = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
    let mut server = rustls::ServerConnection::new(server).map_err(|e| e.to_string())?;
    for _ in 0..20 {
        let mut wire = Vec::new();
        client.write_tls(&mut wire).map_err(|e| e.to_string())?;
        server
            .read_tls(&mut wire.as_slice())
            .map_err(|e| e.to_string())?;
        server
            .process_new_packets()
            .map_err(|e| format!("server: {e}"))?;
        let mut wire = Vec::new();
        server.write_tls(&mut wire).map_err(|e| e.to_string())?;
        client
            .read_tls(&mut wire.as_slice())
            .map_err(|e| e.to_string())?;
        client
            .process_new_packets()
            .map_err(|e| format!("client: {e}"))?;
        if !client.is_handshaking() && !server.is_handshaking() {
            let client_certificate = server.peer_certificates().is_some_and(|c| !c.is_empty());
            return Ok((
                server.alpn_protocol().map(<[u8]>::to_vec),
                client_certificate,
            ));
        }
    }
    Err("the handshake never finished".to_string())
}

#[test]
fn nodes_and_clients_of_one_cluster_authenticate_each_other() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let certs = cluster(&dir);
    let server = server_config(&certs, &[ALPN_RAFT, ALPN_CLIENT]).expect("server config");
    let node = client_config(&certs, &Identity::Node, ALPN_RAFT).expect("node dials");
    assert_eq!(
        handshake(node, server.clone()),
        Ok(Some(ALPN_RAFT.to_vec()))
    );
    let user =
        client_config(&certs, &Identity::Client("root".into()), ALPN_CLIENT).expect("client dials");
    assert_eq!(handshake(user, server), Ok(Some(ALPN_CLIENT.to_vec())));
}

#[test]
fn a_certificate_from_another_ca_is_refused_on_either_side() {
    let ours = tempfile::tempdir().expect("a temp dir");
    let theirs = tempfile::tempdir().expect("a temp dir");
    let ours = cluster(&ours);
    let theirs = cluster(&theirs);
    // The intruder trusts our CA (its certificate is public) but holds another CA's node
    // certificate: our server must refuse it.
    let intruder_dir = tempfile::tempdir().expect("a temp dir");
    let intruder = CertsDir::new(intruder_dir.path(), None);
    std::fs::copy(ours.ca_cert(), intruder.ca_cert()).expect("copies");
    for file in [crate::certs::NODE_CERT_FILE, crate::certs::NODE_KEY_FILE] {
        std::fs::copy(theirs.dir.join(file), intruder.dir.join(file)).expect("copies");
    }
    let our_server = server_config(&ours, &[ALPN_RAFT]).expect("server config");
    let foreign_node = client_config(&intruder, &Identity::Node, ALPN_RAFT).expect("config");
    let refused = handshake(foreign_node, our_server).expect_err("a foreign client");
    assert!(refused.starts_with("server:"), "{refused}");

    let foreign_server = server_config(&theirs, &[ALPN_RAFT]).expect("server config");
    let our_node = client_config(&ours, &Identity::Node, ALPN_RAFT).expect("config");
    let refused = handshake(our_node, foreign_server).expect_err("a foreign server");
    assert!(refused.starts_with("client:"), "{refused}");
}

#[test]
fn a_client_speaking_another_protocol_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let certs = cluster(&dir);
    let raft_only = server_config(&certs, &[ALPN_RAFT]).expect("server config");
    let user =
        client_config(&certs, &Identity::Client("root".into()), ALPN_CLIENT).expect("client dials");
    assert!(handshake(user, raft_only).is_err());
}

#[test]
fn missing_or_garbage_files_name_the_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let certs = cluster(&dir);
    let missing = client_config(&certs, &Identity::Client("nobody".into()), ALPN_CLIENT);
    assert!(
        matches!(&missing, Err(TlsError::Load { path, .. }) if path.ends_with("client.nobody.crt")),
        "{missing:?}"
    );
    std::fs::write(certs.ca_cert(), "garbage").expect("writes");
    let garbage = server_config(&certs, &[ALPN_RAFT]);
    assert!(
        matches!(&garbage, Err(TlsError::Load { path, .. }) if path.ends_with("ca.crt")),
        "{garbage:?}"
    );
}

#[test]
fn insecure_ends_talk_only_to_each_other() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let certs = cluster(&dir);
    let insecure_server = insecure_server_config(&[ALPN_RAFT, ALPN_CLIENT]).expect("config");
    let insecure_client = insecure_client_config(ALPN_CLIENT).expect("config");
    assert_eq!(
        exchange(insecure_client.clone(), insecure_server.clone()),
        Ok((Some(ALPN_CLIENT.to_vec()), false)),
        "encrypted, with no client certificate"
    );
    // A secure client trusts only the cluster CA, not a throwaway certificate.
    let secure_client =
        client_config(&certs, &Identity::Client("root".into()), ALPN_CLIENT).expect("config");
    let refused = exchange(secure_client, insecure_server).expect_err("refused");
    assert!(refused.starts_with("client:"), "{refused}");
    // A secure node demands a client certificate.
    let secure_server = server_config(&certs, &[ALPN_CLIENT]).expect("config");
    let refused = exchange(insecure_client, secure_server).expect_err("refused");
    assert!(refused.starts_with("server:"), "{refused}");
}
