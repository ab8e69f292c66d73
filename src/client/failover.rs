//! Failover and balancing: the order in which servers are tried (balance policy, lately
//! failed ones last, down ones left out or probed), the attempts of one call within its
//! deadline and retries, one attempt on one server (OPTIONS for the preview and
//! `Transfer-*`, a stale pooled connection retried once on a fresh one), and the hand-over
//! of a streamed answer. What counts against a server's health is decided here too.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::client::ClientError;
use crate::options::{ServiceOptions, Transfer};
use crate::proto::message::{Request, Response};
use crate::transaction::RequestBody;

use super::body::{Piece, Source, AHEAD};
use super::health::ProbeClaim;
use super::io::{Collect, Out, StreamOut};
use super::options_cache;
use super::pool::{Conn, Endpoint};
use super::{
    after, AnswerBody, Answered, Balance, Client, ClientRequest, ClientResponse, Deliver, Exchange,
    Inner, PreviewPolicy,
};

impl Client {
    /// The servers a call may use, in the order to try them. Down servers are left out (with
    /// a [`ClientError::Down`] in `skipped`) unless their probe is due: then it runs in the
    /// background while others are up, or here, within `until`, when none is. `advance`
    /// moves the round robin on.
    pub(crate) async fn plan(
        &self,
        until: Instant,
        advance: bool,
        skipped: &mut Vec<ClientError>,
    ) -> Vec<usize> {
        let order = self.inner.order(advance);
        let mut up = Vec::new();
        let mut down = Vec::new();
        for i in order {
            if self.inner.endpoints[i].is_down() {
                down.push(i);
            } else {
                up.push(i);
            }
        }
        for &i in &down {
            let ep = &self.inner.endpoints[i];
            if up.is_empty() {
                if ep.claim_probe() {
                    let _claim = ProbeClaim(ep);
                    let probe_until =
                        until.min(after(Instant::now(), self.inner.cfg.transaction_timeout));
                    self.inner.probe(ep, probe_until).await;
                    if !ep.is_down() {
                        up.push(i);
                        continue;
                    }
                }
            } else if ep.claim_probe() {
                let inner = self.inner.clone();
                tokio::spawn(async move {
                    let ep = &inner.endpoints[i];
                    let _claim = ProbeClaim(ep);
                    let until = after(Instant::now(), inner.cfg.transaction_timeout);
                    inner.probe(ep, until).await;
                });
            }
            skipped.push(ep.down_error());
        }
        up
    }

    /// The attempts of one call: servers in the planned order, then round again while
    /// retries are left, skipping servers that went down or timed out meanwhile. Failures
    /// before the answer reached the caller are retried (a one-shot body ends it).
    pub(crate) async fn call(
        &self,
        req: &ClientRequest,
        until: Instant,
        deliver: Deliver,
    ) -> Result<Answered, ClientError> {
        let cfg = &self.inner.cfg;
        let mut errors = Vec::new();
        let mut skipped = Vec::new();
        let plan = self.plan(until, true, &mut skipped).await;
        let mut spent = vec![false; self.inner.endpoints.len()];
        let mut attempts = 0;
        let attempts_allowed = cfg.retries.saturating_add(1);
        let mut turn = plan
            .iter()
            .cycle()
            .take(plan.len().saturating_mul(attempts_allowed));
        while attempts < attempts_allowed {
            if attempts > 0 && !req.body.retryable() {
                break;
            }
            let Some(&i) = turn.find(|&&i| !spent[i] && !self.inner.endpoints[i].is_down()) else {
                break;
            };
            let ep = &self.inner.endpoints[i];
            let now = Instant::now();
            if now >= until {
                errors.push(ClientError::Timeout {
                    server: ep.name(),
                    phase: "the call (deadline passed before trying this server)",
                });
                break;
            }
            attempts += 1;
            let attempt_until = until.min(after(now, cfg.transaction_timeout));
            match self.attempt(i, req, attempt_until, deliver).await {
                Ok(x) => return Ok(x),
                Err(e) => {
                    if counts_against_server(&e) {
                        ep.failed(cfg, &e);
                    }
                    if !retryable(&e) {
                        return Err(e);
                    }
                    // A server that did not answer in time, or answered without end, will
                    // not do better now: the rest of the deadline is for the others.
                    if matches!(
                        e,
                        ClientError::Timeout { .. } | ClientError::AnswerTooLarge { .. }
                    ) {
                        spent[i] = true;
                    }
                    errors.push(e);
                }
            }
        }
        errors.extend(skipped);
        if errors.is_empty() {
            // Every planned server went down (other calls' failures) before its turn.
            errors.extend(plan.iter().map(|&i| self.inner.endpoints[i].down_error()));
        }
        if errors.len() == 1 {
            Err(errors.pop().expect("one error"))
        } else {
            Err(ClientError::AllServersFailed(errors))
        }
    }

    /// One attempt on server `i`, within `until`, with one retry on a fresh connection when
    /// a pooled one turns out to have been closed by the server. A streamed answer's body
    /// is within `until` too.
    async fn attempt(
        &self,
        i: usize,
        req: &ClientRequest,
        until: Instant,
        deliver: Deliver,
    ) -> Result<Answered, ClientError> {
        let inner = &self.inner;
        let ep = &inner.endpoints[i];
        let Some((icap_req, rb)) = self.prepare(ep, req, until).await? else {
            return Ok(Answered::Ignored);
        };
        for fresh_retry in [false, true] {
            let (conn, reused) = if fresh_retry {
                (inner.connect(ep, until).await?, false)
            } else {
                inner.checkout(ep, until).await?
            };
            let reader = req.body.open().await.map_err(ClientError::Body)?;
            let result = match deliver {
                Deliver::Collect => {
                    self.collect(ep, conn, &icap_req, reader, rb, req, until)
                        .await
                }
                Deliver::Stream => {
                    let tls_version = conn.tls_version.clone();
                    self.stream(i, conn, icap_req.clone(), reader, rb, req, until)
                        .await
                        .map(|(head, body)| {
                            Answered::Stream(Box::new(ClientResponse {
                                server: ep.uri.clone(),
                                head,
                                body,
                                tls_version,
                            }))
                        })
                }
            };
            match result {
                Ok(answered) => return checked(ep, answered),
                Err((e, nothing_received)) => {
                    let stale = reused
                        && nothing_received
                        && matches!(e, ClientError::Io { .. } | ClientError::Protocol { .. })
                        && req.body.retryable();
                    if !stale {
                        return Err(e);
                    }
                }
            }
        }
        unreachable!("the fresh retry returns")
    }

    /// What to send to the server: the request with its preview, and how its body is
    /// framed; `None` when the server's OPTIONS say to ignore the file (`Transfer-Ignore`,
    /// asked with `skip_ignored`).
    async fn prepare(
        &self,
        ep: &Endpoint,
        req: &ClientRequest,
        until: Instant,
    ) -> Result<Option<(Request, RequestBody)>, ClientError> {
        let inner = &self.inner;
        let file_name = req.file_name.as_deref();
        let len = req.body.len().await.map_err(ClientError::Body)?;
        let has_body = !req.body.is_none();
        let needs_options = has_body && inner.cfg.preview == PreviewPolicy::FromOptions;
        let opts = if needs_options || req.skip_ignored {
            match inner.options(ep, until).await {
                Ok(o) => Some(o),
                // Only Transfer-Ignore asked: a server that refuses OPTIONS may still scan.
                Err(ClientError::Status { .. }) if !needs_options => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        if let (Some(o), Some(f), true) = (&opts, file_name, req.skip_ignored) {
            if o.transfer_for(f) == Transfer::Ignore {
                return Ok(None);
            }
        }
        let preview = if has_body {
            preview_size(inner.cfg.preview, opts.as_ref(), file_name, len)
        } else {
            None
        };
        let icap_req = req
            .to_request(&ep.uri, preview, &inner.cfg)
            .map_err(ClientError::Config)?;
        let rb = match (has_body, len) {
            (false, _) => RequestBody::None,
            (true, Some(n)) => RequestBody::Known(n),
            (true, None) => RequestBody::Unknown,
        };
        Ok(Some((icap_req, rb)))
    }

    /// Runs the transaction here and keeps its answer in memory (the start of the body, with
    /// the length and hash of all of it).
    #[allow(clippy::too_many_arguments)]
    async fn collect(
        &self,
        ep: &Endpoint,
        conn: Conn,
        icap_req: &Request,
        reader: Option<Source>,
        rb: RequestBody,
        req: &ClientRequest,
        until: Instant,
    ) -> Result<Answered, (ClientError, bool)> {
        let inner = &self.inner;
        let mut out = Out::Collect(Collect::new(inner.cfg.keep_body));
        let r = inner
            .run(
                ep,
                conn,
                icap_req,
                reader,
                rb,
                req.progress.as_deref(),
                &mut out,
                until,
            )
            .await;
        let Out::Collect(c) = out else {
            unreachable!("collected")
        };
        let done = r?;
        if let Some(conn) = done.conn {
            inner.checkin(ep, conn);
        }
        let body_digest = c.body_digest();
        let sent_digest = (!req.body.is_none()).then(|| c.sent_digest());
        let x = Exchange {
            server: ep.uri.clone(),
            body_digest,
            response: c.response.expect("an End follows a final head"),
            body: c.kept.freeze(),
            body_truncated: c.truncated,
            use_original_body: done.use_original_body,
            sent_digest,
            tls_version: done.tls_version,
            elapsed: done.elapsed,
        };
        Ok(Answered::Exchange(Box::new(x)))
    }

    /// Runs the transaction in a task of its own that hands the head back here and then
    /// streams the body to the [`AnswerBody`], giving the connection back to the pool at
    /// the end.
    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &self,
        i: usize,
        conn: Conn,
        icap_req: Request,
        reader: Option<Source>,
        rb: RequestBody,
        req: &ClientRequest,
        until: Instant,
    ) -> Result<(Response, AnswerBody), (ClientError, bool)> {
        let (head_tx, head_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(AHEAD);
        let inner = self.inner.clone();
        let progress = req.progress.clone();
        tokio::spawn(async move {
            let ep = &inner.endpoints[i];
            let mut out = Out::Stream(StreamOut {
                head: Some(head_tx),
                tx,
            });
            let r = inner
                .run(
                    ep,
                    conn,
                    &icap_req,
                    reader,
                    rb,
                    progress.as_deref(),
                    &mut out,
                    until,
                )
                .await;
            let Out::Stream(s) = out else {
                unreachable!("streamed")
            };
            match r {
                Ok(done) => {
                    // Back in the pool before the reader learns of the end, so that a call
                    // made next finds it there.
                    if let Some(c) = done.conn {
                        inner.checkin(ep, c);
                    }
                    // A reader gone after the last byte leaves a good connection.
                    let _ = s.tx.send(Ok(Piece::End(done.use_original_body))).await;
                }
                Err((e, nothing_received)) => match s.head {
                    Some(h) => {
                        let _ = h.send(Err((e, nothing_received)));
                    }
                    None => {
                        // The head went out: the call is over for failover, but the
                        // server's failure still counts towards its health.
                        if counts_against_server(&e) {
                            ep.failed(&inner.cfg, &e);
                        }
                        let _ = s.tx.send(Err(e)).await;
                    }
                },
            }
        });
        match head_rx.await {
            Ok(Ok(head)) => Ok((
                head,
                AnswerBody::streaming(rx, self.inner.endpoints[i].name()),
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err((
                ClientError::Io {
                    server: self.inner.endpoints[i].name(),
                    source: std::io::Error::other("the connection's driver stopped"),
                },
                false,
            )),
        }
    }
}

impl Inner {
    /// Indices of the servers in the order to try, by the balance policy, those that failed
    /// lately last. `advance` moves the round robin on by one.
    fn order(&self, advance: bool) -> Vec<usize> {
        let n = self.endpoints.len();
        let start = if advance {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            self.next.load(Ordering::Relaxed)
        } % n;
        let mut v: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        if self.cfg.balance == Balance::LeastLoaded {
            v.sort_by_key(|&i| self.endpoints[i].in_use());
        }
        // Stable: avoided servers go last but are still tried when nothing else is left.
        v.sort_by_key(|&i| self.endpoints[i].avoided());
        v
    }
}

/// Errors worth trying on another server (or again): the server or the path to it failed,
/// not the request. A server that breaks the protocol may be broken or hostile; its partner
/// may well answer.
/// An answer's head seen by the client: a new ISTag drops the cached OPTIONS, an ICAP error
/// status is an error.
fn checked(ep: &Endpoint, answered: Answered) -> Result<Answered, ClientError> {
    let head = match &answered {
        Answered::Exchange(x) => &x.response,
        Answered::Stream(r) => &r.head,
        Answered::Ignored => unreachable!("sent"),
    };
    options_cache::saw_istag(&ep.options, head);
    if head.status >= 400 {
        return Err(ClientError::Status {
            server: ep.name(),
            status: head.status,
            reason: String::from_utf8_lossy(&head.reason).into_owned(),
        });
    }
    Ok(answered)
}

/// The preview to offer for a body: by the policy, and with `FromOptions` by what the
/// server's OPTIONS say of this file.
fn preview_size(
    policy: PreviewPolicy,
    opts: Option<&ServiceOptions>,
    file_name: Option<&str>,
    len: Option<u64>,
) -> Option<u64> {
    match policy {
        PreviewPolicy::Off => None,
        PreviewPolicy::Fixed(n) => Some(len.map_or(n, |l| l.min(n))),
        PreviewPolicy::FromOptions => {
            let opts = opts.expect("options fetched for the preview");
            let wants = file_name.map_or(Transfer::Preview, |f| opts.transfer_for(f));
            if wants == Transfer::Preview
                || opts.transfer_preview.is_empty() && opts.preview.is_some()
            {
                opts.preview_for(len)
            } else {
                None
            }
        }
    }
}

fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. }
        | ClientError::Timeout { .. }
        | ClientError::Io { .. }
        | ClientError::Tls { .. }
        | ClientError::Protocol { .. }
        | ClientError::AnswerTooLarge { .. } => true,
        ClientError::Status { status, .. } => *status >= 500,
        _ => false,
    }
}

/// Failures that count towards marking the server down: the same as the retryable ones
/// (a 4xx, a bad configuration or our own unreadable body are no fault of the server).
pub(crate) fn counts_against_server(e: &ClientError) -> bool {
    retryable(e)
}
