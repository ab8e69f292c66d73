//! Certificates for the reload tests, made with rcgen: one CA, several server
//! certificates for 127.0.0.1 signed by it (each with its own key), and a rustls client
//! configuration that trusts the CA, all written as PEM files where a server wants them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::CertificateDer;

pub struct Pki {
    pub ca: CertificateDer<'static>,
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    pub dir: PathBuf,
}

/// A server certificate and its key, as PEM files.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("icap-reload-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "icap reload test CA");
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca: CertificateDer::from(cert.der().to_vec()),
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            dir,
        }
    }

    /// A server certificate for 127.0.0.1 with `cn` as its common name.
    pub fn leaf(&self, cn: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            der: CertificateDer::from(cert.der().to_vec()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Puts `leaf` in server.pem / server.key, as a renewal would (write, then rename).
    pub fn install(&self, leaf: &Leaf) {
        write_atomic(&self.path("server.pem"), &leaf.cert_pem);
        write_atomic(&self.path("server.key"), &leaf.key_pem);
    }

    /// A client configuration that trusts the CA. Without session resumption: a resumed
    /// session shows the certificate of the session it resumes, not the one the server
    /// presents now.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let ring = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(ring)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.resumption = rustls::client::Resumption::disabled();
        Arc::new(cfg)
    }

    /// A client configuration that trusts `server_ca` and presents `leaf` (issued by this
    /// PKI's CA) as its client certificate.
    pub fn client_with_cert(
        server_ca: &CertificateDer<'static>,
        leaf: &Leaf,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_ca.clone()).unwrap();
        use rustls::pki_types::pem::PemObject;
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let ring = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(ring)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![leaf.der.clone()], key)
            .unwrap();
        cfg.resumption = rustls::client::Resumption::disabled();
        Arc::new(cfg)
    }
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
