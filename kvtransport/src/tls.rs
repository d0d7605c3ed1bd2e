//! Certificates and TLS configuration: one cluster CA, one certificate per node and per client.
//!
//! Identity rule (what a certificate says, and how a peer is classified):
//! - Every leaf certificate carries exactly one DNS subject alternative name: its identity name
//!   (`n1`, `client1`). Node certificates also carry their IP address as an IP SAN.
//! - Node certificates have the extended key usages serverAuth AND clientAuth: a node both
//!   accepts and dials. Client certificates have clientAuth only.
//! - On an accepted connection, the CA chain and clientAuth usage are checked by rustls
//!   (`WebPkiClientVerifier`). The peer is then `Identity::Node(name)` if its certificate is
//!   also valid for serverAuth under the cluster CA for that DNS name, else
//!   `Identity::Client(name)`. A node identity must be in the cluster's peer table.
//! - When dialing a node, the server certificate must be valid (serverAuth) for the node name
//!   being dialed, so a node answering with another node's certificate is refused.
//! - `generate_certs` refuses names that are not DNS labels and names used twice (so no client
//!   can share a node's name).

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The CA's subject common name. `generate_certs` rebuilds the CA's issuer data from it when it
/// signs new leaves with an existing CA key, so it must never change.
const CA_COMMON_NAME: &str = "ReplicatedKVStore cluster CA";
/// Longest identity name accepted (a DNS label is at most 63 bytes).
const NAME_BYTES_MAX: usize = 63;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid PEM file: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid name '{name}': {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{path} exists but {missing} is missing; pass force to regenerate")]
    Incomplete { path: PathBuf, missing: PathBuf },
    #[error("rustls configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("quinn TLS configuration failed: {0}")]
    Quic(String),
    #[error("peer identity refused: {0}")]
    Identity(String),
}

/// A node for which `generate_certs` makes a certificate.
#[derive(Clone, Debug)]
pub struct NodeCertSpec {
    /// The node's name, e.g. `n1`: its DNS SAN and the name peers dial it by.
    pub name: String,
    /// The node's address, added as an IP SAN.
    pub addr: IpAddr,
}

/// Who the peer of an accepted connection is (see the identity rule above).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    Node(String),
    Client(String),
}

impl Identity {
    pub fn name(&self) -> &str {
        match self {
            Identity::Node(name) | Identity::Client(name) => name,
        }
    }
}

/// `node n2`, `client client1`: for logs and refusal reasons.
impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Node(name) => write!(f, "node {name}"),
            Identity::Client(name) => write!(f, "client {name}"),
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn validate_name(name: &str) -> Result<(), TlsError> {
    let invalid = |reason: &str| TlsError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(invalid("must be 1 to 63 bytes"));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !name.chars().all(allowed) || name.starts_with('-') || name.ends_with('-') {
        return Err(invalid("must be a DNS label: a-z, 0-9 and inner '-'"));
    }
    if name == "ca" {
        return Err(invalid("reserved for the CA files"));
    }
    Ok(())
}

fn validate_names(nodes: &[NodeCertSpec], clients: &[String]) -> Result<(), TlsError> {
    let mut seen = std::collections::BTreeSet::new();
    let names = nodes
        .iter()
        .map(|n| n.name.as_str())
        .chain(clients.iter().map(|c| c.as_str()));
    for name in names {
        validate_name(name)?;
        if !seen.insert(name) {
            let reason = "used twice (node and client names share one namespace)".to_string();
            return Err(TlsError::InvalidName {
                name: name.to_string(),
                reason,
            });
        }
    }
    Ok(())
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn leaf_params(name: &str, addr: Option<IpAddr>) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let dns = name.to_string().try_into()?;
    params.subject_alt_names = vec![SanType::DnsName(dns)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if let Some(ip) = addr {
        params.subject_alt_names.push(SanType::IpAddress(ip));
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    Ok(params)
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_error(path))?;
    file.write_all(contents.as_bytes())
        .map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// `Some(true)`: both files exist; `Some(false)`: neither; an error if only one does.
fn pair_exists(pem: &Path, key: &Path) -> Result<bool, TlsError> {
    match (pem.exists(), key.exists()) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(TlsError::Incomplete {
            path: pem.into(),
            missing: key.into(),
        }),
        (false, true) => Err(TlsError::Incomplete {
            path: key.into(),
            missing: pem.into(),
        }),
    }
}

fn read_to_string(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(io_error(path))
}

/// Loads the CA key from `dir`, or makes a new CA there. Returns the issuer that signs leaves.
fn ensure_ca(dir: &Path, force: bool) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let (pem, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    if !force && pair_exists(&pem, &key)? {
        let key_pem = read_to_string(&key)?;
        let key_pair = KeyPair::from_pem(&key_pem)?;
        // The issuer needs the CA's subject and key only; ca_params() rebuilds the subject
        // this function wrote when it made the CA.
        return Ok(Issuer::new(ca_params(), key_pair));
    }
    let key_pair = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key_pair)?;
    write_file(&key, &key_pair.serialize_pem(), true)?;
    write_file(&pem, &cert.pem(), false)?;
    Ok(Issuer::new(ca_params(), key_pair))
}

fn ensure_leaf(
    dir: &Path,
    name: &str,
    addr: Option<IpAddr>,
    issuer: &Issuer<'static, KeyPair>,
    force: bool,
) -> Result<(), TlsError> {
    let (pem, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    if !force && pair_exists(&pem, &key)? {
        return Ok(());
    }
    let key_pair = KeyPair::generate()?;
    let cert = leaf_params(name, addr)?.signed_by(&key_pair, issuer)?;
    write_file(&key, &key_pair.serialize_pem(), true)?;
    write_file(&pem, &cert.pem(), false)
}

/// Writes `ca.pem`/`ca.key`, `<node>.pem`/`<node>.key` and `<client>.pem`/`<client>.key` into
/// `dir` (created if missing). Existing files are kept unless `force`; a kept CA signs any
/// missing leaf. With `force` everything is regenerated, CA included.
pub fn generate_certs(
    dir: &Path,
    nodes: &[NodeCertSpec],
    clients: &[String],
    force: bool,
) -> Result<(), TlsError> {
    validate_names(nodes, clients)?;
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let ca_existed = dir.join("ca.pem").exists();
    let issuer = ensure_ca(dir, force)?;
    // Leaves signed by a CA that was just replaced would no longer verify: remake them all.
    let force_leaves = force || !ca_existed;
    for node in nodes {
        ensure_leaf(dir, &node.name, Some(node.addr), &issuer, force_leaves)?;
    }
    for client in clients {
        ensure_leaf(dir, client, None, &issuer, force_leaves)?;
    }
    Ok(())
}

/// The ring provider, passed explicitly everywhere (DEPENDENCIES.md: never the default).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One identity's certificate and key plus the cluster CA, loaded from a certs directory.
#[derive(Debug)]
pub struct TlsMaterial {
    name: String,
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial {
            name: self.name.clone(),
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn pem_error(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn load_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    let pem = fs::read(path).map_err(io_error(path))?;
    CertificateDer::from_pem_slice(&pem).map_err(pem_error(path))
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = fs::read(path).map_err(io_error(path))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(pem_error(path))
}

impl TlsMaterial {
    /// Loads `ca.pem`, `<own_name>.pem` and `<own_name>.key` from `dir`.
    pub fn load(dir: &Path, own_name: &str) -> Result<TlsMaterial, TlsError> {
        let ca = load_cert(&dir.join("ca.pem"))?;
        let cert = load_cert(&dir.join(format!("{own_name}.pem")))?;
        let key = load_key(&dir.join(format!("{own_name}.key")))?;
        Ok(TlsMaterial {
            name: own_name.to_string(),
            ca,
            chain: vec![cert],
            key,
        })
    }

    /// The identity name this material was loaded for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster CA certificate (DER).
    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// The rustls server side: TLS 1.3 only, client certificates of the cluster CA required.
    pub fn rustls_server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = crypto_provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone()).build()?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(config)
    }

    /// The rustls client side: TLS 1.3, the server must be valid for the dialed name under the
    /// cluster CA, and this material's certificate is presented.
    pub fn rustls_client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(config)
    }

    /// A quinn server configuration (transport parameters are the caller's).
    pub fn server_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, TlsError> {
        let crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(self.rustls_server_config()?)
                .map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport);
        Ok(config)
    }

    /// A quinn client configuration (transport parameters are the caller's).
    pub fn client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, TlsError> {
        quinn_client_config(self.rustls_client_config()?, transport)
    }

    /// Builds the identity classifier for peers of this material's cluster.
    pub fn identifier(&self) -> Result<Identifier, TlsError> {
        let verifier =
            WebPkiServerVerifier::builder_with_provider(self.roots()?, crypto_provider()).build();
        let verifier = verifier.map_err(|e| TlsError::Quic(e.to_string()))?;
        Ok(Identifier {
            server_verifier: verifier,
        })
    }
}

/// Wraps any rustls client configuration for quinn (tests use it for a client without a cert).
pub fn quinn_client_config(
    crypto: rustls::ClientConfig,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// Classifies the certificate chain of an accepted (already CA-verified) connection.
#[derive(Clone, Debug)]
pub struct Identifier {
    server_verifier: Arc<WebPkiServerVerifier>,
}

impl Identifier {
    /// Applies the identity rule of this module to `chain` (end-entity first).
    pub fn identify(&self, chain: &[CertificateDer<'_>]) -> Result<Identity, TlsError> {
        let refuse = |reason: &str| TlsError::Identity(reason.to_string());
        let (end_entity, intermediates) = chain.split_first().ok_or(refuse("no certificate"))?;
        let parsed = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| TlsError::Identity(format!("unparsable certificate: {e}")))?;
        let names: Vec<&str> = parsed.valid_dns_names().collect();
        let [name] = names.as_slice() else {
            return Err(TlsError::Identity(format!(
                "expected one DNS name, found {}",
                names.join(", ")
            )));
        };
        validate_name(name).map_err(|e| TlsError::Identity(e.to_string()))?;
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|e| TlsError::Identity(format!("DNS name '{name}': {e}")))?;
        let as_node = self.server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            &server_name,
            &[],
            UnixTime::now(),
        );
        Ok(match as_node {
            Ok(_) => Identity::Node(name.to_string()),
            Err(_) => Identity::Client(name.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn node(name: &str) -> NodeCertSpec {
        NodeCertSpec {
            name: name.to_string(),
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    fn chain(dir: &Path, name: &str) -> Vec<CertificateDer<'static>> {
        vec![load_cert(&dir.join(format!("{name}.pem"))).unwrap()]
    }

    #[test]
    fn tls_identity_rule_tells_nodes_from_clients() {
        let dir = tempfile::tempdir().unwrap();
        generate_certs(
            dir.path(),
            &[node("n1"), node("n2")],
            &["client1".into()],
            false,
        )
        .unwrap();
        let identifier = TlsMaterial::load(dir.path(), "n1")
            .unwrap()
            .identifier()
            .unwrap();
        let n2 = identifier.identify(&chain(dir.path(), "n2")).unwrap();
        assert_eq!(n2, Identity::Node("n2".into()));
        let client = identifier.identify(&chain(dir.path(), "client1")).unwrap();
        assert_eq!(client, Identity::Client("client1".into()));
        assert!(identifier.identify(&[]).is_err());
    }

    #[test]
    fn tls_generate_keeps_ca_and_signs_new_leaves_with_it() {
        let dir = tempfile::tempdir().unwrap();
        generate_certs(dir.path(), &[node("n1")], &[], false).unwrap();
        let ca_before = fs::read(dir.path().join("ca.pem")).unwrap();
        let n1_before = fs::read(dir.path().join("n1.pem")).unwrap();
        generate_certs(dir.path(), &[node("n1"), node("n2")], &["c1".into()], false).unwrap();
        assert_eq!(fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
        assert_eq!(fs::read(dir.path().join("n1.pem")).unwrap(), n1_before);
        // n2 was signed by the kept CA: it classifies as a node under that CA.
        let identifier = TlsMaterial::load(dir.path(), "n1")
            .unwrap()
            .identifier()
            .unwrap();
        let n2 = identifier.identify(&chain(dir.path(), "n2")).unwrap();
        assert_eq!(n2, Identity::Node("n2".into()));

        generate_certs(dir.path(), &[node("n1")], &[], true).unwrap();
        assert_ne!(fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
    }

    #[test]
    fn tls_generate_refuses_bad_and_shared_names() {
        let dir = tempfile::tempdir().unwrap();
        let err = generate_certs(dir.path(), &[node("n1")], &["n1".into()], false).unwrap_err();
        assert!(matches!(err, TlsError::InvalidName { .. }));
        let err = generate_certs(dir.path(), &[node("N 1")], &[], false).unwrap_err();
        assert!(matches!(err, TlsError::InvalidName { .. }));
        assert!(!dir.path().join("ca.pem").exists());
    }
}
