//! QUIC endpoints over the TLS configurations of [`crate::tls`]: what a node listens with,
//! what nodes and clients dial with, and who is on the other end of a connection.
//!
//! Connections send keep-alives every [`KEEP_ALIVE_INTERVAL`] and close after
//! [`IDLE_TIMEOUT`] without a packet, so a dead peer is noticed within seconds; concurrent
//! streams per connection are bounded ([`MAX_CONCURRENT_BI_STREAMS`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::certs::CertsDir;
use crate::tls::{self, Identity, TlsError, ALPN_CLIENT, ALPN_RAFT};

pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one client connection may have in flight.
pub const MAX_CONCURRENT_BI_STREAMS: u32 = 1024;
/// Unread bytes one connection may buffer over all its streams.
pub const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 32 << 20;
/// Raft and snapshot streams one peer may open at once.
pub const MAX_CONCURRENT_UNI_STREAMS: u32 = 16;

/// The common name of a node certificate (`rshard cert create-node`).
pub const NODE_COMMON_NAME: &str = "node";

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    if let Ok(timeout) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        transport.max_idle_timeout(Some(timeout));
    }
    // Unread bytes buffered per connection over all its streams (quinn's default is
    // unbounded); a stream alone keeps quinn's default window.
    transport.receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW_BYTES));
    transport.max_concurrent_bidi_streams(MAX_CONCURRENT_BI_STREAMS.into());
    transport.max_concurrent_uni_streams(MAX_CONCURRENT_UNI_STREAMS.into());
    Arc::new(transport)
}

/// How a node or client secures its connections.
#[derive(Clone, Debug)]
pub enum Security {
    /// Mutual TLS against the cluster CA of this directory (the default).
    Certs(CertsDir),
    /// `--insecure`: encrypted, but nobody is authenticated (see
    /// [`tls::insecure_server_config`]). Nodes refuse it on non-loopback addresses unless
    /// forced. Secure and insecure ends cannot talk: each side's handshake fails.
    Insecure,
}

impl Security {
    /// A node's endpoint: accepts nodes ([`ALPN_RAFT`]) and clients ([`ALPN_CLIENT`]) and
    /// dials other nodes as a node.
    pub fn node_endpoint(&self, listen: SocketAddr) -> Result<quinn::Endpoint, TlsError> {
        match self {
            Security::Certs(certs) => node_endpoint(certs, listen),
            Security::Insecure => {
                let server = tls::insecure_server_config(&[ALPN_RAFT, ALPN_CLIENT])?;
                let client = tls::insecure_client_config(ALPN_RAFT)?;
                endpoint_with(server, client, listen)
            }
        }
    }

    /// A client's endpoint, dialling as `identity`.
    pub fn client_endpoint(&self, identity: &Identity) -> Result<quinn::Endpoint, TlsError> {
        match self {
            Security::Certs(certs) => client_endpoint(certs, identity),
            Security::Insecure => dialling_endpoint(quic_client_config(
                tls::insecure_client_config(ALPN_CLIENT)?,
            )?),
        }
    }
}

/// A node's endpoint: accepts nodes ([`ALPN_RAFT`]) and clients ([`ALPN_CLIENT`]) whose
/// certificates the cluster CA signed, and dials other nodes as a node.
pub fn node_endpoint(certs: &CertsDir, listen: SocketAddr) -> Result<quinn::Endpoint, TlsError> {
    let server = tls::server_config(certs, &[ALPN_RAFT, ALPN_CLIENT])?;
    let client = tls::client_config(certs, &Identity::Node, ALPN_RAFT)?;
    endpoint_with(server, client, listen)
}

fn endpoint_with(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    listen: SocketAddr,
) -> Result<quinn::Endpoint, TlsError> {
    let crypto = QuicServerConfig::try_from((*server).clone())
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport_config());
    let mut endpoint =
        quinn::Endpoint::server(server, listen).map_err(|error| TlsError::Listen {
            address: listen,
            detail: error.to_string(),
        })?;
    endpoint.set_default_client_config(quic_client_config(client)?);
    Ok(endpoint)
}

/// What to dial with, presenting `identity`'s certificate and asking for `alpn`.
pub fn client_config(
    certs: &CertsDir,
    identity: &Identity,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    quic_client_config(tls::client_config(certs, identity, alpn)?)
}

fn quic_client_config(tls: Arc<rustls::ClientConfig>) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = QuicClientConfig::try_from((*tls).clone())
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config());
    Ok(config)
}

/// An endpoint for a client: dials only.
pub fn client_endpoint(certs: &CertsDir, identity: &Identity) -> Result<quinn::Endpoint, TlsError> {
    dialling_endpoint(client_config(certs, identity, ALPN_CLIENT)?)
}

fn dialling_endpoint(config: quinn::ClientConfig) -> Result<quinn::Endpoint, TlsError> {
    let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(|error| TlsError::Config(format!("cannot open a UDP socket: {error}")))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// True if the connection failed because one side refused the other's certificate:
/// retrying cannot help, the configuration must change.
pub fn is_handshake_refusal(error: &quinn::ConnectionError) -> bool {
    // QUIC carries a TLS alert as transport error 0x100 + the alert (RFC 9001, 4.8). The
    // certificate alerts: bad_certificate (42) to access_denied (49), and
    // certificate_required (116). Others (a protocol mismatch) are not about trust.
    let is_certificate_alert = |code: quinn::TransportErrorCode| {
        matches!(u64::from(code).checked_sub(0x100), Some(42..=49 | 116))
    };
    match error {
        quinn::ConnectionError::TransportError(error) => is_certificate_alert(error.code),
        quinn::ConnectionError::ConnectionClosed(close) => is_certificate_alert(close.error_code),
        _ => false,
    }
}

/// The name to check a node's certificate against when dialing `address`.
pub fn server_name(address: &SocketAddr) -> String {
    address.ip().to_string()
}

/// The ALPN the connection agreed on.
pub fn alpn(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The common name of the certificate the peer presented (the handshake already checked
/// that the cluster CA signed it).
pub fn peer_common_name(connection: &quinn::Connection) -> Option<String> {
    let certs = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let (_, cert) = X509Certificate::from_der(certs.first()?.as_ref()).ok()?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(name)
}

/// True if the peer presented a node certificate (rather than a client user's).
pub fn peer_is_node(connection: &quinn::Connection) -> bool {
    peer_common_name(connection).as_deref() == Some(NODE_COMMON_NAME)
}

/// After a failed dial, calls to the same address fail at once for this long instead of
/// each waiting out its own connect timeout behind a dead node.
pub const REDIAL_AFTER: Duration = Duration::from_millis(250);

/// Connections by address, dialled on first use. Each address has its own slot, so a dial
/// to a dead node holds up only the calls to that node; a failed dial (its `Error`) is
/// remembered for [`REDIAL_AFTER`]. Holds one slot per address ever dialled (the cluster's
/// nodes).
#[derive(Debug)]
pub struct ConnectionPool<Error> {
    slots: std::sync::Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Slot<Error>>>>>,
}

impl<Error> Default for ConnectionPool<Error> {
    fn default() -> Self {
        ConnectionPool {
            slots: std::sync::Mutex::default(),
        }
    }
}

#[derive(Debug)]
struct Slot<Error> {
    connection: Option<quinn::Connection>,
    /// When the last dial failed (tokio's clock, so tests can pause it), and why.
    failed: Option<(Instant, Error)>,
}

impl<Error: Clone> ConnectionPool<Error> {
    /// The open connection to `address`, or a new one from `dial`.
    pub async fn connection<Dial, Dialling>(
        &self,
        address: SocketAddr,
        dial: Dial,
    ) -> Result<quinn::Connection, Error>
    where
        Dial: FnOnce() -> Dialling,
        Dialling: std::future::Future<Output = Result<quinn::Connection, Error>>,
    {
        let slot = {
            let mut slots = match self.slots.lock() {
                Ok(slots) => slots,
                Err(poisoned) => poisoned.into_inner(),
            };
            slots
                .entry(address)
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Mutex::new(Slot {
                        connection: None,
                        failed: None,
                    }))
                })
                .clone()
        };
        let mut slot = slot.lock().await;
        if let Some(connection) = &slot.connection {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        if let Some((at, error)) = &slot.failed {
            if at.elapsed() < REDIAL_AFTER {
                return Err(error.clone());
            }
        }
        match dial().await {
            Ok(connection) => {
                slot.connection = Some(connection.clone());
                slot.failed = None;
                Ok(connection)
            }
            Err(error) => {
                slot.connection = None;
                slot.failed = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime")
    }

    #[test]
    fn a_slow_dial_holds_up_only_its_own_address_and_a_failure_is_remembered_briefly() {
        runtime().block_on(async {
            let pool: ConnectionPool<String> = ConnectionPool::default();
            let dead: SocketAddr = ([127, 0, 0, 1], 1).into();
            let other: SocketAddr = ([127, 0, 0, 1], 2).into();
            let dials = AtomicUsize::new(0);
            let slow_failure = || async {
                dials.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                Err::<quinn::Connection, _>("connecting timed out".to_string())
            };
            let started = tokio::time::Instant::now();
            let (slow, fast) = tokio::join!(
                pool.connection(dead, slow_failure),
                pool.connection(other, || async {
                    let elapsed = started.elapsed();
                    Err::<quinn::Connection, _>(format!("refused after {elapsed:?}"))
                }),
            );
            assert_eq!(slow.err().as_deref(), Some("connecting timed out"));
            assert_eq!(
                fast.err().as_deref(),
                Some("refused after 0ns"),
                "not queued behind"
            );
            // Within REDIAL_AFTER the failure is answered without dialling again.
            let again = pool.connection(dead, slow_failure).await;
            assert_eq!(again.err().as_deref(), Some("connecting timed out"));
            assert_eq!(dials.load(Ordering::Relaxed), 1);
            tokio::time::sleep(REDIAL_AFTER).await;
            let _ = pool.connection(dead, slow_failure).await;
            assert_eq!(
                dials.load(Ordering::Relaxed),
                2,
                "dialled again after the pause"
            );
        });
    }
}
