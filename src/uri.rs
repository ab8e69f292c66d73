//! ICAP URIs: `icap://host[:port]/path[?query]` and `icaps://` (RFC 3507 4.2).
//!
//! [`IcapUri`] owns the syntax of the URI a request line carries and the `Host` header derived
//! from it: the scheme (and so whether the connection is TLS), the host (a name, an IPv4
//! address or a bracketed IPv6 address), the port (1344 for `icap`, 11344 for `icaps` when
//! absent) and the path with its query kept verbatim, since services such as
//! `/server?arg=87` route on it. Resolving and connecting are left to the I/O front ends.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::proto::error::{Error, ErrorKind, Result};

/// The default port of plain ICAP (RFC 3507 4.2).
const DEFAULT_PORT: u16 = 1344;
/// The default port of ICAP over TLS, as used by squid, c-icap and stunnel set-ups.
const DEFAULT_TLS_PORT: u16 = 11344;

/// The scheme of an ICAP URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `icap://`: plain TCP.
    Icap,
    /// `icaps://`: ICAP over TLS.
    Icaps,
}

impl Scheme {
    /// The scheme as written, without `://`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Icap => "icap",
            Scheme::Icaps => "icaps",
        }
    }

    /// The port used when the URI names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Icap => DEFAULT_PORT,
            Scheme::Icaps => DEFAULT_TLS_PORT,
        }
    }
}

/// A parsed ICAP URI.
///
/// ```
/// use icap::{IcapUri, Scheme};
///
/// let uri = IcapUri::parse("icaps://DLP.example:11344/reqmod?profile=pci")?;
/// assert_eq!(uri.scheme(), Scheme::Icaps);
/// assert_eq!((uri.host(), uri.port()), ("dlp.example", 11344));
/// assert_eq!((uri.path(), uri.query()), ("/reqmod", Some("profile=pci")));
/// // 11344 is icaps's default port, so the ICAP Host header leaves it out.
/// assert_eq!(uri.host_header(), "dlp.example");
/// assert_eq!(IcapUri::parse("icap://[::1]:1345/avscan")?.host_header(), "[::1]:1345");
///
/// // A URI that is not ICAP is a typed error with the offset of the problem in the string.
/// let err = IcapUri::parse("http://dlp.example/reqmod").unwrap_err();
/// assert_eq!(err.kind(), icap::ErrorKind::BadUri);
/// # Ok::<(), icap::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IcapUri {
    scheme: Scheme,
    /// Lower-cased for names; IPv6 without brackets.
    host: String,
    /// The port exactly as given, so that `Display` writes the URI back as it was.
    explicit_port: Option<u16>,
    /// Starts with `/`; `/` when the URI had no path.
    path: String,
    query: Option<String>,
}

fn bad(at: usize, msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::BadUri, at as u64, msg)
}

fn host_name_ok(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Bytes a path or query may hold as they are: RFC 3986 `pchar`, `/`, `?` and `%`.
fn path_byte_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

impl IcapUri {
    /// Parses `icap://` or `icaps://` URIs. The scheme is case-insensitive; the host must be a
    /// DNS name, an IPv4 address or `[IPv6]`; user info and fragments are refused (an ICAP
    /// request line carries neither).
    pub fn parse(s: &str) -> Result<IcapUri> {
        let (scheme, rest_at) = match s.find("://") {
            Some(i) if s[..i].eq_ignore_ascii_case("icap") => (Scheme::Icap, i + 3),
            Some(i) if s[..i].eq_ignore_ascii_case("icaps") => (Scheme::Icaps, i + 3),
            _ => return Err(bad(0, format!("expected icap:// or icaps://, found {s:?}"))),
        };
        let rest = &s[rest_at..];
        let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..auth_end];
        if authority.contains('@') {
            return Err(bad(rest_at, "user info is not allowed in an ICAP URI"));
        }
        let (host, port_str) = if let Some(v6) = authority.strip_prefix('[') {
            let close = v6
                .find(']')
                .ok_or_else(|| bad(rest_at, "IPv6 host without closing ']'"))?;
            let addr = &v6[..close];
            Ipv6Addr::from_str(addr)
                .map_err(|_| bad(rest_at + 1, format!("{addr:?} is not an IPv6 address")))?;
            let after = &v6[close + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad(rest_at + close + 2, "junk after the IPv6 host")),
            };
            (addr.to_ascii_lowercase(), port)
        } else {
            let (h, p) = match authority.rfind(':') {
                Some(i) => (&authority[..i], Some(&authority[i + 1..])),
                None => (authority, None),
            };
            if !host_name_ok(h) {
                return Err(bad(
                    rest_at,
                    format!("{h:?} is not a host name or IPv4 address"),
                ));
            }
            (h.to_ascii_lowercase(), p)
        };
        let explicit_port = match port_str {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|&n| n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| bad(rest_at, format!("port {p:?} is not 1-65535")))?,
            ),
        };
        let tail = &rest[auth_end..];
        if tail.contains('#') {
            return Err(bad(
                rest_at + auth_end,
                "fragments are not allowed in an ICAP URI",
            ));
        }
        if let Some(i) = tail.bytes().position(|b| !path_byte_ok(b)) {
            return Err(bad(
                rest_at + auth_end + i,
                "path or query holds a byte that must be percent-encoded",
            ));
        }
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (tail, None),
        };
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path.to_string()
        };
        Ok(IcapUri {
            scheme,
            host,
            explicit_port,
            path,
            query,
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// True for `icaps://`: the connection must be TLS.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::Icaps
    }

    /// The host: a lower-cased name, an IPv4 address, or an IPv6 address without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port to connect to: the explicit one, else the scheme's default.
    pub fn port(&self) -> u16 {
        self.explicit_port.unwrap_or(self.scheme.default_port())
    }

    /// The port as written in the URI, if any.
    pub fn explicit_port(&self) -> Option<u16> {
        self.explicit_port
    }

    /// The path, starting with `/` (the service name, e.g. `/reqmod`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query after `?`, kept verbatim.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    fn is_v6(&self) -> bool {
        self.host.contains(':')
    }

    /// The value of the ICAP `Host` header: the host, bracketed when IPv6, with `:port` only
    /// when the port differs from the scheme's default.
    pub fn host_header(&self) -> String {
        let host = if self.is_v6() {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port() {
            p if p == self.scheme.default_port() => host,
            p => format!("{host}:{p}"),
        }
    }
}

impl fmt::Display for IcapUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        if self.is_v6() {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.explicit_port {
            write!(f, ":{p}")?;
        }
        f.write_str(&self.path)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

impl FromStr for IcapUri {
    type Err = Error;

    fn from_str(s: &str) -> Result<IcapUri> {
        IcapUri::parse(s)
    }
}

impl TryFrom<&str> for IcapUri {
    type Error = Error;

    fn try_from(s: &str) -> Result<IcapUri> {
        IcapUri::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_display() {
        let u = IcapUri::parse("icap://icap-server.net/server?arg=87").unwrap();
        assert_eq!(
            (u.host(), u.port(), u.path(), u.query()),
            ("icap-server.net", 1344, "/server", Some("arg=87"))
        );
        assert!(!u.is_tls());
        assert_eq!(u.host_header(), "icap-server.net");
        assert_eq!(u.to_string(), "icap://icap-server.net/server?arg=87");

        let u = IcapUri::parse("ICAPS://DLP.Example:11344/reqmod").unwrap();
        assert!(u.is_tls());
        assert_eq!(
            (u.host(), u.port(), u.explicit_port()),
            ("dlp.example", 11344, Some(11344))
        );
        assert_eq!(u.host_header(), "dlp.example");
        assert_eq!(u.to_string(), "icaps://dlp.example:11344/reqmod");

        let u = IcapUri::parse("icaps://10.0.0.1:1344").unwrap();
        assert_eq!(
            (u.port(), u.path(), u.host_header()),
            (1344, "/", "10.0.0.1:1344".to_string())
        );
        assert_eq!(u.to_string(), "icaps://10.0.0.1:1344/");

        let u: IcapUri = "icap://[::1]:2000/av?mode=fast&x=%20".parse().unwrap();
        assert_eq!(
            (u.host(), u.port(), u.query()),
            ("::1", 2000, Some("mode=fast&x=%20"))
        );
        assert_eq!(u.host_header(), "[::1]:2000");
        assert_eq!(u.to_string(), "icap://[::1]:2000/av?mode=fast&x=%20");
        assert_eq!(
            IcapUri::parse("icap://[::1]/").unwrap().host_header(),
            "[::1]"
        );
    }

    #[test]
    fn rejects_what_a_request_line_cannot_carry() {
        for bad in [
            "http://h/",
            "icap:/h/",
            "icap://",
            "icap://h:0/",
            "icap://h:99999/",
            "icap://h:+1/",
            "icap://u@h/",
            "icap://h/a#frag",
            "icap://h/a b",
            "icap://[::1/",
            "icap://[zz]/",
            "icap://[::1]x/",
            "icap://h..x/",
            "icap://h/\r\nX: 1",
        ] {
            let e = IcapUri::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadUri, "{bad}");
        }
    }
}
