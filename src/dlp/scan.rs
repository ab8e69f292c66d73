//! The DLP scanner (feature `scan`): a file in, a [`Verdict`] out.
//!
//! [`Client::scan`] wraps a file as the body of an HTTP upload (REQMOD) or download
//! (RESPMOD), sends it through the [`Client`] (preview, `Allow: 204` and `Transfer-*` as the
//! server's OPTIONS say, failover, health, deadline) and draws a verdict by the rules of a
//! vendor [`Profile`]. Errors never become `Allowed` unless
//! [`ClientConfig::fail_open`](crate::client::ClientConfig::fail_open) says so. The rules
//! themselves, which need no client, are in `verdict.rs`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::verdict::{canonical, judge, Answer, Profile, Verdict};
use crate::client::ClientError;
use crate::client::{after, Answered, BodySource, Client, ClientRequest, Deliver, Exchange};
use crate::proto::fields::Headers;
use crate::proto::head::{HttpRequestHead, HttpResponseHead, Method};

/// Whether a REQMOD or a RESPMOD carries the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScanMode {
    /// The file is the body of an HTTP upload (POST).
    #[default]
    Reqmod,
    /// The file is the body of an HTTP response to a GET of a URL naming it.
    Respmod,
}

/// A file to scan.
#[non_exhaustive]
pub struct ScanRequest {
    /// REQMOD (upload) or RESPMOD (download).
    pub mode: ScanMode,
    /// How blocks are recognised.
    pub profile: Profile,
    /// The file's name: used in the embedded URL and for the `Transfer-*` rules.
    pub file_name: String,
    /// `Content-Type` of the embedded message. Default `application/octet-stream`.
    pub content_type: String,
    /// The content.
    pub body: BodySource,
    /// `X-Client-IP`.
    pub client_ip: Option<IpAddr>,
    /// `X-Server-IP`.
    pub server_ip: Option<IpAddr>,
    /// `X-Authenticated-User`.
    pub user: Option<String>,
    /// More ICAP headers.
    pub headers: Vec<(String, String)>,
    /// The embedded URL; default `http://upload.icap.invalid/<file_name>` (REQMOD) or
    /// `http://download.icap.invalid/<file_name>` (RESPMOD).
    pub url: Option<String>,
    /// Called with the number of body bytes sent so far.
    pub progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl std::fmt::Debug for ScanRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanRequest")
            .field("mode", &self.mode)
            .field("profile", &self.profile)
            .field("file_name", &self.file_name)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl ScanRequest {
    /// A scan of `body` named `file_name` in `mode`, generic profile.
    pub fn new(mode: ScanMode, file_name: impl Into<String>, body: impl Into<BodySource>) -> Self {
        ScanRequest {
            mode,
            profile: Profile::Generic,
            file_name: file_name.into(),
            content_type: "application/octet-stream".into(),
            body: body.into(),
            client_ip: None,
            server_ip: None,
            user: None,
            headers: Vec::new(),
            url: None,
            progress: None,
        }
    }

    /// The vendor profile whose rules draw the verdict.
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// `Content-Type` of the embedded message.
    pub fn content_type(mut self, ct: impl Into<String>) -> Self {
        self.content_type = ct.into();
        self
    }

    /// The embedded URL.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Another ICAP header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A scan's result.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScanOutcome {
    /// The verdict and why.
    pub verdict: Verdict,
    /// The exchange it was drawn from (`None` when fail-open turned an error into Allowed,
    /// or when `Transfer-Ignore` said not to send the file).
    pub exchange: Option<Exchange>,
    /// The error a fail-open verdict stands for.
    pub error: Option<String>,
}

impl Client {
    /// Scans a file: wraps it as the body of an HTTP upload (REQMOD) or download (RESPMOD),
    /// sends it with preview and `Allow: 204` as the server's options say, and draws the
    /// verdict by the rules of `req.profile`, all within the client's deadline.
    pub async fn scan(&self, req: ScanRequest) -> Result<ScanOutcome, ClientError> {
        match self.scan_inner(req).await {
            Ok(o) => Ok(o),
            Err(e) if self.config().fail_open => Ok(ScanOutcome {
                verdict: Verdict::Allowed {
                    reason: format!("fail-open after error: {e}"),
                },
                exchange: None,
                error: Some(e.to_string()),
            }),
            Err(e) => Err(e),
        }
    }

    async fn scan_inner(&self, req: ScanRequest) -> Result<ScanOutcome, ClientError> {
        let until = after(Instant::now(), self.config().deadline);
        let len = req.body.len().await.map_err(ClientError::Body)?;
        let (http_req, http_res) = embedded_heads(&req, len);
        let sent_head = match req.mode {
            ScanMode::Reqmod => canonical(&http_req.line(), &http_req.headers),
            ScanMode::Respmod => {
                let r = http_res.as_ref().expect("RESPMOD has a response head");
                canonical(&r.line(), &r.headers)
            }
        };
        let ScanRequest {
            mode,
            profile,
            file_name,
            body,
            client_ip,
            server_ip,
            user,
            headers,
            progress,
            ..
        } = req;
        let mut call = match http_res {
            None => ClientRequest::reqmod(http_req),
            Some(res) => ClientRequest::respmod(res).http_request(http_req),
        }
        .body(body)
        .file_name(file_name.clone())
        .progress_arc(progress);
        call.skip_ignored = true;
        if let Some(ip) = client_ip {
            call = call.client_ip(ip);
        }
        if let Some(ip) = server_ip {
            call = call.server_ip(ip);
        }
        if let Some(u) = &user {
            call = call.authenticated_user(u);
        }
        for (n, v) in &headers {
            call = call.header(n.as_str(), v);
        }
        let x = match self.call(&call, until, Deliver::Collect).await? {
            Answered::Exchange(x) => *x,
            Answered::Ignored => {
                return Ok(ScanOutcome {
                    verdict: Verdict::Allowed {
                        reason: format!(
                            "not sent: the service's Transfer-Ignore covers {file_name}"
                        ),
                    },
                    exchange: None,
                    error: None,
                })
            }
            Answered::Stream(_) => unreachable!("a scan collects its answer"),
        };
        let method = match mode {
            ScanMode::Reqmod => Method::Reqmod,
            ScanMode::Respmod => Method::Respmod,
        };
        let answer = Answer {
            method: &method,
            response: &x.response,
            sent_body: x.sent_digest,
            returned_body: x.body_digest,
            body_prefix: &x.body,
            sent_head: Some(sent_head),
        };
        let verdict = judge(&profile.rules(), &answer);
        Ok(ScanOutcome {
            verdict,
            exchange: Some(x),
            error: None,
        })
    }
}

/// The HTTP heads a file travels in: an upload for REQMOD, a download for RESPMOD.
fn embedded_heads(
    req: &ScanRequest,
    len: Option<u64>,
) -> (HttpRequestHead, Option<HttpResponseHead>) {
    let safe: String = req
        .file_name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("file")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let len_s = len.map(|n| n.to_string());
    match req.mode {
        ScanMode::Reqmod => {
            let url = req
                .url
                .clone()
                .unwrap_or_else(|| format!("http://upload.icap.invalid/{safe}"));
            let host = host_of(&url);
            let mut h: Headers = [
                ("Host", host.as_str()),
                ("Content-Type", req.content_type.as_str()),
            ]
            .into_iter()
            .collect();
            h.append(
                "Content-Disposition",
                format!("attachment; filename=\"{safe}\""),
            );
            if let Some(n) = &len_s {
                h.append("Content-Length", n);
            }
            (HttpRequestHead::new("POST", &url, h), None)
        }
        ScanMode::Respmod => {
            let url = req
                .url
                .clone()
                .unwrap_or_else(|| format!("http://download.icap.invalid/{safe}"));
            let host = host_of(&url);
            let reqh =
                HttpRequestHead::new("GET", &url, [("Host", host.as_str())].into_iter().collect());
            let mut h: Headers = [("Content-Type", req.content_type.as_str())]
                .into_iter()
                .collect();
            h.append(
                "Content-Disposition",
                format!("attachment; filename=\"{safe}\""),
            );
            if let Some(n) = &len_s {
                h.append("Content-Length", n);
            }
            (reqh, Some(HttpResponseHead::new(200, "OK", h)))
        }
    }
}

fn host_of(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split(['/', '?', '#'])
        .next()
        .unwrap_or("localhost")
        .to_string()
}
