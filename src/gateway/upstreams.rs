//! The upstream ICAP servers: round-robin choice among those up, connections (new or kept
//! alive, through the pool shared with the client), health (the shared squid model) and
//! the `OPTIONS` probes that feed it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proto::decode::{ResponseDecoder, ResponseEvent};
use crate::proto::head::Method;
use crate::upstream::{Change, Health, IdlePool, Policy};
use crate::uri::IcapUri;
use crate::ServerHealth;

use super::{GatewayConfig, GatewayError};

pub(super) struct Upstream {
    pub(super) uri: IcapUri,
    /// `host:port`, as errors and logs name it.
    pub(super) addr: String,
    idle: IdlePool<TcpStream>,
    health: Health,
    /// Connections carrying a transaction now (see [`Busy`]).
    busy: AtomicUsize,
}

/// Counts one connection as carrying a transaction for as long as it lives, however the
/// transaction ends.
pub(super) struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    fn new(uri: IcapUri) -> Self {
        Upstream {
            addr: format!("{}:{}", uri.host(), uri.port()),
            uri,
            idle: IdlePool::new(),
            health: Health::new(),
            busy: AtomicUsize::new(0),
        }
    }

    /// Counts a transaction failure; the limit-th in the window marks it down.
    pub(super) fn failed(&self, p: &Policy, e: &GatewayError) {
        let change = self.health.failed(p, e.to_string());
        self.changed(change, e);
    }

    fn probed(&self, p: &Policy, r: Result<(), GatewayError>) {
        match r {
            Ok(()) => {
                let change = self.health.options_result(p, Ok(()));
                if change == Change::Revived {
                    tracing::info!(upstream = %self.addr, "upstream revived");
                }
            }
            Err(e) => {
                let change = self.health.options_result(p, Err(e.to_string()));
                self.changed(change, &e);
            }
        }
    }

    fn changed(&self, change: Change, why: &GatewayError) {
        if change == Change::Down {
            // Kept connections to a failing upstream are not to be trusted after it
            // comes back.
            self.idle.clear();
            tracing::warn!(upstream = %self.addr, why = %why, "upstream marked down");
        }
    }

    /// A kept-alive connection (true) when one is fresh and `fresh` is not asked, else a
    /// new one.
    pub(super) async fn connection(
        &self,
        cfg: &GatewayConfig,
        fresh: bool,
    ) -> Result<(TcpStream, bool), GatewayError> {
        if !fresh {
            if let Some(c) = self.idle.take(cfg.idle_timeout, |_| true) {
                return Ok((c, true));
            }
        }
        Ok((self.connect(cfg.connect_timeout).await?, false))
    }

    /// Marks a connection as carrying a transaction until the guard drops.
    pub(super) fn busy(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(&self.busy)
    }

    /// Keeps `c` for the next transaction.
    pub(super) fn keep(&self, c: TcpStream, cfg: &GatewayConfig) {
        self.idle.put(c, cfg.max_idle_per_upstream);
    }

    async fn connect(&self, limit: Duration) -> Result<TcpStream, GatewayError> {
        let addr = (self.uri.host().trim_matches(['[', ']']), self.uri.port());
        match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(c)) => {
                let _ = c.set_nodelay(true);
                Ok(c)
            }
            Ok(Err(source)) => Err(GatewayError::UpstreamIo {
                upstream: self.addr.clone(),
                op: "connect",
                source,
            }),
            Err(_) => Err(GatewayError::UpstreamTimeout {
                upstream: self.addr.clone(),
                phase: "connect",
                after: limit,
            }),
        }
    }

    /// `OPTIONS` on a fresh connection: `Ok` for a `200`.
    async fn probe(&self, cfg: &GatewayConfig) -> Result<(), GatewayError> {
        let mut c = self.connect(cfg.connect_timeout).await?;
        let req = format!(
            "OPTIONS {} ICAP/1.0\r\nHost: {}\r\nEncapsulated: null-body=0\r\nConnection: close\r\n\r\n",
            self.uri,
            self.uri.host_header()
        );
        let upstream = || self.addr.clone();
        let io = |op, source| GatewayError::UpstreamIo {
            upstream: upstream(),
            op,
            source,
        };
        let work = async {
            c.write_all(req.as_bytes())
                .await
                .map_err(|e| io("write", e))?;
            let mut dec = ResponseDecoder::new(cfg.limits);
            dec.expect_response_to(Some(Method::Options));
            loop {
                let ev = dec
                    .decode()
                    .map_err(|source| GatewayError::UpstreamProtocol {
                        upstream: upstream(),
                        source,
                    })?;
                match ev {
                    Some(ResponseEvent::Head(res)) if res.status == 200 => return Ok(()),
                    Some(ResponseEvent::Head(res)) => {
                        return Err(GatewayError::UpstreamStatus {
                            upstream: upstream(),
                            status: res.status,
                        })
                    }
                    Some(_) => {}
                    None => {
                        if c.read_buf(dec.buffer_mut())
                            .await
                            .map_err(|e| io("read", e))?
                            == 0
                        {
                            return Err(GatewayError::UpstreamClosed {
                                upstream: upstream(),
                            });
                        }
                    }
                }
            }
        };
        tokio::time::timeout(cfg.upstream_timeout, work)
            .await
            .map_err(|_| GatewayError::UpstreamTimeout {
                upstream: upstream(),
                phase: "OPTIONS probe",
                after: cfg.upstream_timeout,
            })?
    }

    fn report(&self, window: Duration) -> ServerHealth {
        self.health.report(
            self.uri.clone(),
            window,
            self.busy.load(Ordering::Relaxed),
            self.idle.len(),
        )
    }
}

/// The configured upstreams and the round-robin cursor.
pub(super) struct Upstreams {
    list: Vec<Upstream>,
    next: AtomicUsize,
}

impl Upstreams {
    pub(super) fn new(uris: Vec<IcapUri>) -> Result<Self, GatewayError> {
        if uris.is_empty() {
            return Err(GatewayError::Config("no upstream given".into()));
        }
        if let Some(u) = uris.iter().find(|u| u.is_tls()) {
            return Err(GatewayError::Config(format!(
                "upstream {u}: upstreams speak plain ICAP (icap://)"
            )));
        }
        Ok(Upstreams {
            list: uris.into_iter().map(Upstream::new).collect(),
            next: AtomicUsize::new(0),
        })
    }

    pub(super) fn get(&self, i: usize) -> &Upstream {
        &self.list[i]
    }

    /// The next upstream that is up and not tried yet, round robin.
    pub(super) fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| !tried.contains(&i) && !self.list[i].health.is_down())
    }

    /// Probes every upstream that is up, and every down one whose revival delay has
    /// passed.
    pub(super) async fn probe_all(&self, cfg: &GatewayConfig) {
        let p = cfg.health_policy();
        for u in &self.list {
            if !u.health.is_down() {
                u.probed(&p, u.probe(cfg).await);
            } else if u.health.claim_probe() {
                let r = u.probe(cfg).await;
                u.probed(&p, r);
                u.health.end_probe();
            }
        }
    }

    pub(super) fn report(&self, cfg: &GatewayConfig) -> Vec<ServerHealth> {
        self.list
            .iter()
            .map(|u| u.report(cfg.failure_window))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn uri(port: u16) -> IcapUri {
        IcapUri::parse(&format!("icap://127.0.0.1:{port}/reqmod")).unwrap()
    }

    /// An upstream that answers one `OPTIONS` per connection with `status`, and the request
    /// it read.
    async fn options_upstream(status: u16) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            while !req.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 256];
                let n = c.read(&mut b).await.unwrap();
                assert!(n > 0);
                req.extend_from_slice(&b[..n]);
            }
            let answer = format!(
                "ICAP/1.0 {status} X\r\nISTag: \"t\"\r\nMethods: REQMOD\r\nEncapsulated: null-body=0\r\n\r\n"
            );
            c.write_all(answer.as_bytes()).await.unwrap();
            req
        });
        (port, task)
    }

    fn dead_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn no_upstream_or_a_tls_one_is_a_configuration_error() {
        let e = Upstreams::new(vec![]).err().unwrap();
        assert!(matches!(e, GatewayError::Config(_)), "{e}");
        let tls = IcapUri::parse("icaps://127.0.0.1:11344/reqmod").unwrap();
        let e = Upstreams::new(vec![uri(1344), tls]).err().unwrap();
        assert_eq!(
            e.to_string(),
            "gateway configuration: upstream icaps://127.0.0.1:11344/reqmod: upstreams speak plain ICAP (icap://)"
        );
    }

    #[test]
    fn pick_goes_round_robin_over_those_up_and_not_tried() {
        let ups = Upstreams::new(vec![uri(1), uri(2), uri(3)]).unwrap();
        let first: Vec<_> = (0..3).map(|_| ups.pick(&[]).unwrap()).collect();
        assert_eq!(first, [0, 1, 2]);
        let p = GatewayConfig::default().failure_limit(1).health_policy();
        ups.get(1)
            .failed(&p, &GatewayError::NoUpstream { last: None });
        let next: Vec<_> = (0..4).map(|_| ups.pick(&[]).unwrap()).collect();
        assert_eq!(next, [0, 2, 2, 0]);
        assert_eq!(ups.pick(&[0, 2]), None);
        let h = ups.report(&GatewayConfig::default());
        assert!(h[0].up && !h[1].up && h[2].up);
        assert_eq!(h[1].recent_failures, 1);
        assert_eq!(
            h[1].last_error.as_deref(),
            Some("no upstream could take the transaction")
        );
    }

    #[tokio::test]
    async fn a_probe_sends_options_and_a_200_keeps_it_up() {
        let (port, task) = options_upstream(200).await;
        let ups = Upstreams::new(vec![uri(port)]).unwrap();
        ups.probe_all(&GatewayConfig::default()).await;
        let req = task.await.unwrap();
        assert_eq!(
            String::from_utf8(req).unwrap(),
            format!("OPTIONS icap://127.0.0.1:{port}/reqmod ICAP/1.0\r\nHost: 127.0.0.1:{port}\r\nEncapsulated: null-body=0\r\nConnection: close\r\n\r\n")
        );
        assert!(ups.report(&GatewayConfig::default())[0].up);
    }

    #[tokio::test]
    async fn a_bad_probe_marks_down_and_a_good_one_after_the_delay_revives() {
        let cfg = GatewayConfig::default().revival_delay(Duration::from_millis(50));
        let (port, task) = options_upstream(503).await;
        let ups = Upstreams::new(vec![uri(port)]).unwrap();
        ups.probe_all(&cfg).await;
        task.await.unwrap();
        let h = &ups.report(&cfg)[0];
        assert!(!h.up);
        assert_eq!(
            h.last_error.as_deref(),
            Some(format!("upstream 127.0.0.1:{port}: OPTIONS probe answered 503").as_str())
        );
        let (port2, task2) = options_upstream(200).await;
        let ups2 = Upstreams::new(vec![uri(port2)]).unwrap();
        ups2.get(0).failed(
            &cfg.clone().failure_limit(1).health_policy(),
            &GatewayError::ClientClosed,
        );
        assert!(!ups2.report(&cfg)[0].up);
        tokio::time::sleep(Duration::from_millis(80)).await;
        ups2.probe_all(&cfg).await;
        task2.await.unwrap();
        assert!(ups2.report(&cfg)[0].up);
    }

    #[tokio::test]
    async fn a_refused_connect_names_the_upstream() {
        let port = dead_port();
        let ups = Upstreams::new(vec![uri(port)]).unwrap();
        let e = ups
            .get(0)
            .connection(&GatewayConfig::default(), false)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&e, GatewayError::UpstreamIo { op: "connect", upstream, .. } if *upstream == format!("127.0.0.1:{port}")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn kept_connections_are_reused_up_to_the_limit() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let cfg = GatewayConfig::default().max_idle_per_upstream(1);
        let ups = Upstreams::new(vec![uri(port)]).unwrap();
        let u = ups.get(0);
        let (a, pooled) = u.connection(&cfg, false).await.unwrap();
        assert!(!pooled);
        let (b, _) = u.connection(&cfg, false).await.unwrap();
        let a_local = a.local_addr().unwrap();
        u.keep(a, &cfg);
        u.keep(b, &cfg);
        assert_eq!(ups.report(&cfg)[0].idle_connections, 1);
        let (c, pooled) = u.connection(&cfg, false).await.unwrap();
        assert!(pooled);
        assert_eq!(c.local_addr().unwrap(), a_local);
        // `fresh` skips the pool.
        u.keep(c, &cfg);
        let (_, pooled) = u.connection(&cfg, true).await.unwrap();
        assert!(!pooled);
        assert_eq!(ups.report(&cfg)[0].idle_connections, 1);
    }
}
