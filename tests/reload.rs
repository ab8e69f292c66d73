//! Certificate and key reload without a restart: a server built once from a
//! `ReloadableServerTls` presents the new certificate to every handshake after `reload`,
//! while a connection opened before it finishes its transaction (begun before, ended
//! after) and carries another; unusable files leave the certificate in force.
#![cfg(all(feature = "server", feature = "tls"))]

mod net;
mod tls_pki;

use std::sync::Arc;

use icap::server::{Server, ServerConfig};
use icap::tls::ReloadableServerTls;
use net::{start, Blocker, BlockerRoute};
use rustls::pki_types::{CertificateDer, ServerName};
use tls_pki::Pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

async fn connect(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(cfg)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

fn presented(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// Reads one ICAP answer head (enough for 204 and OPTIONS without a body).
async fn answer(s: &mut TlsStream<TcpStream>) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

#[tokio::test]
async fn new_handshakes_get_the_new_certificate_and_open_connections_carry_on() {
    let pki = Pki::new("lib");
    let (a, b) = (pki.leaf("server A"), pki.leaf("server B"));
    pki.install(&a);
    let tls =
        ReloadableServerTls::new(pki.path("server.pem"), pki.path("server.key"), None).unwrap();
    assert_eq!(tls.certificate(), a.der);
    let srv = start(
        Server::new(ServerConfig::default())
            .route_blocker("blocker", Blocker::default())
            .tls(tls.config()),
    )
    .await;
    let client = pki.client();

    // A transaction begun with certificate A: head and half the body sent.
    let mut old = connect(srv.addr, client.clone()).await;
    assert_eq!(presented(&old), a.der);
    let uri = format!("icap://127.0.0.1:{}/blocker", srv.addr.port());
    let http = "POST /up HTTP/1.1\r\nHost: upload.example\r\n\r\n";
    let head = format!(
        "REQMOD {uri} ICAP/1.0\r\nHost: 127.0.0.1\r\nAllow: 204\r\n\
         Encapsulated: req-hdr=0, req-body={}\r\n\r\n{http}",
        http.len()
    );
    old.write_all(head.as_bytes()).await.unwrap();
    old.write_all(b"a\r\nfirst half\r\n").await.unwrap();
    old.flush().await.unwrap();

    // Renewed files, then the reload.
    pki.install(&b);
    assert_eq!(
        tls.certificate(),
        a.der,
        "nothing changes before the reload"
    );
    tls.reload().unwrap();
    assert_eq!(tls.certificate(), b.der);
    let fresh = connect(srv.addr, client.clone()).await;
    assert_eq!(presented(&fresh), b.der);
    drop(fresh);

    // The old connection finishes its transaction and carries another, still on A.
    old.write_all(b"b\r\nsecond half\r\n0\r\n\r\n")
        .await
        .unwrap();
    let first = answer(&mut old).await;
    assert!(first.starts_with("ICAP/1.0 204 "), "{first}");
    old.write_all(format!("OPTIONS {uri} ICAP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let second = answer(&mut old).await;
    assert!(second.starts_with("ICAP/1.0 200 OK\r\n"), "{second}");
    assert!(second.contains("Methods: REQMOD, RESPMOD\r\n"), "{second}");
    assert_eq!(presented(&old), a.der);

    // Unusable files: the reload says which and B stays.
    std::fs::write(pki.path("server.key"), "not a key\n").unwrap();
    let e = tls.reload().unwrap_err();
    assert_eq!(e.path(), Some(pki.path("server.key").as_path()), "{e}");
    assert_eq!(e.problem(), "no private key in the file");
    // A key of another certificate does not pass either.
    std::fs::write(pki.path("server.key"), &a.key_pem).unwrap();
    let e = tls.reload().unwrap_err();
    assert!(
        e.to_string().contains("unusable with the certificate"),
        "{e}"
    );
    let after = connect(srv.addr, client).await;
    assert_eq!(presented(&after), b.der);
    assert_eq!(tls.certificate(), b.der);
}

#[tokio::test]
async fn client_certificates_stay_required_across_a_reload() {
    let pki = Pki::new("mtls");
    let (a, b) = (pki.leaf("server A"), pki.leaf("server B"));
    pki.install(&a);
    std::fs::write(pki.path("ca.pem"), &pki.ca_pem).unwrap();
    let tls = ReloadableServerTls::new(
        pki.path("server.pem"),
        pki.path("server.key"),
        Some(&pki.path("ca.pem")),
    )
    .unwrap();
    pki.install(&b);
    tls.reload().unwrap();
    let srv = start(
        Server::new(ServerConfig::default())
            .route_blocker("blocker", Blocker::default())
            .tls(tls.config()),
    )
    .await;
    // Without a client certificate the handshake (or the first read, in TLS 1.3) fails.
    let tcp = TcpStream::connect(srv.addr).await.unwrap();
    let refused = match TlsConnector::from(pki.client())
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
    {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s
                .write_all(b"OPTIONS icap://127.0.0.1/blocker ICAP/1.0\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            !matches!(s.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate was served");
}

/// Whether a client with `cfg` is served: an OPTIONS answer comes back (in TLS 1.3 a refused
/// client certificate shows at the first read, not in the handshake).
async fn served(addr: std::net::SocketAddr, cfg: Arc<rustls::ClientConfig>) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let Ok(mut s) = TlsConnector::from(cfg)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
    else {
        return false;
    };
    if s.write_all(b"OPTIONS icap://127.0.0.1/blocker ICAP/1.0\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf).await {
        Ok(n) if n > 0 => {
            assert!(buf.starts_with(b"ICAP/1.0 200 OK\r\n"), "{buf:?}");
            true
        }
        _ => false,
    }
}

/// The client CA is reloaded too: after the CA file is replaced and `reload` runs, clients
/// of the new CA are served and those of the old one refused, by a server built once; a CA
/// file that cannot be used keeps the CA in force.
#[tokio::test]
async fn a_reload_replaces_the_client_ca() {
    let server_pki = Pki::new("ca-reload-server");
    let (old_ca, new_ca) = (Pki::new("ca-reload-old"), Pki::new("ca-reload-new"));
    server_pki.install(&server_pki.leaf("server"));
    let ca_file = server_pki.path("client-ca.pem");
    std::fs::write(&ca_file, &old_ca.ca_pem).unwrap();
    let tls = ReloadableServerTls::new(
        server_pki.path("server.pem"),
        server_pki.path("server.key"),
        Some(&ca_file),
    )
    .unwrap();
    let srv = start(
        Server::new(ServerConfig::default())
            .route_blocker("blocker", Blocker::default())
            .reloadable_tls(&tls),
    )
    .await;
    let old_client = Pki::client_with_cert(&server_pki.ca, &old_ca.leaf("old client"));
    let new_client = Pki::client_with_cert(&server_pki.ca, &new_ca.leaf("new client"));
    assert!(served(srv.addr, old_client.clone()).await);
    assert!(!served(srv.addr, new_client.clone()).await);

    std::fs::write(&ca_file, &new_ca.ca_pem).unwrap();
    tls.reload().unwrap();
    assert!(served(srv.addr, new_client.clone()).await);
    assert!(!served(srv.addr, old_client.clone()).await);

    // An unusable CA file: the error names it, the new CA stays in force.
    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    let err = tls.reload().unwrap_err().to_string();
    assert!(err.contains("client-ca.pem"), "{err}");
    assert!(served(srv.addr, new_client).await);
    assert!(!served(srv.addr, old_client).await);
}
