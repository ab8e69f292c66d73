//! TLS settings for secure ICAP (`icaps://`, conventionally port 11344), shared by the client
//! and the server.
//!
//! This module turns PEM files into rustls configurations: a server certificate with an
//! optional client-certificate requirement (what stunnel's `verify = 2` does in front of a
//! DLP appliance), and a client that trusts the system roots, a private CA, or exactly one
//! pinned (typically self-signed) certificate, optionally presenting a client certificate.
//! Handshakes themselves happen in the client and server front ends.
//!
//! rustls takes X.509 v3 certificates only; the v1 certificates that `openssl x509 -req`
//! makes without `-extfile` (and stunnel accepts) are named with the fix: ours when their
//! file is loaded, a peer's in the handshake error ([`describe_handshake_error`]). The
//! guide `docs/moving-from-stunnel.md` covers this and the other differences from stunnel.

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

/// Which end of a connection a certificate identifies: the fix for a v1 certificate
/// differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// The first DER element of `b`: its tag, the length of its header, the length of its
/// content. Definite lengths up to four bytes, which covers any certificate.
fn der_header(b: &[u8]) -> Option<(u8, usize, usize)> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if first < 0x80 {
        return Some((tag, 2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 || rest.len() < n {
        return None;
    }
    let len = rest[..n]
        .iter()
        .fold(0usize, |acc, &d| (acc << 8) | usize::from(d));
    Some((tag, 2 + n, len))
}

/// The X.509 version (1, 2 or 3) of a DER certificate, read from the start of its
/// `TBSCertificate`, whose version is an optional `[0] EXPLICIT INTEGER` (absent: v1);
/// `None` when the bytes do not start like a certificate.
fn x509_version(der: &[u8]) -> Option<u8> {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const VERSION_TAG: u8 = 0xa0;
    let (tag, hdr, _) = der_header(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let tbs = der.get(hdr..)?;
    let (tag, hdr, _) = der_header(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    let field = tbs.get(hdr..)?;
    match der_header(field)? {
        // The serial number comes first: no version field, v1.
        (INTEGER, _, _) => Some(1),
        (VERSION_TAG, hdr, _) => match der_header(field.get(hdr..)?)? {
            (INTEGER, h, 1) => match field.get(hdr + h)? {
                v @ 0..=2 => Some(v + 1),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// What an X.509 v1 certificate means here and how to fix it, for messages.
fn v1_problem(role: Role) -> String {
    let ext = match role {
        Role::Client => "`basicConstraints=CA:FALSE` and `extendedKeyUsage=clientAuth`",
        Role::Server => {
            "`basicConstraints=CA:FALSE`, `extendedKeyUsage=serverAuth` and `subjectAltName=DNS:<the server's name>`"
        }
    };
    format!(
        "the {role} certificate is X.509 version 1 (no extensions, as `openssl x509 -req` makes \
         without `-extfile`), which rustls refuses: reissue it with extensions, e.g. \
         `openssl x509 -req ... -extfile {role}.ext` with {ext} in {role}.ext",
        role = role.as_str(),
    )
}

/// Refuses a leaf certificate that is X.509 v1 before rustls does in its own words.
fn check_leaf(chain: &[CertificateDer<'_>], role: Role, path: Option<&Path>) -> Result<()> {
    match chain.first() {
        Some(leaf) if x509_version(leaf) == Some(1) => Err(match path {
            Some(p) => TlsConfigError::file(p, v1_problem(role)),
            None => TlsConfigError::other(v1_problem(role)),
        }),
        _ => Ok(()),
    }
}

/// The certificates of a PEM file whose first one identifies this end (`role`).
fn load_identity(path: &Path, role: Role) -> Result<Vec<CertificateDer<'static>>> {
    let chain = load_certs(path)?;
    check_leaf(&chain, role, Some(path))?;
    Ok(chain)
}

/// A peer's certificate refused because it is X.509 v1: travels inside rustls's error so
/// that [`describe_handshake_error`] can say what it means. `Debug` says it too, as rustls
/// shows the inner error with `{:?}`.
struct PeerV1Certificate(Role);

impl fmt::Display for PeerV1Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&v1_problem(self.0))
    }
}

impl fmt::Debug for PeerV1Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for PeerV1Certificate {}

/// Names a refusal of an X.509 v1 peer certificate (webpki parses a certificate first, so
/// whatever else is wrong with a v1 one, the version is what it trips on).
fn name_v1<T>(
    end_entity: &CertificateDer<'_>,
    role: Role,
    r: std::result::Result<T, rustls::Error>,
) -> std::result::Result<T, rustls::Error> {
    match r {
        Err(rustls::Error::InvalidCertificate(_)) if x509_version(end_entity) == Some(1) => Err(
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(PeerV1Certificate(role)),
            ))),
        ),
        r => r,
    }
}

/// A failed TLS handshake in words, for a log line or an error message: rustls's own
/// description, except for a peer certificate that is X.509 version 1 (which rustls
/// refuses, and stunnel accepts): then what that means and how to reissue it. Takes the
/// error of a `tokio_rustls` accept or connect (an `io::Error` around rustls's) or
/// rustls's error itself.
///
/// ```
/// let e = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
/// assert_eq!(icap::tls::describe_handshake_error(&e), "reset by peer");
/// ```
pub fn describe_handshake_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))) =
            err.downcast_ref::<rustls::Error>()
        {
            if let Some(v1) = o.0.downcast_ref::<PeerV1Certificate>() {
                return v1.to_string();
            }
        }
        // `io::Error::source` skips the error it wraps; `get_ref` is that error.
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|i| i as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    e.to_string()
}

/// The server's check of client certificates (webpki's), with v1 certificates named.
#[derive(Debug)]
struct ClientCertCheck(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for ClientCertCheck {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let r = self.0.verify_client_cert(end_entity, intermediates, now);
        name_v1(end_entity, Role::Client, r)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }
}

/// The client's check of server certificates (webpki's), with v1 certificates named.
#[derive(Debug)]
struct ServerCertCheck(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for ServerCertCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let r = self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        name_v1(end_entity, Role::Server, r)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.0.root_hint_subjects()
    }
}

/// A client configuration that trusts `roots`, naming v1 server certificates.
fn trusting(
    builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>,
    roots: RootCertStore,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| config_error(format!("server certificate check: {e}")))?;
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerCertCheck(webpki))))
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
            cert_chain: load_identity(cert.as_ref(), Role::Server)?,
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
        check_leaf(&self.cert_chain, Role::Server, None)?;
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
            builder.with_client_cert_verifier(Arc::new(ClientCertCheck(verifier)))
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
    let chain = load_identity(cert, Role::Server)?;
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
        let chain = load_identity(cert.as_ref(), Role::Client)?;
        self.identity = Some((chain, Arc::new(load_key(key)?)));
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
                trusting(builder, roots)?
            }
            Trust::Ca(cas) => trusting(builder, roots_from(cas.clone(), "CA file")?)?,
            Trust::Pinned(certs) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    pins: certs.clone(),
                    provider: provider(),
                })),
        };
        let cfg = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                check_leaf(chain, Role::Client, None)?;
                builder
                    .with_client_auth_cert(chain.clone(), key.clone_key())
                    .map_err(|e| config_error(format!("client certificate and key: {e}")))?
            }
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
    /// The start of a real v1 certificate (`openssl x509 -req` without `-extfile`): long
    /// length forms, then the serial number where v3 has its version.
    const V1_START: &[u8] = &[
        0x30, 0x82, 0x01, 0x25, 0x30, 0x81, 0xcc, 0x02, 0x14, 0x18, 0x80, 0xac,
    ];

    #[test]
    fn the_version_is_read_from_the_first_bytes_of_tbs_certificate() {
        assert_eq!(x509_version(V1_START), Some(1));
        // [0] EXPLICIT INTEGER 1 and 2: v2 and v3.
        assert_eq!(
            x509_version(&[0x30, 0x0a, 0x30, 0x08, 0xa0, 0x03, 0x02, 0x01, 0x01]),
            Some(2)
        );
        assert_eq!(
            x509_version(&[0x30, 0x0a, 0x30, 0x08, 0xa0, 0x03, 0x02, 0x01, 0x02]),
            Some(3)
        );
        let v3 = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        assert_eq!(x509_version(v3.der()), Some(3));
    }

    #[test]
    fn bytes_that_are_no_certificate_have_no_version() {
        for bad in [
            &[][..],
            &[0x30][..],
            &[0x30, 0x82, 0x01][..],
            &[0x31, 0x03, 0x30, 0x01, 0x02][..],
            &[0x30, 0x03, 0x04, 0x01, 0x02][..],
            &[0x30, 0x05, 0x30, 0x03, 0x04, 0x01, 0x00][..],
            // A version of 7, and one cut short.
            &[0x30, 0x0a, 0x30, 0x08, 0xa0, 0x03, 0x02, 0x01, 0x07][..],
            &[0x30, 0x0a, 0x30, 0x08, 0xa0, 0x03, 0x02, 0x01][..],
            &[0x30, 0x0a, 0x30, 0x08, 0xa0, 0x03, 0x02, 0x02, 0x00, 0x02][..],
            // A length of five bytes.
            &[0x30, 0x85, 0, 0, 0, 0, 1][..],
        ] {
            assert_eq!(x509_version(bad), None, "{bad:02x?}");
        }
    }

    #[test]
    fn our_own_v1_certificate_is_refused_naming_the_file_and_the_fix() {
        let chain = [CertificateDer::from(V1_START.to_vec())];
        let e = check_leaf(
            &chain,
            Role::Client,
            Some(Path::new("/etc/icap/client.pem")),
        )
        .unwrap_err();
        assert_eq!(e.path(), Some(Path::new("/etc/icap/client.pem")));
        let text = e.to_string();
        assert!(
            text.starts_with(
                "TLS configuration: /etc/icap/client.pem: the client certificate is X.509 version 1"
            ),
            "{text}"
        );
        assert!(text.contains("-extfile client.ext"), "{text}");
        assert!(text.contains("extendedKeyUsage=clientAuth"), "{text}");
        let e = check_leaf(&chain, Role::Server, None).unwrap_err();
        assert_eq!(e.path(), None);
        assert!(e.problem().contains("extendedKeyUsage=serverAuth"), "{e}");
        assert!(e.problem().contains("subjectAltName="), "{e}");
        // In memory, the client's build says the same.
        let key = rcgen::KeyPair::generate().unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let e = ClientTls::default()
            .with_trust(Trust::Pinned(vec![]))
            .with_identity(chain.to_vec(), key)
            .build()
            .unwrap_err();
        assert!(
            e.problem()
                .starts_with("the client certificate is X.509 version 1"),
            "{e}"
        );
    }

    #[test]
    fn a_peer_v1_refusal_is_renamed_and_described_through_io_errors() {
        let v1 = CertificateDer::from(V1_START.to_vec());
        let refused = || {
            Err::<(), _>(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ))
        };
        let named = name_v1(&v1, Role::Client, refused()).unwrap_err();
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, named.clone());
        let text = describe_handshake_error(&io);
        assert!(
            text.starts_with("the client certificate is X.509 version 1"),
            "{text}"
        );
        assert_eq!(describe_handshake_error(&named), text);
        // rustls's own words carry it too (it shows the inner error with `{:?}`).
        assert!(named.to_string().contains("X.509 version 1"), "{named}");
        // Other certificates and other errors keep rustls's words.
        let v3 = CertificateDer::from(vec![0x30, 0x0a, 0x30, 0x08, 0xa0, 0x03, 0x02, 0x01, 0x02]);
        let kept = name_v1(&v3, Role::Client, refused()).unwrap_err();
        assert_eq!(
            kept,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        );
        assert_eq!(describe_handshake_error(&kept), kept.to_string());
        let other = name_v1(
            &v1,
            Role::Server,
            Err::<(), _>(rustls::Error::HandshakeNotComplete),
        );
        assert_eq!(other.unwrap_err(), rustls::Error::HandshakeNotComplete);
    }
}
