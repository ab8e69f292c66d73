//! One ICAP call, as a value: [`ClientRequest`] (the tower request type) says what to send
//! (method, encapsulated HTTP heads, extra ICAP headers, body); the client turns it into
//! the ICAP request for the server it picks, with that server's URI and the preview its
//! OPTIONS ask for. [`CallBuilder`] is the same bound to a [`Client`], ending in
//! [`CallBuilder::send`].

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::client::ClientError;
use crate::proto::error::Error;
use crate::proto::head::{HttpRequestHead, HttpResponseHead, Method};
use crate::proto::message::Request;
use crate::uri::IcapUri;

use super::{BodySource, Client, ClientConfig, ClientResponse, Exchange};

/// Progress callback: body bytes sent so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// One ICAP call: REQMOD, RESPMOD or OPTIONS, with its encapsulated HTTP heads, extra ICAP
/// headers and body. Owned and `'static`, so it can cross tower layers and tasks. The
/// client adds the server's URI, `Host`, `User-Agent`, `Allow` and the preview.
///
/// ```
/// use icap::client::ClientRequest;
/// use icap::HttpRequestHead;
///
/// let upload = HttpRequestHead::new(
///     "POST",
///     "http://files.example/upload",
///     [("Host", "files.example"), ("Content-Length", "11")].into_iter().collect(),
/// );
/// let req = ClientRequest::reqmod(upload)
///     .body("hello world")
///     .client_ip("127.0.0.1".parse().unwrap())
///     .header("X-Custom", "1");
/// # let _ = req;
/// ```
pub struct ClientRequest {
    method: Method,
    http_request: Option<HttpRequestHead>,
    http_response: Option<HttpResponseHead>,
    headers: Vec<(String, Vec<u8>)>,
    allow_204: Option<bool>,
    allow_206: bool,
    pub(crate) body: BodySource,
    pub(crate) file_name: Option<String>,
    pub(crate) progress: Option<Progress>,
    /// A scan: files the service's `Transfer-Ignore` covers are not sent.
    pub(crate) skip_ignored: bool,
}

impl fmt::Debug for ClientRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRequest")
            .field("method", &self.method)
            .field("http_request", &self.http_request)
            .field("http_response", &self.http_response)
            .field("body", &self.body)
            .field("file_name", &self.file_name)
            .finish_non_exhaustive()
    }
}

impl ClientRequest {
    fn new(method: Method) -> Self {
        ClientRequest {
            method,
            http_request: None,
            http_response: None,
            headers: Vec::new(),
            allow_204: None,
            allow_206: false,
            body: BodySource::None,
            file_name: None,
            progress: None,
            skip_ignored: false,
        }
    }

    /// A REQMOD of this HTTP request (its body, if any, comes with [`Self::body`]).
    pub fn reqmod(http_request: HttpRequestHead) -> Self {
        ClientRequest {
            http_request: Some(http_request),
            ..Self::new(Method::Reqmod)
        }
    }

    /// A RESPMOD of this HTTP response (add the request it answers with
    /// [`Self::http_request`]; its body comes with [`Self::body`]).
    pub fn respmod(http_response: HttpResponseHead) -> Self {
        ClientRequest {
            http_response: Some(http_response),
            ..Self::new(Method::Respmod)
        }
    }

    /// An OPTIONS request (always sent: the client's OPTIONS cache is for
    /// [`Client::options`]).
    pub fn options() -> Self {
        Self::new(Method::Options)
    }

    /// The ICAP method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The encapsulated HTTP request head (for RESPMOD, the request the response answers).
    pub fn http_request(mut self, head: HttpRequestHead) -> Self {
        self.http_request = Some(head);
        self
    }

    /// The body: anything that converts into a [`BodySource`] (`Bytes`, `Vec<u8>`,
    /// `&'static str`, [`BodySource::file`], [`BodySource::reader`], [`BodySource::stream`]).
    pub fn body(mut self, body: impl Into<BodySource>) -> Self {
        self.body = body.into();
        self
    }

    /// An extra ICAP header (checked when the request is built: a header the client derives
    /// itself, such as `Encapsulated` or `Preview`, is refused with [`ClientError::Config`]).
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// `X-Client-IP`.
    pub fn client_ip(self, ip: IpAddr) -> Self {
        self.header("X-Client-IP", ip.to_string())
    }

    /// `X-Server-IP`.
    pub fn server_ip(self, ip: IpAddr) -> Self {
        self.header("X-Server-IP", ip.to_string())
    }

    /// `X-Authenticated-User`.
    pub fn authenticated_user(self, user: &str) -> Self {
        self.header("X-Authenticated-User", user)
    }

    /// Overrides [`ClientConfig::allow_204`] for this call.
    pub fn allow_204(mut self, allow: bool) -> Self {
        self.allow_204 = Some(allow);
        self
    }

    /// Sends `Allow: 206`: the server may answer with a new body prefix and the offset from
    /// which the original body continues ([`AnswerBody::use_original_body`](super::AnswerBody::use_original_body)).
    pub fn allow_206(mut self) -> Self {
        self.allow_206 = true;
        self
    }

    /// The name of the file the body holds, for the service's `Transfer-Preview`,
    /// `Transfer-Ignore` and `Transfer-Complete` rules.
    pub fn file_name(mut self, name: impl Into<String>) -> Self {
        self.file_name = Some(name.into());
        self
    }

    /// Called with the number of body bytes sent so far.
    pub fn progress(mut self, f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    #[cfg(feature = "scan")]
    pub(crate) fn progress_arc(mut self, f: Option<Progress>) -> Self {
        self.progress = f;
        self
    }

    /// The ICAP request this call becomes on `server` with `preview` bytes of preview (the
    /// client picks both; this is for logging and tests).
    pub fn to_request(
        &self,
        server: &IcapUri,
        preview: Option<u64>,
        cfg: &ClientConfig,
    ) -> Result<Request, Error> {
        let options = self.method == Method::Options;
        let mut b = match &self.method {
            Method::Respmod => Request::respmod(server),
            Method::Options => Request::options(server),
            _ => Request::reqmod(server),
        };
        if let Some(h) = &self.http_request {
            b = b.http_request(h.clone());
        }
        if let Some(h) = &self.http_response {
            b = b.http_response(h.clone());
        }
        b = b.user_agent(&cfg.user_agent);
        let has_body = !self.body.is_none();
        if has_body {
            b = b.with_body();
        }
        if !options && self.allow_204.unwrap_or(cfg.allow_204) {
            b = b.allow_204();
        }
        if !options && self.allow_206 {
            b = b.allow_206();
        }
        if let (true, Some(p)) = (has_body, preview) {
            b = b.preview(p);
        }
        for (n, v) in &self.headers {
            b = b.header(n, v);
        }
        b.build().map_err(Error::from)
    }
}

/// A [`ClientRequest`] bound to its [`Client`]: `client.reqmod(head).body(..).send()`.
#[derive(Debug)]
#[must_use = "a call does nothing until .send() or .exchange()"]
pub struct CallBuilder {
    client: Client,
    req: ClientRequest,
}

macro_rules! delegate {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*);)*) => {
        impl CallBuilder {
            $($(#[$doc])* pub fn $name(mut self, $($arg: $ty),*) -> Self {
                self.req = self.req.$name($($arg),*);
                self
            })*
        }
    };
}

delegate! {
    /// See [`ClientRequest::http_request`].
    http_request(head: HttpRequestHead);
    /// See [`ClientRequest::body`].
    body(body: impl Into<BodySource>);
    /// See [`ClientRequest::header`].
    header(name: impl Into<String>, value: impl AsRef<[u8]>);
    /// See [`ClientRequest::client_ip`].
    client_ip(ip: IpAddr);
    /// See [`ClientRequest::server_ip`].
    server_ip(ip: IpAddr);
    /// See [`ClientRequest::authenticated_user`].
    authenticated_user(user: &str);
    /// See [`ClientRequest::allow_204`].
    allow_204(allow: bool);
    /// See [`ClientRequest::allow_206`].
    allow_206();
    /// See [`ClientRequest::file_name`].
    file_name(name: impl Into<String>);
    /// See [`ClientRequest::progress`].
    progress(f: impl Fn(u64) + Send + Sync + 'static);
}

impl CallBuilder {
    pub(crate) fn new(client: Client, req: ClientRequest) -> Self {
        CallBuilder { client, req }
    }

    /// Sends the call (failing over as configured) and returns the answer once its head
    /// has arrived; its body streams in [`ClientResponse::body`].
    pub async fn send(self) -> Result<ClientResponse, ClientError> {
        self.client.send(self.req).await
    }

    /// Sends the call and reads the whole answer: the head, the start of the body (up to
    /// [`ClientConfig::keep_body`]) and the length and hash of all of it.
    pub async fn exchange(self) -> Result<Exchange, ClientError> {
        self.client.exchange(&self.req).await
    }

    /// The request, to send later (through tower, for instance).
    pub fn into_request(self) -> ClientRequest {
        self.req
    }
}
