//! The certificates a cluster needs, made and inspected as `cockroach cert` does: one cluster
//! CA, one certificate per node (server and client use, named by the node's hosts) and one
//! per client user. Everything lives in a certificates directory:
//!
//! - `ca.crt`: the cluster CA; every node and client trusts exactly this;
//! - `ca.key`: the CA's private key, by default in the same directory (`--ca-key` puts it
//!   elsewhere; keep it off the nodes in production);
//! - `node.crt` / `node.key`: this node's identity, valid for the hosts it was made for;
//! - `client.<name>.crt` / `client.<name>.key`: a client user's identity.
//!
//! Contract: nothing is overwritten unless asked; private keys are written with mode 0600;
//! a CA key that does not match `ca.crt` is refused, so a certificate never comes out signed
//! by the wrong key; every error names the file it is about. Keys are ECDSA P-256 (ring).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use thiserror::Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const NODE_CERT_FILE: &str = "node.crt";
pub const NODE_KEY_FILE: &str = "node.key";

/// Lifetime of a new CA, and of node and client certificates, unless told otherwise.
pub const DEFAULT_CA_LIFETIME_DAYS: u32 = 3650;
pub const DEFAULT_CERT_LIFETIME_DAYS: u32 = 365;
/// Client user names: what a client certificate's common name may be.
pub const MAX_CLIENT_NAME_BYTES: usize = 63;

#[derive(Debug, Error)]
pub enum CertError {
    #[error("{0} already exists; pass --overwrite to replace it")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid {what}: {detail}")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("the CA key {key} does not belong to the CA certificate {cert}")]
    CaKeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("invalid host {0:?}: give DNS names or IP addresses")]
    BadHost(String),
    #[error("invalid client name {0:?}: use 1 to 63 of a-z, 0-9, '_' and '-'")]
    BadClientName(String),
    #[error("a node certificate needs at least one host")]
    NoHosts,
    #[error("lifetime must be at least one day")]
    BadLifetime,
    #[error("could not make the certificate: {0}")]
    Generate(String),
}

fn generate_error(error: rcgen::Error) -> CertError {
    CertError::Generate(error.to_string())
}

/// Where the certificates are, and where the CA key is.
#[derive(Clone, Debug)]
pub struct CertsDir {
    pub dir: PathBuf,
    pub ca_key: PathBuf,
}

impl CertsDir {
    /// `dir`, with the CA key in it unless `ca_key` says otherwise.
    pub fn new(dir: &Path, ca_key: Option<&Path>) -> Self {
        CertsDir {
            dir: dir.to_path_buf(),
            ca_key: ca_key.map_or_else(|| dir.join(CA_KEY_FILE), Path::to_path_buf),
        }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    pub fn client_cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("client.{name}.crt"))
    }

    pub fn client_key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("client.{name}.key"))
    }
}

/// What a file names: the certificate's role as told by its file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    Ca,
    Node,
    Client,
    Unknown,
}

/// One certificate found by [`list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    pub file: PathBuf,
    pub kind: CertKind,
    pub common_name: String,
    /// DNS names and IP addresses it is valid for.
    pub hosts: Vec<String>,
    /// Expiry, as seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// True if `ca.crt` signed it (the CA itself: if it is self-signed).
    pub signed_by_ca: bool,
}

impl CertSummary {
    /// The expiry date, `YYYY-MM-DD` (UTC).
    pub fn expires(&self) -> String {
        time::OffsetDateTime::from_unix_timestamp(self.not_after_unix)
            .map(|at| {
                let date = at.date();
                format!(
                    "{}-{:02}-{:02}",
                    date.year(),
                    u8::from(date.month()),
                    date.day()
                )
            })
            .unwrap_or_else(|_| self.not_after_unix.to_string())
    }
}

fn lifetime(params: &mut CertificateParams, days: u32) -> Result<(), CertError> {
    if days == 0 {
        return Err(CertError::BadLifetime);
    }
    let now = time::OffsetDateTime::now_utc();
    // An hour back, so a peer whose clock is a little behind accepts a fresh certificate.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `contents` to a new file at `path` (replacing it only with `overwrite`), private
/// to its owner if `private`. Written to a temporary name and renamed, so a crash never
/// leaves half a key.
fn write(path: &Path, contents: &str, private: bool, overwrite: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    if !overwrite && path.exists() {
        return Err(CertError::Exists(path.to_path_buf()));
    }
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&temporary).map_err(io)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Makes a new cluster CA: `ca.crt` and its key.
pub fn create_ca(
    certs: &CertsDir,
    lifetime_days: u32,
    overwrite: bool,
) -> Result<Vec<PathBuf>, CertError> {
    create_dir(&certs.dir)?;
    for path in [certs.ca_cert(), certs.ca_key.clone()] {
        if !overwrite && path.exists() {
            return Err(CertError::Exists(path));
        }
    }
    let key = KeyPair::generate().map_err(generate_error)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate_error)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "rshard");
    name.push(DnType::CommonName, "rshard CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    lifetime(&mut params, lifetime_days)?;
    let cert = params.self_signed(&key).map_err(generate_error)?;
    write(&certs.ca_key, &key.serialize_pem(), true, overwrite)?;
    write(&certs.ca_cert(), &cert.pem(), false, overwrite)?;
    Ok(vec![certs.ca_cert(), certs.ca_key.clone()])
}

/// The CA as an issuer: its certificate re-made from `ca.crt` with its key, after checking
/// that the key is the certificate's.
fn load_ca(certs: &CertsDir) -> Result<(rcgen::Certificate, KeyPair), CertError> {
    let cert_path = certs.ca_cert();
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&certs.ca_key)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|error| CertError::Invalid {
        path: certs.ca_key.clone(),
        what: "private key",
        detail: error.to_string(),
    })?;
    let invalid_cert = |detail: String| CertError::Invalid {
        path: cert_path.clone(),
        what: "CA certificate",
        detail,
    };
    let der = pem_to_der(&cert_pem).map_err(&invalid_cert)?;
    let (_, parsed) = X509Certificate::from_der(&der).map_err(|e| invalid_cert(e.to_string()))?;
    if parsed.public_key().raw != key.public_key_der().as_slice() {
        return Err(CertError::CaKeyMismatch {
            key: certs.ca_key.clone(),
            cert: cert_path,
        });
    }
    let params =
        CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| invalid_cert(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(generate_error)?;
    Ok((cert, key))
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    Ok(parsed.contents)
}

/// Signs a leaf certificate with the CA and writes it and its key.
fn create_leaf(
    certs: &CertsDir,
    mut params: CertificateParams,
    common_name: &str,
    (cert_path, key_path): (PathBuf, PathBuf),
    lifetime_days: u32,
    overwrite: bool,
) -> Result<Vec<PathBuf>, CertError> {
    for path in [&cert_path, &key_path] {
        if !overwrite && path.exists() {
            return Err(CertError::Exists(path.clone()));
        }
    }
    let (ca, ca_key) = load_ca(certs)?;
    let key = KeyPair::generate().map_err(generate_error)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "rshard");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    lifetime(&mut params, lifetime_days)?;
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .map_err(generate_error)?;
    write(&key_path, &key.serialize_pem(), true, overwrite)?;
    write(&cert_path, &cert.pem(), false, overwrite)?;
    Ok(vec![cert_path, key_path])
}

/// Makes `node.crt` for `hosts` (DNS names or IP addresses), usable as server and client,
/// since nodes dial each other.
pub fn create_node(
    certs: &CertsDir,
    hosts: &[String],
    lifetime_days: u32,
    overwrite: bool,
) -> Result<Vec<PathBuf>, CertError> {
    if hosts.is_empty() {
        return Err(CertError::NoHosts);
    }
    for host in hosts {
        let valid = host.parse::<std::net::IpAddr>().is_ok()
            || (!host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
                }));
        if !valid {
            return Err(CertError::BadHost(host.clone()));
        }
    }
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(generate_error)?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let paths = (
        certs.dir.join(NODE_CERT_FILE),
        certs.dir.join(NODE_KEY_FILE),
    );
    create_leaf(certs, params, "node", paths, lifetime_days, overwrite)
}

/// Makes `client.<name>.crt` for client user `name`.
pub fn create_client(
    certs: &CertsDir,
    name: &str,
    lifetime_days: u32,
    overwrite: bool,
) -> Result<Vec<PathBuf>, CertError> {
    // "node" is the common name of node certificates: a user by that name would pass as one.
    let valid = !name.is_empty()
        && name != "node"
        && name.len() <= MAX_CLIENT_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid {
        return Err(CertError::BadClientName(name.to_string()));
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate_error)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let paths = (certs.client_cert(name), certs.client_key(name));
    create_leaf(certs, params, name, paths, lifetime_days, overwrite)
}

/// Every `*.crt` in the directory, in file name order, with whether `ca.crt` signed it.
pub fn list(certs: &CertsDir) -> Result<Vec<CertSummary>, CertError> {
    let io = |source| CertError::Io {
        path: certs.dir.clone(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&certs.dir)
        .map_err(io)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    files.retain(|path| path.extension().is_some_and(|e| e == "crt"));
    files.sort();
    let ca_der = match read(&certs.ca_cert()) {
        Ok(pem) => pem_to_der(&pem).ok(),
        Err(_) => None,
    };
    let ca = ca_der
        .as_deref()
        .and_then(|der| X509Certificate::from_der(der).ok().map(|(_, cert)| cert));
    files
        .into_iter()
        .map(|file| summarize(file, ca.as_ref()))
        .collect()
}

fn summarize(file: PathBuf, ca: Option<&X509Certificate<'_>>) -> Result<CertSummary, CertError> {
    let invalid = |detail: String| CertError::Invalid {
        path: file.clone(),
        what: "certificate",
        detail,
    };
    let der = pem_to_der(&read(&file)?).map_err(&invalid)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| invalid(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut hosts = Vec::new();
    if let Ok(Some(names)) = cert.subject_alternative_name() {
        for name in &names.value.general_names {
            match name {
                GeneralName::DNSName(dns) => hosts.push((*dns).to_string()),
                GeneralName::IPAddress(bytes) => hosts.push(ip_to_string(bytes)),
                _ => {}
            }
        }
    }
    let file_name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let kind = match file_name {
        CA_CERT_FILE => CertKind::Ca,
        NODE_CERT_FILE => CertKind::Node,
        name if name.starts_with("client.") => CertKind::Client,
        _ => CertKind::Unknown,
    };
    let signed_by_ca = ca.is_some_and(|ca| cert.verify_signature(Some(ca.public_key())).is_ok());
    Ok(CertSummary {
        kind,
        common_name,
        hosts,
        not_after_unix: cert.validity().not_after.timestamp(),
        signed_by_ca,
        file,
    })
}

fn ip_to_string(bytes: &[u8]) -> String {
    if let Ok(octets) = <[u8; 4]>::try_from(bytes) {
        return std::net::IpAddr::from(octets).to_string();
    }
    if let Ok(octets) = <[u8; 16]>::try_from(bytes) {
        return std::net::IpAddr::from(octets).to_string();
    }
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// A whole cluster's certificates in `dir` (a CA, a node for localhost and 127.0.0.1, and
/// client `root`), valid 30 days: for tests.
#[cfg(test)]
pub(crate) fn test_cluster(dir: &Path) -> CertsDir {
    let certs = CertsDir::new(dir, None);
    create_ca(&certs, 30, false).expect("a CA");
    let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    create_node(&certs, &hosts, 30, false).expect("a node certificate");
    create_client(&certs, "root", 30, false).expect("a client certificate");
    certs
}

#[cfg(test)]
mod tests;
