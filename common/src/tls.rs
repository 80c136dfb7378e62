//! TLS settings for nodes and clients: TLS 1.3 only, ring as the one crypto provider, and
//! mutual authentication against the cluster CA (`ca.crt`) and nothing else. A peer whose
//! certificate another CA signed fails the handshake on both sides. The QUIC transport uses
//! these configurations as they are.
//!
//! A node presents `node.crt` both when it accepts and when it dials, since nodes dial each
//! other; a client user presents `client.<name>.crt`. ALPN tells the two uses apart:
//! [`ALPN_RAFT`] between nodes, [`ALPN_CLIENT`] for clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::certs::{CertsDir, NODE_CERT_FILE, NODE_KEY_FILE};

/// ALPN between nodes (Raft frames and snapshots).
pub const ALPN_RAFT: &[u8] = b"rshard-raft/1";
/// ALPN of client connections (the KV API).
pub const ALPN_CLIENT: &[u8] = b"rshard-client/1";

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    Load { path: PathBuf, detail: String },
    #[error("TLS configuration refused: {0}")]
    Config(String),
    #[error("cannot listen on {address}: {detail}")]
    Listen {
        address: std::net::SocketAddr,
        detail: String,
    },
}

/// Whose certificate to present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Node,
    Client(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_error(path: &Path, detail: impl ToString) -> TlsError {
    TlsError::Load {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

fn config_error(error: rustls::Error) -> TlsError {
    TlsError::Config(error.to_string())
}

/// The cluster CA as the only trust anchor.
fn roots(certs: &CertsDir) -> Result<Arc<RootCertStore>, TlsError> {
    let path = certs.ca_cert();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&path).map_err(|e| load_error(&path, e))? {
        let cert = cert.map_err(|e| load_error(&path, e))?;
        roots.add(cert).map_err(|e| load_error(&path, e))?;
    }
    if roots.is_empty() {
        return Err(load_error(&path, "no certificate in the file"));
    }
    Ok(Arc::new(roots))
}

type Chain = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn identity_chain(certs: &CertsDir, identity: &Identity) -> Result<Chain, TlsError> {
    let (cert_path, key_path) = match identity {
        Identity::Node => (
            certs.dir.join(NODE_CERT_FILE),
            certs.dir.join(NODE_KEY_FILE),
        ),
        Identity::Client(name) => (certs.client_cert(name), certs.client_key(name)),
    };
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| load_error(&cert_path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load_error(&cert_path, e))?;
    if chain.is_empty() {
        return Err(load_error(&cert_path, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| load_error(&key_path, e))?;
    Ok((chain, key))
}

/// What a node accepts connections with: its own certificate, and clients (nodes or users)
/// whose certificates the cluster CA signed; `alpn` lists the protocols it serves.
pub fn server_config(certs: &CertsDir, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(certs)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let (chain, key) = identity_chain(certs, &Identity::Node)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(config_error)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// What a node or client dials with: servers must present a certificate the cluster CA
/// signed, and it presents `identity`'s.
pub fn client_config(
    certs: &CertsDir,
    identity: &Identity,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    let (chain, key) = identity_chain(certs, identity)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(roots(certs)?)
        .with_client_auth_cert(chain, key)
        .map_err(config_error)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// What an `--insecure` node accepts connections with: a throwaway self-signed certificate
/// made at start, and no client certificates asked. Traffic is encrypted, nobody is
/// authenticated.
pub fn insecure_server_config(alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(vec![generated.cert.der().clone()], key)
        .map_err(config_error)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// What an `--insecure` node or client dials with: any server certificate is accepted
/// (the handshake signature is still checked) and none is presented.
pub fn insecure_client_config(alpn: &[u8]) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// Trusts whatever certificate the server shows (insecure mode only).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
