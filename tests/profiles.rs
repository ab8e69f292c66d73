//! The DLP connection types end to end: each client profile against the example server
//! emulating that vendor, for clean and blocked files, over plain ICAP and over TLS with a
//! client certificate. The Symantec case is the one a naive status check gets wrong: its
//! block is an ICAP 200 carrying `HTTP/1.1 200 OK`.
#![cfg(all(feature = "scan", feature = "server"))]

use icap_dlp_engine::service as dlp_service;
mod net;

use bytes::Bytes;
use icap::client::{BodySource, Client, ClientConfig};
use icap::dlp::Profile;
use icap::dlp::{ScanMode, ScanRequest};
use icap::tls::{ClientTls, ServerTls};
use net::pki;

const CLEAN: &[u8] = b"Minutes of the planning meeting. Nothing to see here.\n";
const CARD: &[u8] = b"name,card\nAda,4111 1111 1111 1111\n";

fn server_tls() -> ServerTls {
    ServerTls::from_pem_files(pki("server-chain.pem"), pki("server.key"))
        .unwrap()
        .require_client_certs(pki("ca.pem"))
        .unwrap()
}

fn client_tls() -> ClientTls {
    ClientTls::default()
        .with_ca_file(pki("ca.pem"))
        .unwrap()
        .with_client_cert_files(pki("client.pem"), pki("client.key"))
        .unwrap()
}

/// (client profile, mode, emulated vendor, expected block reason start)
fn matrix() -> Vec<(Profile, ScanMode, dlp_service::Profile, &'static str)> {
    vec![
        (
            Profile::Symantec,
            ScanMode::Reqmod,
            dlp_service::Profile::Symantec,
            "REQMOD answered with an HTTP response (HTTP/1.1 200 OK)",
        ),
        (
            Profile::Forcepoint,
            ScanMode::Reqmod,
            dlp_service::Profile::Forcepoint,
            "HTTP 403 block page",
        ),
        (
            Profile::Generic,
            ScanMode::Reqmod,
            dlp_service::Profile::Generic,
            "X-Violations-Found: ",
        ),
        (
            Profile::Generic,
            ScanMode::Respmod,
            dlp_service::Profile::Generic,
            "X-Violations-Found: ",
        ),
    ]
}

async fn run_matrix(tls: bool) {
    for (profile, mode, vendor, reason) in matrix() {
        let cfg = dlp_service::DlpConfig::new(icap_dlp_engine::Rules::default(), vendor);
        let server = if tls { Some(server_tls()) } else { None };
        let running = dlp_service::spawn_loopback(cfg, server.as_ref())
            .await
            .unwrap();
        let path = if mode == ScanMode::Reqmod {
            "reqmod"
        } else {
            "respmod"
        };
        let (scheme, host) = if tls {
            ("icaps", "localhost")
        } else {
            ("icap", "127.0.0.1")
        };
        let uri = format!("{scheme}://{host}:{}/{path}", running.addr().port());
        let ccfg = ClientConfig::default()
            .tls(if tls {
                client_tls()
            } else {
                ClientTls::default()
            })
            .retries(0);
        let client = Client::new(&[uri.as_str()], ccfg).unwrap();
        let scan = |body: &'static [u8]| {
            let mut r = ScanRequest::new(
                mode,
                "export.csv",
                BodySource::Bytes(Bytes::from_static(body)),
            );
            r.profile = profile;
            r.content_type = "text/csv".into();
            r
        };
        let clean = client.scan(scan(CLEAN)).await.unwrap();
        assert_eq!(
            clean.verdict.label(),
            "allowed",
            "{vendor:?} {mode:?} tls={tls}: {}",
            clean.verdict
        );
        let blocked = client.scan(scan(CARD)).await.unwrap();
        assert!(
            blocked.verdict.is_blocked(),
            "{vendor:?} {mode:?} tls={tls}: {}",
            blocked.verdict
        );
        assert!(
            blocked.verdict.reason().starts_with(reason),
            "{vendor:?} {mode:?} tls={tls}: {}",
            blocked.verdict
        );
        let x = blocked.exchange.as_ref().unwrap();
        assert_eq!(x.tls_version.is_some(), tls);
        if vendor == dlp_service::Profile::Symantec {
            // What a status-only check would see: ICAP 200 and HTTP 200.
            assert_eq!(x.response.status, 200);
            assert_eq!(x.response.http_response.as_ref().unwrap().status, 200);
        }
        if vendor == dlp_service::Profile::Forcepoint {
            assert!(
                x.body.len() > dlp_service::FORCEPOINT_MIN_PAGE,
                "Forcepoint pages exceed 512 bytes"
            );
        }
        running.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn every_profile_clean_and_blocked_over_plain_icap() {
    run_matrix(false).await;
}

#[tokio::test]
async fn every_profile_clean_and_blocked_over_mtls() {
    run_matrix(true).await;
}

#[tokio::test]
async fn symantec_block_misread_by_a_status_check_is_caught_by_the_generic_rules_too() {
    // Even without the Symantec profile, a REQMOD answered with a response is not "allowed".
    let cfg = dlp_service::DlpConfig::new(
        icap_dlp_engine::Rules::default(),
        dlp_service::Profile::Symantec,
    );
    let running = dlp_service::spawn_loopback(cfg, None).await.unwrap();
    let client = Client::new(
        &[format!("icap://127.0.0.1:{}/reqmod", running.addr().port())],
        ClientConfig::default(),
    )
    .unwrap();
    let r = ScanRequest::new(
        ScanMode::Reqmod,
        "x.csv",
        BodySource::Bytes(Bytes::from_static(CARD)),
    );
    let out = client.scan(r).await.unwrap();
    assert!(out.verdict.is_blocked(), "{}", out.verdict);
    running.shutdown().await.unwrap();
}
