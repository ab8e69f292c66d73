//! The typed view of an OPTIONS answer (RFC 3507 4.10.2), both ways.
//!
//! [`ServiceOptions`] reads the headers of a decoded OPTIONS [`Response`] into fields
//! (Methods, ISTag, Preview, Allow, Transfer-* lists ...) and writes them back as a response
//! for a server to send. It also owns the one rule a client needs these lists for,
//! [`ServiceOptions::transfer_for`]: whether a file is previewed, sent whole, or not sent at
//! all. Caching the answer for Options-TTL seconds is left to the client front end.

use crate::builder::{BuildError, ResponseBuilder};
use crate::proto::error::{Error, ErrorKind, Result};
use crate::proto::head::Method;
use crate::proto::message::Response;

/// What to do with a file of some extension, by the Transfer-* headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transfer {
    /// Send a preview first (`Transfer-Preview`).
    Preview,
    /// Send it whole, without preview (`Transfer-Complete`, or no Transfer-* at all).
    Complete,
    /// Do not send it to the ICAP server (`Transfer-Ignore`).
    Ignore,
}

/// The configuration a service announces in its OPTIONS answer.
///
/// Fields are public to read; build one with [`ServiceOptions::new`] and the `with_*` setters
/// (the struct is `#[non_exhaustive]`: new OPTIONS headers may be added).
///
/// ```
/// use icap::{Method, ServiceOptions, Transfer};
///
/// let opts = ServiceOptions::new([Method::Respmod], "\"dlp-7\"")
///     .with_service("ACME DLP 7.2")
///     .with_preview(Some(4096))
///     .with_allow_204(true)
///     .with_options_ttl(Some(3600))
///     .with_transfer_preview(["*"])
///     .with_transfer_ignore(["jpg", "mp4"])
///     .with_include(["X-Client-IP", "X-Authenticated-User"]);
/// let res = opts.to_response()?;
/// assert_eq!(res.headers.get_str("X-Include"), Some("x-client-ip, x-authenticated-user"));
/// assert_eq!(res.headers.get_str("Preview"), Some("4096"));
/// // A client reads it back from the answer it decoded.
/// let seen = ServiceOptions::from_response(&res)?;
/// assert_eq!(seen, opts);
/// assert_eq!(seen.transfer_for("holiday.JPG"), Transfer::Ignore);
/// assert!(seen.includes("X-Client-IP") && !seen.includes("X-Client-Username"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceOptions {
    /// `Methods`: what the service supports besides OPTIONS (REQMOD or RESPMOD, c-icap's
    /// demo services list both).
    pub methods: Vec<Method>,
    /// `Service`: vendor and product text.
    pub service: Option<String>,
    /// `ISTag` as sent, quotes included.
    pub istag: String,
    /// `Service-ID`: a short label.
    pub service_id: Option<String>,
    /// `Max-Connections`.
    pub max_connections: Option<u64>,
    /// `Options-TTL` in seconds; `None` means the answer does not expire.
    pub options_ttl: Option<u64>,
    /// `Date` as sent (an RFC 1123 date; not parsed here).
    pub date: Option<String>,
    /// `Allow: 204`.
    pub allow_204: bool,
    /// `Allow: 206`.
    pub allow_206: bool,
    /// `Allow: trailers`.
    pub allow_trailers: bool,
    /// `Preview`: how many body bytes the service wants in a preview.
    pub preview: Option<u64>,
    /// `Transfer-Preview` extensions, lower-cased; `*` is the wildcard.
    pub transfer_preview: Vec<String>,
    /// `Transfer-Ignore` extensions, lower-cased.
    pub transfer_ignore: Vec<String>,
    /// `Transfer-Complete` extensions, lower-cased.
    pub transfer_complete: Vec<String>,
    /// `X-Include`: the headers the service wants with each request when the client knows
    /// them (`X-Client-IP`, `X-Authenticated-User` ...), lower-cased (RFC 3507 4.10.2).
    pub include: Vec<String>,
}

fn bad_header(msg: String) -> Error {
    Error::new(ErrorKind::BadHeader, 0, msg)
}

fn list(res: &Response, name: &str) -> Vec<String> {
    res.headers
        .get_all(name)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn text(res: &Response, name: &str) -> Option<String> {
    res.headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn number(res: &Response, name: &str) -> Result<Option<u64>> {
    match res.headers.get(name) {
        None => Ok(None),
        Some(v) => crate::proto::grammar::decimal(v).map(Some).ok_or_else(|| {
            bad_header(format!(
                "{name}: {:?} is not a decimal number",
                String::from_utf8_lossy(v)
            ))
        }),
    }
}

/// The extension `transfer_for` compares: the part after the last dot of the last path
/// segment, or the whole argument when it has no dot (so `"exe"` and `"setup.EXE"` agree).
fn extension(name: &str) -> String {
    let file = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let file = file.split(['?', '#']).next().unwrap_or(file);
    file.rsplit('.').next().unwrap_or(file).to_ascii_lowercase()
}

impl ServiceOptions {
    /// Options for a service offering `methods` (REQMOD and/or RESPMOD) with this ISTag (as
    /// sent, quotes included); everything else unset.
    pub fn new(methods: impl IntoIterator<Item = Method>, istag: impl Into<String>) -> Self {
        ServiceOptions {
            methods: methods.into_iter().collect(),
            istag: istag.into(),
            ..ServiceOptions::default()
        }
    }

    /// Sets [`ServiceOptions::methods`].
    #[must_use]
    pub fn with_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Sets [`ServiceOptions::service`].
    #[must_use]
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// Sets [`ServiceOptions::istag`] (quotes included).
    #[must_use]
    pub fn with_istag(mut self, istag: impl Into<String>) -> Self {
        self.istag = istag.into();
        self
    }

    /// Sets [`ServiceOptions::service_id`].
    #[must_use]
    pub fn with_service_id(mut self, service_id: impl Into<String>) -> Self {
        self.service_id = Some(service_id.into());
        self
    }

    /// Sets [`ServiceOptions::max_connections`].
    #[must_use]
    pub fn with_max_connections(mut self, max_connections: Option<u64>) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets [`ServiceOptions::options_ttl`].
    #[must_use]
    pub fn with_options_ttl(mut self, options_ttl: Option<u64>) -> Self {
        self.options_ttl = options_ttl;
        self
    }

    /// Sets [`ServiceOptions::date`].
    #[must_use]
    pub fn with_date(mut self, date: impl Into<String>) -> Self {
        self.date = Some(date.into());
        self
    }

    /// Sets [`ServiceOptions::allow_204`].
    #[must_use]
    pub fn with_allow_204(mut self, allow_204: bool) -> Self {
        self.allow_204 = allow_204;
        self
    }

    /// Sets [`ServiceOptions::allow_206`].
    #[must_use]
    pub fn with_allow_206(mut self, allow_206: bool) -> Self {
        self.allow_206 = allow_206;
        self
    }

    /// Sets [`ServiceOptions::allow_trailers`].
    #[must_use]
    pub fn with_allow_trailers(mut self, allow_trailers: bool) -> Self {
        self.allow_trailers = allow_trailers;
        self
    }

    /// Sets [`ServiceOptions::preview`].
    #[must_use]
    pub fn with_preview(mut self, preview: Option<u64>) -> Self {
        self.preview = preview;
        self
    }

    /// Sets [`ServiceOptions::transfer_preview`]; extensions are lower-cased as `from_response` does.
    #[must_use]
    pub fn with_transfer_preview<S: AsRef<str>>(
        mut self,
        extensions: impl IntoIterator<Item = S>,
    ) -> Self {
        self.transfer_preview = extensions
            .into_iter()
            .map(|e| e.as_ref().to_ascii_lowercase())
            .collect();
        self
    }

    /// Sets [`ServiceOptions::transfer_ignore`]; extensions are lower-cased as `from_response` does.
    #[must_use]
    pub fn with_transfer_ignore<S: AsRef<str>>(
        mut self,
        extensions: impl IntoIterator<Item = S>,
    ) -> Self {
        self.transfer_ignore = extensions
            .into_iter()
            .map(|e| e.as_ref().to_ascii_lowercase())
            .collect();
        self
    }

    /// Sets [`ServiceOptions::transfer_complete`]; extensions are lower-cased as `from_response` does.
    #[must_use]
    pub fn with_transfer_complete<S: AsRef<str>>(
        mut self,
        extensions: impl IntoIterator<Item = S>,
    ) -> Self {
        self.transfer_complete = extensions
            .into_iter()
            .map(|e| e.as_ref().to_ascii_lowercase())
            .collect();
        self
    }

    /// Sets [`ServiceOptions::include`]; names are lower-cased as `from_response` does.
    #[must_use]
    pub fn with_include<S: AsRef<str>>(mut self, headers: impl IntoIterator<Item = S>) -> Self {
        self.include = headers
            .into_iter()
            .map(|h| h.as_ref().to_ascii_lowercase())
            .collect();
        self
    }

    /// True when `X-Include` names `header` (any case).
    pub fn includes(&self, header: &str) -> bool {
        self.include.iter().any(|h| h.eq_ignore_ascii_case(header))
    }

    /// Reads a `200` OPTIONS answer. `Methods` and `ISTag` are required (RFC 3507 4.10.2);
    /// numbers must be decimal; unknown headers are ignored.
    pub fn from_response(res: &Response) -> Result<ServiceOptions> {
        if res.status != 200 {
            return Err(Error::new(
                ErrorKind::UnexpectedResponse,
                0,
                format!("an OPTIONS answer has status 200, not {}", res.status),
            ));
        }
        let methods: Vec<Method> = res
            .headers
            .get_all("Methods")
            .flat_map(|v| v.split(|&b| b == b','))
            .filter_map(|t| {
                let t = String::from_utf8_lossy(t);
                Method::from_bytes(t.trim().as_bytes())
            })
            .collect();
        if methods.is_empty() {
            return Err(bad_header(
                "the OPTIONS answer has no Methods header".into(),
            ));
        }
        let istag = text(res, "ISTag")
            .ok_or_else(|| bad_header("the OPTIONS answer has no ISTag header".into()))?;
        let allow = list(res, "Allow");
        Ok(ServiceOptions {
            methods,
            service: text(res, "Service"),
            istag,
            service_id: text(res, "Service-ID"),
            max_connections: number(res, "Max-Connections")?,
            options_ttl: number(res, "Options-TTL")?,
            date: text(res, "Date"),
            allow_204: allow.iter().any(|a| a == "204"),
            allow_206: allow.iter().any(|a| a == "206"),
            allow_trailers: allow.iter().any(|a| a == "trailers"),
            preview: number(res, "Preview")?,
            transfer_preview: list(res, "Transfer-Preview"),
            transfer_ignore: list(res, "Transfer-Ignore"),
            transfer_complete: list(res, "Transfer-Complete"),
            include: list(res, "X-Include"),
        })
    }

    /// True when `Methods` lists `method` (OPTIONS itself is always supported).
    pub fn supports(&self, method: &Method) -> bool {
        *method == Method::Options || self.methods.contains(method)
    }

    /// Whether to preview, send whole, or skip a file, given its name, path or bare
    /// extension (RFC 3507 4.10.2). An extension named in a list wins (checked in the order
    /// Ignore, Complete, Preview should a server name it twice); otherwise the list holding
    /// `*` decides. With no Transfer-* header at all, everything is sent whole. A server that
    /// sends lists but no `*` breaks the RFC's MUST; then unlisted files are sent whole too,
    /// the choice that never loses data.
    pub fn transfer_for(&self, file_name_or_ext: &str) -> Transfer {
        let ext = extension(file_name_or_ext);
        let lists = [
            (Transfer::Ignore, &self.transfer_ignore),
            (Transfer::Complete, &self.transfer_complete),
            (Transfer::Preview, &self.transfer_preview),
        ];
        if let Some((t, _)) = lists.iter().find(|(_, l)| l.contains(&ext)) {
            return *t;
        }
        lists
            .iter()
            .find(|(_, l)| l.iter().any(|e| e == "*"))
            .map_or(Transfer::Complete, |(t, _)| *t)
    }

    /// The preview size to announce for a body of `body_len` bytes (when known): the
    /// service's Preview capped by the body size, as c-icap-client does; `None` when the
    /// service wants no preview.
    pub fn preview_for(&self, body_len: Option<u64>) -> Option<u64> {
        let p = self.preview?;
        Some(body_len.map_or(p, |n| n.min(p)))
    }

    /// The OPTIONS answer carrying these options, headers in the order c-icap sends them
    /// (Methods, Service, ISTag, Service-ID, Transfer-*, Options-TTL, Max-Connections, Date,
    /// Preview, Allow), then `X-Include`, `Encapsulated: null-body=0` last.
    pub fn to_response(&self) -> Result<Response, BuildError> {
        self.response_builder()?.build()
    }

    /// Like [`Self::to_response`], returning the builder so that more headers (`Server` ...)
    /// can be added.
    pub fn response_builder(&self) -> Result<ResponseBuilder, BuildError> {
        if self.methods.is_empty() || self.methods.contains(&Method::Options) {
            return Err(BuildError::new(
                "Methods must list REQMOD and/or RESPMOD and never OPTIONS",
            ));
        }
        let join = |l: &[String]| l.join(", ");
        let methods: Vec<String> = self.methods.iter().map(|m| m.to_string()).collect();
        let mut b = Response::options_answer(&self.istag).header("Methods", methods.join(", "));
        if let Some(s) = &self.service {
            b = b.header("Service", s);
        }
        b = b.istag_here();
        if let Some(s) = &self.service_id {
            b = b.header("Service-ID", s);
        }
        for (name, l) in [
            ("Transfer-Preview", &self.transfer_preview),
            ("Transfer-Ignore", &self.transfer_ignore),
            ("Transfer-Complete", &self.transfer_complete),
        ] {
            if !l.is_empty() {
                b = b.header(name, join(l));
            }
        }
        if let Some(n) = self.options_ttl {
            b = b.header("Options-TTL", n.to_string());
        }
        if let Some(n) = self.max_connections {
            b = b.header("Max-Connections", n.to_string());
        }
        if let Some(d) = &self.date {
            b = b.header("Date", d);
        }
        if let Some(p) = self.preview {
            b = b.header("Preview", p.to_string());
        }
        let allow: Vec<&str> = [
            (self.allow_204, "204"),
            (self.allow_206, "206"),
            (self.allow_trailers, "trailers"),
        ]
        .into_iter()
        .filter_map(|(on, v)| on.then_some(v))
        .collect();
        if !allow.is_empty() {
            b = b.header("Allow", allow.join(", "));
        }
        if !self.include.is_empty() {
            b = b.header("X-Include", join(&self.include));
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(preview: &[&str], ignore: &[&str], complete: &[&str]) -> ServiceOptions {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        ServiceOptions {
            methods: vec![Method::Respmod],
            istag: "\"t\"".into(),
            transfer_preview: v(preview),
            transfer_ignore: v(ignore),
            transfer_complete: v(complete),
            ..Default::default()
        }
    }

    #[test]
    fn transfer_rules() {
        let none = opts(&[], &[], &[]);
        assert_eq!(none.transfer_for("a.exe"), Transfer::Complete);
        let rfc = opts(&["*"], &["html"], &["asp", "bat", "exe", "com"]);
        assert_eq!(rfc.transfer_for("setup.EXE"), Transfer::Complete);
        assert_eq!(rfc.transfer_for("exe"), Transfer::Complete);
        assert_eq!(rfc.transfer_for("/x/index.html?q=1"), Transfer::Ignore);
        assert_eq!(rfc.transfer_for("photo.jpg"), Transfer::Preview);
        assert_eq!(rfc.transfer_for("README"), Transfer::Preview);
        let ignore_default = opts(&["doc"], &["*"], &[]);
        assert_eq!(ignore_default.transfer_for("a.doc"), Transfer::Preview);
        assert_eq!(ignore_default.transfer_for("a.png"), Transfer::Ignore);
        let no_star = opts(&["doc"], &[], &[]);
        assert_eq!(no_star.transfer_for("a.png"), Transfer::Complete);
        assert_eq!(no_star.transfer_for("A.DOC"), Transfer::Preview);
    }

    #[test]
    fn preview_for_caps_at_body() {
        let mut o = opts(&[], &[], &[]);
        assert_eq!(o.preview_for(Some(10)), None);
        o.preview = Some(1024);
        assert_eq!(o.preview_for(Some(10)), Some(10));
        assert_eq!(o.preview_for(Some(5000)), Some(1024));
        assert_eq!(o.preview_for(None), Some(1024));
    }
}
