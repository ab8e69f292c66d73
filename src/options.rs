//! The typed view of an OPTIONS answer (RFC 3507 4.10.2), both ways.
//!
//! [`ServiceOptions`] reads the headers of a decoded OPTIONS [`Response`] into fields
//! (Methods, ISTag, Preview, Allow, Transfer-* lists ...) and writes them back as a response
//! for a server to send. It also owns the one rule a client needs these lists for,
//! [`ServiceOptions::transfer_for`]: whether a file is previewed, sent whole, or not sent at
//! all. Caching the answer for Options-TTL seconds is left to the client front end.

use crate::builder::ResponseBuilder;
use crate::error::{Error, ErrorKind, Result};
use crate::head::Method;
use crate::message::Response;

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
        Some(v) => crate::decode::decimal(v).map(Some).ok_or_else(|| {
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
    /// Preview, Allow), `Encapsulated: null-body=0` last.
    pub fn to_response(&self) -> Result<Response> {
        self.response_builder()?.build()
    }

    /// Like [`Self::to_response`], returning the builder so that more headers (`Server`,
    /// `X-Include` ...) can be added.
    pub fn response_builder(&self) -> Result<ResponseBuilder> {
        if self.methods.is_empty() || self.methods.contains(&Method::Options) {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                0,
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
