//! OPTIONS transactions: a server's options (from its cache while fresh), and the probes and
//! connectivity tests built on OPTIONS. The cache itself is `options_cache`.

use std::time::Instant;

use crate::client::ClientError;
use crate::options::ServiceOptions;
use crate::proto::message::Request;
use crate::transaction::RequestBody;

use super::io::{Collect, Out};
use super::options_cache;
use super::pool::{Conn, Endpoint};
use super::Inner;

impl Inner {
    /// The server's options, from the cache while fresh.
    pub(crate) async fn options(
        &self,
        ep: &Endpoint,
        until: Instant,
    ) -> Result<ServiceOptions, ClientError> {
        if let Some(fresh) = options_cache::fresh(&ep.options) {
            return Ok(fresh);
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
        options_cache::store(&ep.options, &opts);
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
