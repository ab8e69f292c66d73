//! The tracing span of every transaction, client and server side: its fields (service,
//! method, status, verdict, bytes each way, duration, peer) read back from a capturing
//! layer, the byte counts of one side matched against the other's, failures as events with
//! their kind, and no event per body chunk. A binary of its own: a thread-local subscriber
//! is not reliably consulted by callsites that other test threads registered first.
#![cfg(all(feature = "scan", feature = "server"))]

mod net;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use icap::client::{BodySource, Client, ClientConfig};
use icap::dlp::{ScanMode, ScanRequest};
use icap::server::ServerConfig;
use net::blocker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

fn scan(body: &'static [u8]) -> ScanRequest {
    ScanRequest::new(
        ScanMode::Reqmod,
        "report.txt",
        BodySource::Bytes(Bytes::from_static(body)),
    )
}

/// One closed span: its name and fields.
type Closed = (String, BTreeMap<String, String>);

/// Collects the fields of every span until it closes, and counts events.
#[derive(Clone, Default)]
struct Capture {
    closed: Arc<Mutex<Vec<Closed>>>,
    events: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
}

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            format!("{value:?}").trim_matches('"').to_string(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Fields(BTreeMap::new());
        attrs.record(&mut f);
        ctx.span(id).unwrap().extensions_mut().insert(f);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        let mut ext = span.extensions_mut();
        values.record(ext.get_mut::<Fields>().unwrap());
    }
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields(BTreeMap::new());
        event.record(&mut f);
        self.events.lock().unwrap().push(f.0);
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        let fields = span.extensions_mut().remove::<Fields>().unwrap().0;
        self.closed
            .lock()
            .unwrap()
            .push((span.name().to_string(), fields));
    }
}

#[tokio::test]
async fn one_span_per_transaction_on_each_side_with_its_outcome_and_no_event_per_chunk() {
    let cap = Capture::default();
    let subscriber = tracing_subscriber::registry().with(cap.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let srv = blocker(ServerConfig::default()).await;
    let client = Client::new(&[srv.uri("icap", "blocker")], ClientConfig::default()).unwrap();
    // 4 MiB in 64 KiB pieces: hundreds of chunks each way.
    let big: &'static [u8] = Box::leak(vec![b'a'; 4 << 20].into_boxed_slice());
    client.scan(scan(big)).await.unwrap();
    client
        .scan(scan(b"this has the BLOCK word past the preview"))
        .await
        .unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut no_retry = ClientConfig::default();
    no_retry.retries = 0;
    let unreachable = Client::new(&[format!("icap://{dead}/blocker")], no_retry).unwrap();
    assert!(unreachable.scan(scan(b"x")).await.is_err());
    // A partner that answers HTTP instead of ICAP.
    let liar = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liar_addr = liar.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = liar.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await;
    });
    let mut once = ClientConfig::default();
    once.retries = 0;
    let lied_to = Client::new(&[format!("icap://{liar_addr}/blocker")], once).unwrap();
    assert!(lied_to.scan(scan(b"x")).await.is_err());
    drop(client);
    srv.stop().await;

    let closed = cap.closed.lock().unwrap().clone();
    let spans = |name: &str| -> Vec<BTreeMap<String, String>> {
        closed
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    };
    let server = spans("icap.server.transaction");
    let (client, lied): (Vec<_>, Vec<_>) = spans("icap.client.transaction")
        .into_iter()
        .partition(|f| f["server"] != format!("icap://{liar_addr}/blocker"));
    let methods = |v: &[BTreeMap<String, String>]| -> Vec<(String, String, String)> {
        v.iter()
            .map(|f| {
                (
                    f["method"].clone(),
                    f["status"].clone(),
                    f["verdict"].clone(),
                )
            })
            .collect()
    };
    let want = [
        ("OPTIONS", "200", "options"),
        ("REQMOD", "204", "clean"),
        ("REQMOD", "200", "blocked"),
    ]
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
    assert_eq!(methods(&server), want, "{server:?}");
    // No connection, no transaction: the failed connect is an event (below), not a span.
    assert_eq!(methods(&client), want, "{client:?}");
    for (s, c) in server.iter().zip(&client) {
        assert_eq!(s["service"], "blocker");
        assert_eq!(c["service"], "blocker");
        assert!(s["peer"].starts_with("127.0.0.1:"), "{s:?}");
        assert_eq!(
            c["server"],
            format!("icap://127.0.0.1:{}/blocker", srv_port(c))
        );
        assert!(s.contains_key("duration_ms") && c.contains_key("duration_ms"));
        assert_eq!(s["bytes_received"], c["bytes_sent"], "{s:?} {c:?}");
        assert_eq!(s["bytes_sent"], c["bytes_received"], "{s:?} {c:?}");
    }
    let clean_sent: u64 = client[1]["bytes_sent"].parse().unwrap();
    assert!(clean_sent > 4 << 20, "{clean_sent}");
    // The transaction with the liar: its span carries the error's kind, no status.
    assert_eq!(lied.len(), 1, "{lied:?}");
    assert_eq!(lied[0]["method"], "OPTIONS");
    assert_eq!(lied[0]["error"], "protocol", "{lied:?}");
    assert_eq!(lied[0]["status"], "0");
    assert_eq!(lied[0]["verdict"], "none");
    let events = cap.events.lock().unwrap().clone();
    // The failures are events with their kind, and the only ones: the hundreds of chunks
    // made none.
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0]["kind"], "connect", "{events:?}");
    assert_eq!(events[1]["kind"], "protocol", "{events:?}");
    assert!(
        events[1]["message"].starts_with("ICAP transaction failed: "),
        "{events:?}"
    );
    assert!(
        events[0]["message"].starts_with(&format!(
            "ICAP connection failed: icap://{dead}/blocker: cannot connect"
        )),
        "{events:?}"
    );
}

/// The port of a client span's `server` field.
fn srv_port(fields: &BTreeMap<String, String>) -> u16 {
    let s = &fields["server"];
    let rest = s.strip_prefix("icap://127.0.0.1:").unwrap();
    rest[..rest.find('/').unwrap()].parse().unwrap()
}
