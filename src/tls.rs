//! TLS settings for secure ICAP (`icaps://`, conventionally port 11344), shared by the client
//! and the server.
//!
//! This module turns PEM files into rustls configurations: a server certificate with an
//! optional client-certificate requirement (what stunnel's `verify = 2` does in front of a
//! DLP appliance), and a client that trusts the system roots, a private CA, or exactly one
//! pinned (typically self-signed) certificate, optionally presenting a client certificate.
//! Handshakes themselves happen in the client and server front ends.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A TLS certificate, key or CA file that cannot be read or used, or a configuration rustls
/// refuses. It names the file (when one is concerned) and says what is wrong with it; it is
/// not a wire error, so it has no byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfigError {
    path: Option<PathBuf>,
    problem: String,
}

impl TlsConfigError {
    fn file(path: &Path, problem: impl Into<String>) -> Self {
        TlsConfigError {
            path: Some(path.to_path_buf()),
            problem: problem.into(),
        }
    }

    fn other(problem: impl Into<String>) -> Self {
        TlsConfigError {
            path: None,
            problem: problem.into(),
        }
    }

    /// The file concerned, when the problem is with a file.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What is wrong, without the file name.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "TLS configuration: {}: {}", p.display(), self.problem),
            None => write!(f, "TLS configuration: {}", self.problem),
        }
    }
}

impl std::error::Error for TlsConfigError {}

/// Shorthand for results of this module.
type Result<T, E = TlsConfigError> = std::result::Result<T, E>;

fn config_error(msg: impl Into<String>) -> TlsConfigError {
    TlsConfigError::other(msg)
}

/// `pem_file_iter` reports a missing file as an I/O error inside its own error type; say
/// it as a person would.
fn pem_problem(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::NotFound => "no such file".into(),
            std::io::ErrorKind::PermissionDenied => "permission denied".into(),
            _ => format!("cannot read: {io}"),
        },
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected type".into(),
        other => format!("not valid PEM: {other}"),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>> {
    let path = path.as_ref();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsConfigError::file(path, pem_problem(e)))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::file(path, pem_problem(e)))?;
    if certs.is_empty() {
        return Err(TlsConfigError::file(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>> {
    let path = path.as_ref();
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsConfigError::file(path, "no private key in the file")
        }
        e => TlsConfigError::file(path, pem_problem(e)),
    })
}

fn roots_from(certs: Vec<CertificateDer<'static>>, what: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| config_error(format!("{what}: unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Server-side TLS: certificate chain, key, and optionally the CA that client certificates
/// must chain to.
///
/// ```no_run
/// use icap::tls::ServerTls;
///
/// let tls = ServerTls::from_pem_files("/etc/icap/server.pem", "/etc/icap/server.key")?
///     .require_client_certs("/etc/icap/clients-ca.pem")?;
/// let rustls_config = tls.build()?; // for `Server::tls`
/// # Ok::<(), icap::tls::TlsConfigError>(())
/// ```
///
/// A file that cannot be used is named in the error:
///
/// ```
/// let err = icap::tls::ServerTls::from_pem_files("missing.pem", "missing.key").unwrap_err();
/// assert_eq!(err.to_string(), "TLS configuration: missing.pem: no such file");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerTls {
    /// The server's certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The server's private key.
    pub key: Arc<PrivateKeyDer<'static>>,
    /// When set, a client must present a certificate issued by one of these CAs.
    pub client_ca: Option<Vec<CertificateDer<'static>>>,
}

impl ServerTls {
    /// A configuration from a certificate chain (leaf first) and its key already in memory.
    pub fn new(cert_chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        ServerTls {
            cert_chain,
            key: Arc::new(key),
            client_ca: None,
        }
    }

    /// Requires client certificates issued by one of these CAs (in memory; see
    /// [`Self::require_client_certs`] for a file).
    pub fn with_client_ca(mut self, cas: Vec<CertificateDer<'static>>) -> Self {
        self.client_ca = Some(cas);
        self
    }

    /// Loads the certificate chain and key from PEM files.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        Ok(ServerTls {
            cert_chain: load_certs(cert)?,
            key: Arc::new(load_key(key)?),
            client_ca: None,
        })
    }

    /// Requires client certificates issued by the CA(s) in this PEM file.
    pub fn require_client_certs(mut self, ca: impl AsRef<Path>) -> Result<Self> {
        self.client_ca = Some(load_certs(ca)?);
        Ok(self)
    }

    /// Builds the rustls configuration.
    pub fn build(&self) -> Result<Arc<rustls::ServerConfig>> {
        let cfg = server_builder(self.client_ca.as_deref())?
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(|e| config_error(format!("server certificate and key: {e}")))?;
        Ok(Arc::new(cfg))
    }
}

/// A server configuration up to its certificate: protocol versions and client
/// authentication.
fn server_builder(
    client_ca: Option<&[CertificateDer<'static>]>,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?;
    Ok(match client_ca {
        None => builder.with_no_client_auth(),
        Some(cas) => {
            let roots = roots_from(cas.to_vec(), "client CA")?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| config_error(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    })
}

/// A server certificate and key, and the client CA, that can be replaced while the server
/// runs: the files are read again on [`reload`](Self::reload) (on SIGHUP, say), and every
/// handshake from then on presents the new certificate and checks client certificates
/// against the new CA. Connections already established keep the session they have; nothing
/// is restarted, no listener closed.
///
/// Give it to the server with [`Server::reloadable_tls`](crate::server::Server::reloadable_tls),
/// which takes the configuration in force at each handshake. A configuration taken once
/// with [`config`](Self::config) (for a `tokio_rustls::TlsAcceptor` of your own) follows
/// certificate reloads too, as it picks the certificate at each handshake, but keeps the
/// client CA it was made with: call `config()` again after a reload for the new CA.
///
/// ```no_run
/// use icap::tls::ReloadableServerTls;
///
/// let tls = ReloadableServerTls::new("/etc/icap/server.pem", "/etc/icap/server.key", None)?;
/// let server = icap::server::Server::default().reloadable_tls(&tls);
/// // Later, when the files were renewed (the old set stays if they are unusable):
/// tls.reload()?;
/// # Ok::<(), icap::tls::TlsConfigError>(())
/// ```
///
/// A file that cannot be used is named in the error, at creation as on reload:
///
/// ```
/// let err = icap::tls::ReloadableServerTls::new("missing.pem", "missing.key", None).unwrap_err();
/// assert_eq!(err.to_string(), "TLS configuration: missing.pem: no such file");
/// ```
#[derive(Debug, Clone)]
pub struct ReloadableServerTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    slot: Arc<CertSlot>,
    /// The configuration in force: replaced whole on reload, since the client-certificate
    /// verifier (and the CA names rustls sends from it) is fixed inside a configuration.
    config: Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>,
}

/// The certificate in force, read by every handshake.
#[derive(Debug)]
struct CertSlot(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(read_lock(&self.0).clone())
    }
}

/// A poisoned lock still holds a complete value: every write is one assignment.
fn read_lock<T: Clone>(l: &std::sync::RwLock<T>) -> T {
    match l.read() {
        Ok(c) => c.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

fn write_lock<T>(l: &std::sync::RwLock<T>, v: T) {
    match l.write() {
        Ok(mut c) => *c = v,
        Err(p) => *p.into_inner() = v,
    }
}

impl ReloadableServerTls {
    /// Reads the certificate chain and key (PEM), and the client CA when given (client
    /// certificates are then required).
    pub fn new(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        client_ca: Option<&Path>,
    ) -> Result<Self> {
        let (cert, key) = (cert.as_ref().to_path_buf(), key.as_ref().to_path_buf());
        let certified = certified_key(&cert, &key)?;
        let slot = Arc::new(CertSlot(std::sync::RwLock::new(Arc::new(certified))));
        let client_ca = client_ca.map(Path::to_path_buf);
        let config = Self::build(client_ca.as_deref(), &slot)?;
        Ok(ReloadableServerTls {
            cert,
            key,
            client_ca,
            slot,
            config: Arc::new(std::sync::RwLock::new(config)),
        })
    }

    fn build(client_ca: Option<&Path>, slot: &Arc<CertSlot>) -> Result<Arc<rustls::ServerConfig>> {
        let ca = client_ca.map(load_certs).transpose()?;
        Ok(Arc::new(
            server_builder(ca.as_deref())?.with_cert_resolver(slot.clone()),
        ))
    }

    /// The rustls configuration in force (see the type's documentation for how long it
    /// follows reloads).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        read_lock(&self.config)
    }

    /// Reads the certificate, key and client CA files again and uses them from the next
    /// handshake on. When one cannot be read, the key does not match the certificate or the
    /// CA is unusable, the error says which and everything in force stays.
    pub fn reload(&self) -> Result<()> {
        let certified = Arc::new(certified_key(&self.cert, &self.key)?);
        let config = match &self.client_ca {
            // Without client certificates the configuration never changes.
            None => None,
            Some(ca) => Some(Self::build(Some(ca), &self.slot)?),
        };
        write_lock(&self.slot.0, certified);
        if let Some(c) = config {
            write_lock(&self.config, c);
        }
        Ok(())
    }

    /// The end-entity certificate presented now.
    pub fn certificate(&self) -> CertificateDer<'static> {
        read_lock(&self.slot.0).cert[0].clone()
    }
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(cert: &Path, key: &Path) -> Result<rustls::sign::CertifiedKey> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    rustls::sign::CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| {
        TlsConfigError::file(
            key,
            format!("unusable with the certificate {}: {e}", cert.display()),
        )
    })
}

/// Which server certificates a client accepts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Trust {
    /// The operating system's root store.
    System,
    /// Certificates issued by these CAs (a private CA, as DLP deployments use).
    Ca(Vec<CertificateDer<'static>>),
    /// Exactly these certificates, compared byte for byte: for self-signed appliance
    /// certificates. Names and dates are not checked, as with any pin; the handshake
    /// signature still is.
    Pinned(Vec<CertificateDer<'static>>),
}

/// Client-side TLS: whom to trust, and an optional client certificate.
///
/// ```no_run
/// use icap::tls::ClientTls;
///
/// // A private CA and a client certificate (mTLS), as DLP appliances behind stunnel want.
/// let tls = ClientTls::default()
///     .with_ca_file("/etc/icap/ca.pem")?
///     .with_client_cert_files("/etc/icap/client.pem", "/etc/icap/client.key")?;
/// let rustls_config = tls.build()?;
/// # Ok::<(), icap::tls::TlsConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientTls {
    /// Which server certificates to accept.
    pub trust: Trust,
    /// A client certificate chain and key, for servers that require one (mTLS).
    pub identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl Default for ClientTls {
    fn default() -> Self {
        ClientTls {
            trust: Trust::System,
            identity: None,
        }
    }
}

impl ClientTls {
    /// Accepts the server certificates `trust` allows (in memory; see the `with_*_file`
    /// methods for files).
    pub fn with_trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// Presents this client certificate chain (leaf first) and key (in memory).
    pub fn with_identity(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.identity = Some((chain, Arc::new(key)));
        self
    }

    /// Trusts the CA(s) in a PEM file instead of the system roots.
    pub fn with_ca_file(mut self, path: impl AsRef<Path>) -> Result<Self> {
        self.trust = Trust::Ca(load_certs(path)?);
        Ok(self)
    }

    /// Trusts exactly the certificate(s) in a PEM file (pinning).
    pub fn with_pinned_cert_file(mut self, path: impl AsRef<Path>) -> Result<Self> {
        self.trust = Trust::Pinned(load_certs(path)?);
        Ok(self)
    }

    /// Presents this client certificate and key.
    pub fn with_client_cert_files(
        mut self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self> {
        self.identity = Some((load_certs(cert)?, Arc::new(load_key(key)?)));
        Ok(self)
    }

    /// Builds the rustls configuration.
    pub fn build(&self) -> Result<Arc<rustls::ClientConfig>> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(e.to_string()))?;
        let builder = match &self.trust {
            Trust::System => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(config_error(
                        "no usable system root certificates (install ca-certificates or give a CA file)",
                    ));
                }
                builder.with_root_certificates(roots)
            }
            Trust::Ca(cas) => builder.with_root_certificates(roots_from(cas.clone(), "CA file")?),
            Trust::Pinned(certs) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    pins: certs.clone(),
                    provider: provider(),
                })),
        };
        let cfg = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| config_error(format!("client certificate and key: {e}")))?,
        };
        Ok(Arc::new(cfg))
    }
}

/// Accepts a server whose end-entity certificate is one of the pins.
#[derive(Debug)]
struct PinnedVerifier {
    pins: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if self.pins.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_certificate_file_is_named_without_an_offset() {
        let e =
            ServerTls::from_pem_files("/nonexistent/icap-test/server.pem", "k.pem").unwrap_err();
        assert_eq!(
            e.path(),
            Some(Path::new("/nonexistent/icap-test/server.pem"))
        );
        assert_eq!(
            e.to_string(),
            "TLS configuration: /nonexistent/icap-test/server.pem: no such file"
        );
        assert!(!e.to_string().contains("byte"), "{e}");
        let e = ClientTls::default()
            .with_ca_file("/nonexistent/icap-test/ca.pem")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "TLS configuration: /nonexistent/icap-test/ca.pem: no such file"
        );
    }

    #[test]
    fn a_file_without_pem_items_says_what_is_missing() {
        // Cargo.toml exists and is readable, but holds neither certificate nor key.
        let toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let e = load_certs(&toml).unwrap_err();
        assert_eq!(e.path(), Some(toml.as_path()));
        assert_eq!(e.problem(), "no certificate in the file");
        let e = load_key(&toml).unwrap_err();
        assert_eq!(e.problem(), "no private key in the file");
        assert_eq!(
            e.to_string(),
            format!(
                "TLS configuration: {}: no private key in the file",
                toml.display()
            )
        );
    }
}
