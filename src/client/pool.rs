//! Connections: one [`Endpoint`] per server, holding its idle kept-alive connections (the
//! pool shared with the gateway, `crate::upstream::IdlePool`), its health, its cached
//! OPTIONS and its share of `Max-Connections` (a semaphore whose permits travel with each
//! [`Conn`]), and the connect step (TCP, then TLS for `icaps://`) with its timeouts and TLS
//! failures told apart.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout_at;

use crate::client::{ClientError, TlsFailure};
use crate::proto::decode::ResponseDecoder;
use crate::proto::error::Error;
use crate::upstream::{Health, IdlePool};
use crate::uri::IcapUri;

use super::options_cache::CachedOptions;
use super::{after, Inner};

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One open connection, with its decoder (pipelined bytes stay in it) and its share of the
/// server's connection limit.
pub(crate) struct Conn {
    pub(crate) io: Box<dyn Io>,
    pub(crate) decoder: ResponseDecoder,
    pub(crate) tls_version: Option<String>,
    pub(crate) permit: OwnedSemaphorePermit,
}

/// One server of the service.
pub(crate) struct Endpoint {
    pub(crate) uri: IcapUri,
    pub(crate) idle: IdlePool<Conn>,
    pub(crate) permits: Arc<Semaphore>,
    /// The connection limit in force (config default, lowered by Max-Connections).
    pub(crate) limit: AtomicUsize,
    pub(crate) options: Mutex<Option<CachedOptions>>,
    pub(crate) health: Health,
}

impl Endpoint {
    pub(crate) fn new(uri: IcapUri, max_connections: usize) -> Self {
        Endpoint {
            uri,
            idle: IdlePool::new(),
            permits: Arc::new(Semaphore::new(max_connections)),
            limit: AtomicUsize::new(max_connections),
            options: Mutex::new(None),
            health: Health::new(),
        }
    }

    pub(crate) fn in_use(&self) -> usize {
        let limit = self.limit.load(Ordering::Relaxed);
        limit - self.permits.available_permits().min(limit)
    }

    pub(crate) fn name(&self) -> String {
        self.uri.to_string()
    }

    /// Lowers the connection limit to what the server accepts (never raises it above the
    /// configured one).
    pub(crate) fn lower_limit(&self, max: u64) {
        let max = usize::try_from(max).unwrap_or(usize::MAX).max(1);
        let cur = self.limit.load(Ordering::Relaxed);
        if max < cur {
            let gone = self.permits.forget_permits(cur - max);
            self.limit.fetch_sub(gone, Ordering::Relaxed);
        }
    }
}

/// Maps an I/O error to a TLS failure when rustls is behind it.
pub(crate) fn tls_failure(e: &io::Error, had_identity: bool) -> Option<(TlsFailure, String)> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    let f = match inner {
        R::InvalidCertificate(C::UnknownIssuer) | R::InvalidCertificate(C::BadSignature) => {
            TlsFailure::UntrustedServer
        }
        R::InvalidCertificate(C::ApplicationVerificationFailure) => TlsFailure::PinMismatch,
        R::InvalidCertificate(C::Expired)
        | R::InvalidCertificate(C::NotValidYet)
        | R::InvalidCertificate(C::ExpiredContext { .. })
        | R::InvalidCertificate(C::NotValidYetContext { .. }) => TlsFailure::Expired,
        R::InvalidCertificate(C::NotValidForName)
        | R::InvalidCertificate(C::NotValidForNameContext { .. }) => TlsFailure::NameMismatch,
        R::AlertReceived(A::CertificateRequired) => TlsFailure::CertificateRequired,
        R::AlertReceived(A::HandshakeFailure) if !had_identity => TlsFailure::CertificateRequired,
        R::AlertReceived(
            A::UnknownCA
            | A::BadCertificate
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::AccessDenied,
        ) if had_identity => TlsFailure::ClientCertificateRejected,
        R::AlertReceived(A::ProtocolVersion) | R::PeerIncompatible(_) => {
            TlsFailure::ProtocolVersion
        }
        _ => TlsFailure::Handshake,
    };
    Some((f, crate::tls::describe_handshake_error(inner)))
}

impl Inner {
    /// A new connection (TLS handshake included); a failure is told as an event with its
    /// kind and counted, as no transaction span exists yet.
    pub(crate) async fn connect(&self, ep: &Endpoint, until: Instant) -> Result<Conn, ClientError> {
        let r = self.open(ep, until).await;
        if let Err(e) = &r {
            crate::observe::client_connect_failed(e);
        }
        r
    }

    async fn open(&self, ep: &Endpoint, until: Instant) -> Result<Conn, ClientError> {
        let server = ep.name();
        let permit = timeout_at(until.into(), ep.permits.clone().acquire_owned())
            .await
            .map_err(|_| ClientError::Timeout {
                server: server.clone(),
                phase: "waiting for a connection slot (Max-Connections)",
            })?
            .expect("semaphore never closed");
        let addr = (ep.uri.host().trim_matches(['[', ']']), ep.uri.port());
        let connect_until = until.min(after(Instant::now(), self.cfg.connect_timeout));
        let tcp = match timeout_at(connect_until.into(), TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    server,
                    phase: "connect",
                })
            }
            Ok(Err(e)) => return Err(ClientError::Connect { server, source: e }),
            Ok(Ok(t)) => t,
        };
        let _ = tcp.set_nodelay(true);
        let (io, tls_version): (Box<dyn Io>, _) = if ep.uri.is_tls() {
            let connector = self
                .tls
                .as_ref()
                .expect("TLS is set up when an icaps server exists");
            let host = ep.uri.host().trim_matches(['[', ']']).to_string();
            let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| {
                ClientError::Config(Error::new(crate::ErrorKind::BadUri, 0, e.to_string()))
            })?;
            let tls_until = until.min(after(Instant::now(), self.cfg.tls_timeout));
            let tls = match timeout_at(tls_until.into(), connector.connect(name, tcp)).await {
                Err(_) => {
                    return Err(ClientError::Timeout {
                        server,
                        phase: "TLS handshake",
                    })
                }
                Ok(Err(e)) => return Err(self.io_error(&server, e)),
                Ok(Ok(t)) => t,
            };
            let v = tls.get_ref().1.protocol_version().map(|v| format!("{v:?}"));
            (Box::new(tls), v)
        } else {
            (Box::new(tcp), None)
        };
        Ok(Conn {
            io,
            decoder: ResponseDecoder::new(self.cfg.limits),
            tls_version,
            permit,
        })
    }

    pub(crate) fn io_error(&self, server: &str, e: io::Error) -> ClientError {
        match tls_failure(&e, self.cfg.tls.identity.is_some()) {
            Some((failure, message)) => ClientError::Tls {
                server: server.to_string(),
                failure,
                message,
            },
            None if e.kind() == io::ErrorKind::UnexpectedEof => ClientError::Io {
                server: server.to_string(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed (during a TLS handshake this often means the server refused the client certificate)",
                ),
            },
            None => ClientError::Io {
                server: server.to_string(),
                source: e,
            },
        }
    }

    /// A pooled connection when one is fresh, else a new one; true when pooled.
    pub(crate) async fn checkout(
        &self,
        ep: &Endpoint,
        until: Instant,
    ) -> Result<(Conn, bool), ClientError> {
        let pooled = ep.idle.take(self.cfg.idle_timeout, |c| c.decoder.is_idle());
        match pooled {
            Some(c) => Ok((c, true)),
            None => Ok((self.connect(ep, until).await?, false)),
        }
    }

    pub(crate) fn checkin(&self, ep: &Endpoint, c: Conn) {
        // The permits bound the connections; the pool needs no cap of its own.
        ep.idle.put(c, usize::MAX);
        ep.observe(ep.is_down());
    }
}
