//! Verdicts for scanners: what an ICAP answer means for the file that was sent.
//!
//! A DLP appliance or an antivirus says "blocked" in several ways, and a scanner that only
//! looks at the ICAP status reports leaked data as allowed. This module holds the rules as
//! data ([`Rule`], in order, first match wins) and the vendor profiles built from them
//! ([`Profile`]): Symantec DLP answers a blocked REQMOD with an HTTP response in place of the
//! request, often `HTTP/1.1 200 OK` with block text; Forcepoint and c-icap answer with a 403
//! page; antivirus engines add `X-Infection-Found` and the like. Each verdict carries the
//! reason it was reached. No I/O here: the scanner (`scan.rs`, feature `scan`) gathers
//! the facts ([`Answer`]) and asks; any other caller can too.

use std::fmt;

use crate::proto::head::Method;
use crate::proto::message::Response;

/// What the answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The content may pass: a 204, or a 200 carrying the unchanged message.
    Allowed {
        /// Why.
        reason: String,
    },
    /// The content was blocked (a block page, a vendor header, a response in place of a
    /// request ...).
    Blocked {
        /// Why, e.g. `REQMOD answered with an HTTP response` or `X-Infection-Found: ...`.
        reason: String,
    },
    /// The server changed the message (e.g. redacted it) without blocking it.
    Modified {
        /// Why, e.g. `body replaced`.
        reason: String,
    },
}

impl Verdict {
    /// The reason the verdict was reached.
    pub fn reason(&self) -> &str {
        match self {
            Verdict::Allowed { reason }
            | Verdict::Blocked { reason }
            | Verdict::Modified { reason } => reason,
        }
    }

    /// A short word: `allowed`, `blocked` or `modified`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Allowed { .. } => "allowed",
            Verdict::Blocked { .. } => "blocked",
            Verdict::Modified { .. } => "modified",
        }
    }

    /// True for [`Verdict::Blocked`].
    pub fn is_blocked(&self) -> bool {
        matches!(self, Verdict::Blocked { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.label(), self.reason())
    }
}

/// The facts a verdict is drawn from: the request's method, the final answer, and what the
/// client saw of the bodies.
#[derive(Debug, Clone)]
pub struct Answer<'a> {
    /// The method of the request.
    pub method: &'a Method,
    /// The final ICAP response (not 100).
    pub response: &'a Response,
    /// Length and hash of the body the client sent, when it had one.
    pub sent_body: Option<(u64, u64)>,
    /// Length and hash of the body the server returned, when it returned one.
    pub returned_body: Option<(u64, u64)>,
    /// The start of the returned body (for block-text rules), up to a few KiB.
    pub body_prefix: &'a [u8],
    /// The encapsulated head the client sent, as `(start line, sorted headers)` for the
    /// "unchanged" comparison.
    pub sent_head: Option<String>,
}

/// A condition on an [`Answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The ICAP status is this.
    IcapStatus(u16),
    /// A REQMOD was answered with an HTTP response (in place of the request).
    ReqmodAnsweredWithResponse,
    /// The encapsulated HTTP response has a status at or above this.
    HttpStatusAtLeast(u16),
    /// This ICAP header is present (case-insensitive name).
    Header(String),
    /// The returned body's start contains this text (ASCII, case-insensitive).
    BodyContains(String),
    /// A body came back that differs from the one sent (or none had been sent).
    BodyReplaced,
    /// The returned encapsulated head differs from the one sent.
    HeadChanged,
    /// Always true: a default rule at the end of a list.
    Always,
}

/// A rule: when the condition holds, this is the outcome, for this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// When the rule applies.
    pub when: Condition,
    /// The outcome: `"allowed"`, `"blocked"` or `"modified"`.
    pub then: Outcome,
    /// The reason reported; `{}` is replaced by the matching detail (header value, status).
    pub reason: String,
}

/// The outcome of a [`Rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed.
    Allowed,
    /// Blocked.
    Blocked,
    /// Modified.
    Modified,
}

/// The vendor behaviours the client knows (RFC 3507 leaves block signalling to vendors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Profile {
    /// Generic ICAP: 204 allowed; block pages (HTTP 4xx/5xx) and vendor headers block; a
    /// changed message is modified.
    #[default]
    Generic,
    /// Symantec DLP (Vontu): a REQMOD answered with any HTTP response is a block, whatever
    /// the HTTP status (its block is often `HTTP/1.1 200 OK` with block text).
    Symantec,
    /// Forcepoint DLP: a block page (HTTP 403) or a replaced body is a block.
    Forcepoint,
}

impl Profile {
    /// Parses `generic`, `symantec` or `forcepoint`.
    pub fn from_name(s: &str) -> Option<Profile> {
        match s.to_ascii_lowercase().as_str() {
            "generic" | "generic-reqmod" | "generic-respmod" => Some(Profile::Generic),
            "symantec" | "vontu" => Some(Profile::Symantec),
            "forcepoint" => Some(Profile::Forcepoint),
            _ => None,
        }
    }

    /// The rules of this profile, in order.
    pub fn rules(self) -> Vec<Rule> {
        use Condition::*;
        let r = |when, then, reason: &str| Rule {
            when,
            then,
            reason: reason.to_string(),
        };
        let mut v = vec![r(
            IcapStatus(204),
            Outcome::Allowed,
            "204: no modification needed",
        )];
        // Vendor headers first: they name the threat.
        for h in [
            "X-Infection-Found",
            "X-Virus-ID",
            "X-Violations-Found",
            "X-Blocked-Reason",
        ] {
            v.push(r(Header(h.into()), Outcome::Blocked, &format!("{h}: {{}}")));
        }
        match self {
            Profile::Symantec => {
                v.push(r(
                    ReqmodAnsweredWithResponse,
                    Outcome::Blocked,
                    "REQMOD answered with an HTTP response ({})",
                ));
                v.push(r(
                    HttpStatusAtLeast(400),
                    Outcome::Blocked,
                    "HTTP {} page in place of the content",
                ));
                v.push(r(BodyReplaced, Outcome::Blocked, "body replaced"));
            }
            Profile::Forcepoint => {
                v.push(r(
                    HttpStatusAtLeast(400),
                    Outcome::Blocked,
                    "HTTP {} block page",
                ));
                v.push(r(
                    ReqmodAnsweredWithResponse,
                    Outcome::Blocked,
                    "REQMOD answered with an HTTP response ({})",
                ));
                v.push(r(BodyReplaced, Outcome::Blocked, "body replaced"));
            }
            Profile::Generic => {
                v.push(r(
                    HttpStatusAtLeast(400),
                    Outcome::Blocked,
                    "HTTP {} block page",
                ));
                v.push(r(
                    ReqmodAnsweredWithResponse,
                    Outcome::Blocked,
                    "REQMOD answered with an HTTP response ({})",
                ));
                v.push(r(BodyReplaced, Outcome::Modified, "body replaced"));
            }
        }
        v.push(r(
            HeadChanged,
            Outcome::Modified,
            "encapsulated head changed",
        ));
        v.push(r(
            Always,
            Outcome::Allowed,
            "200 with the message unchanged",
        ));
        v
    }
}

/// Draws the verdict from `answer` by the first matching rule. A list without a matching
/// rule gives [`Verdict::Blocked`]: an answer nobody understood must not pass.
pub fn judge(rules: &[Rule], answer: &Answer<'_>) -> Verdict {
    for rule in rules {
        if let Some(detail) = matches(&rule.when, answer) {
            let reason = rule.reason.replace("{}", &detail);
            return match rule.then {
                Outcome::Allowed => Verdict::Allowed { reason },
                Outcome::Blocked => Verdict::Blocked { reason },
                Outcome::Modified => Verdict::Modified { reason },
            };
        }
    }
    Verdict::Blocked {
        reason: format!("no verdict rule matched ICAP {}", answer.response.status),
    }
}

/// Returns the detail for the reason when the condition holds.
fn matches(c: &Condition, a: &Answer<'_>) -> Option<String> {
    let res = a.response;
    match c {
        Condition::IcapStatus(s) => (res.status == *s).then(|| s.to_string()),
        Condition::ReqmodAnsweredWithResponse => match (a.method, &res.http_response) {
            (Method::Reqmod, Some(h)) => Some(h.line()),
            _ => None,
        },
        Condition::HttpStatusAtLeast(min) => res
            .http_response
            .as_ref()
            .filter(|h| h.status >= *min)
            .map(|h| h.status.to_string()),
        Condition::Header(name) => res
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v).trim().to_string()),
        Condition::BodyContains(text) => {
            let t = text.as_bytes();
            (!t.is_empty()
                && a.body_prefix
                    .windows(t.len())
                    .any(|w| w.eq_ignore_ascii_case(t)))
            .then(|| text.clone())
        }
        Condition::BodyReplaced => match (a.sent_body, a.returned_body) {
            (_, None) => None,
            (Some(s), Some(r)) if s == r => None,
            _ => Some(String::new()),
        },
        Condition::HeadChanged => {
            let returned = match a.method {
                Method::Reqmod => res
                    .http_request
                    .as_ref()
                    .map(|h| canonical(&h.line(), &h.headers)),
                _ => res
                    .http_response
                    .as_ref()
                    .map(|h| canonical(&h.line(), &h.headers)),
            };
            match (returned, &a.sent_head) {
                (Some(r), Some(s)) if &r != s => Some(String::new()),
                _ => None,
            }
        }
        Condition::Always => Some(String::new()),
    }
}

/// A head in a form that ignores header order, case of names and `Via` (which an ICAP
/// server adds by the RFC without changing the message).
pub fn canonical(line: &str, headers: &crate::Headers) -> String {
    let mut hs: Vec<String> = headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(b"Via"))
        .map(|(n, v)| {
            format!(
                "{}: {}",
                String::from_utf8_lossy(n).to_ascii_lowercase(),
                String::from_utf8_lossy(v)
            )
        })
        .collect();
    hs.sort();
    format!("{line}\n{}", hs.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Headers, HttpRequestHead, HttpResponseHead};

    fn answer<'a>(m: &'a Method, r: &'a Response) -> Answer<'a> {
        Answer {
            method: m,
            response: r,
            sent_body: Some((5, 1)),
            returned_body: None,
            body_prefix: b"",
            sent_head: None,
        }
    }

    #[test]
    fn symantec_200_ok_block_is_blocked() {
        let mut r = Response::new(200, "OK");
        r.http_response = Some(HttpResponseHead::new(200, "OK", Headers::new()));
        let m = Method::Reqmod;
        let v = judge(&Profile::Symantec.rules(), &answer(&m, &r));
        assert_eq!(
            v,
            Verdict::Blocked {
                reason: "REQMOD answered with an HTTP response (HTTP/1.1 200 OK)".into()
            }
        );
        // The same answer under the generic profile is also a block (a response in place of
        // the request), never "allowed".
        assert!(judge(&Profile::Generic.rules(), &answer(&m, &r)).is_blocked());
    }

    #[test]
    fn vendor_header_and_block_page() {
        let mut r = Response::new(200, "OK");
        r.headers.append(
            "X-Infection-Found",
            "Type=0; Resolution=2; Threat=EICAR-Test-File;",
        );
        r.http_response = Some(HttpResponseHead::new(403, "Forbidden", Headers::new()));
        let m = Method::Respmod;
        let v = judge(&Profile::Generic.rules(), &answer(&m, &r));
        assert_eq!(
            v.reason(),
            "X-Infection-Found: Type=0; Resolution=2; Threat=EICAR-Test-File;"
        );
        r.headers = Headers::new();
        assert_eq!(
            judge(&Profile::Generic.rules(), &answer(&m, &r)).reason(),
            "HTTP 403 block page"
        );
    }

    #[test]
    fn unchanged_echo_is_allowed_and_changes_are_modified() {
        let m = Method::Reqmod;
        let head =
            HttpRequestHead::new("POST", "http://x/up", [("Host", "x")].into_iter().collect());
        let mut r = Response::new(200, "OK");
        r.http_request = Some(head.clone());
        let mut a = answer(&m, &r);
        a.sent_head = Some(canonical(&head.line(), &head.headers));
        a.returned_body = Some((5, 1));
        assert_eq!(
            judge(&Profile::Generic.rules(), &a),
            Verdict::Allowed {
                reason: "200 with the message unchanged".into()
            }
        );
        a.returned_body = Some((5, 2));
        assert_eq!(judge(&Profile::Generic.rules(), &a).label(), "modified");
        assert_eq!(judge(&Profile::Forcepoint.rules(), &a).label(), "blocked");
        let r204 = Response::new(204, "No Content");
        assert_eq!(
            judge(&Profile::Generic.rules(), &answer(&m, &r204)).label(),
            "allowed"
        );
        // An empty rule list never allows.
        assert!(judge(&[], &answer(&m, &r204)).is_blocked());
    }
}
