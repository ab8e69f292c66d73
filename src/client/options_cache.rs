//! Each server's OPTIONS, cached for its `Options-TTL` (dropped when an answer shows
//! another ISTag), and the probes and connectivity tests built on OPTIONS.

use std::time::{Duration, Instant};

use crate::error::ClientError;
use crate::message::{Request, Response};
use crate::options::ServiceOptions;
use crate::transaction::RequestBody;

use super::io::{Collect, Out};
use super::pool::{CachedOptions, Conn, Endpoint};
use super::Inner;

impl Endpoint {
    /// A changed ISTag means the service changed: its cached options are stale.
    pub(crate) fn saw_istag(&self, res: &Response) {
        if let Some(tag) = res.headers.get_str("ISTag") {
            let mut cached = self.options.lock().expect("not poisoned");
            if cached.as_ref().is_some_and(|c| c.options.istag != tag) {
                *cached = None;
            }
        }
    }
}

impl Inner {
    /// The server's options, from the cache while fresh.
    pub(crate) async fn options(
        &self,
        ep: &Endpoint,
        until: Instant,
    ) -> Result<ServiceOptions, ClientError> {
        {
            let cached = ep.options.lock().expect("not poisoned");
            if let Some(c) = cached.as_ref() {
                let fresh = c
                    .options
                    .options_ttl
                    .is_none_or(|ttl| c.fetched.elapsed() < Duration::from_secs(ttl));
                if fresh {
                    return Ok(c.options.clone());
                }
            }
        }
        let (conn, _) = self.checkout(ep, until).await?;
        self.fetch_options(ep, conn, until).await
    }

    /// OPTIONS on `conn`; the answer is cached and may lower the connection limit.
    pub(crate) async fn fetch_options(
        &self,
        ep: &Endpoint,
        conn: Conn,
        until: Instant,
    ) -> Result<ServiceOptions, ClientError> {
        let server = ep.name();
        let req = Request::options(&ep.uri)
            .user_agent(&self.cfg.user_agent)
            .build()
            .map_err(ClientError::Build)?;
        let mut out = Out::Collect(Collect::new(0));
        let done = self
            .run(
                ep,
                conn,
                &req,
                None,
                RequestBody::None,
                None,
                &mut out,
                until,
            )
            .await
            .map_err(|(e, _)| e)?;
        if let Some(c) = done.conn {
            self.checkin(ep, c);
        }
        let Out::Collect(c) = out else {
            unreachable!("collected")
        };
        let response = c.response.expect("an End follows a final head");
        if response.status != 200 {
            return Err(ClientError::Status {
                server,
                status: response.status,
                reason: String::from_utf8_lossy(&response.reason).into_owned(),
            });
        }
        let opts = ServiceOptions::from_response(&response)
            .map_err(|e| ClientError::Protocol { server, source: e })?;
        if let Some(max) = opts.max_connections {
            ep.lower_limit(max);
        }
        *ep.options.lock().expect("not poisoned") = Some(CachedOptions {
            options: opts.clone(),
            fetched: Instant::now(),
        });
        Ok(opts)
    }

    /// OPTIONS on a new connection to a down server; the answer decides whether it is back.
    pub(crate) async fn probe(&self, ep: &Endpoint, until: Instant) {
        let r = async {
            let conn = self.connect(ep, until).await?;
            self.fetch_options(ep, conn, until).await
        }
        .await;
        ep.options_result(&self.cfg, &r);
    }
}
