//! ClamAV's daemon (clamd) as the engine: bodies streamed to it with `INSTREAM` as they
//! arrive (or, small ones to a local clamd, handed over as a file with `FILDES`), over
//! sessions that are pooled, bounded and timed, and its health kept by `PING`.
//!
//! # The protocol, as used here
//!
//! Every command and answer is NUL-terminated (the `z` prefix). A connection opens a session
//! (`zIDSESSION\0`), so it carries one scan after the other: clamd numbers the answers of a
//! session (`1: stream: OK\0`, `2: ...`). A scan is `zINSTREAM\0`, then the body in chunks
//! (a 4-byte big-endian length, then that many bytes; at most [`ClamdConfig::chunk_size`]
//! each), then a zero length. The answer comes once clamd has the whole body:
//!
//! - `stream: OK`: clean.
//! - `stream: NAME FOUND`: a signature or heuristic named NAME matched (one name: clamd
//!   stops at the first match unless `AllMatchScan` is set). ClamAV's data-leak heuristics
//!   are `Heuristics.Structured.CreditCardNumber` and `Heuristics.Structured.SSN` (with
//!   `StructuredDataDetection yes`).
//! - `INSTREAM size limit exceeded. ERROR`: the body is over clamd's `StreamMaxLength`; clamd
//!   closes the connection, possibly while chunks are still being written.
//! - anything else ending in `ERROR`: clamd could not scan (a database or memory problem).
//!
//! `INSTREAM` makes clamd copy the stream into a temporary file before it scans it, which is
//! most of its work on a small body. A clamd on a Unix socket can instead be handed an open
//! file (`zFILDES\0`, then one byte carrying the descriptor as `SCM_RIGHTS`), as c-icap's
//! clamd module does: a body of at most [`ClamdConfig::fildes_max`] bytes is written as it
//! comes to an anonymous in-memory file (`memfd_create`, Linux: kernel memory, as c-icap's
//! spool files are page cache) and passed once whole;
//! clamd answers `fd[N]: OK` or `fd[N]: NAME FOUND`. A longer body switches to `INSTREAM`
//! with what was held. `StreamMaxLength` does not apply to such files (clamd's
//! `MaxFileSize` and `MaxScanSize` do).
//!
//! # Bounds
//!
//! At most [`ClamdConfig::max_in_flight`] scans at once (a scan waits up to
//! [`ClamdConfig::timeout`] for its turn), each holding one session; idle sessions are kept
//! for [`ClamdConfig::idle_keep`] (under clamd's own `IdleTimeout`, 30 s by default). Every
//! connect, write and answer has a deadline. Memory per scan is a 16 KiB gathering buffer
//! (the body goes through as it comes), or for `FILDES` at most [`ClamdConfig::fildes_max`]
//! bytes in its anonymous file.
//!
//! # Health
//!
//! [`Clamd::spawn_health_check`] sends `PING` on a fresh connection every
//! [`ClamdConfig::ping_interval`]; a failed `PING`, or a scan that cannot reach clamd, marks
//! it down ([`Clamd::is_up`] false, and [`Clamd::scan`] fails at once with
//! [`ClamdError::Unavailable`]) until a `PING` answers `PONG` again.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

/// Longest answer read from clamd (a virus name is well under 200 bytes).
const MAX_ANSWER: usize = 4096;

/// Small chunks are gathered up to this many bytes (with the command before them and the
/// end marker after them) and written at once: a 1 KiB body goes out in one write, and clamd
/// wakes up once for it instead of four times.
const GATHER: usize = 16 * 1024;

/// After a write failed, how long to wait for clamd's reason (it closes the connection right
/// after writing `INSTREAM size limit exceeded`).
const REASON_WAIT: Duration = Duration::from_secs(2);

/// Where clamd listens: its `LocalSocket` (a Unix socket path) or its `TCPSocket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddr {
    /// A Unix socket path.
    Unix(PathBuf),
    /// `HOST:PORT`.
    Tcp(String),
}

impl FromStr for ClamdAddr {
    type Err = String;

    /// A path (anything with a `/`) is a Unix socket; else `HOST:PORT` (`[::1]:3310`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('/') {
            return Ok(ClamdAddr::Unix(PathBuf::from(s)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(ClamdAddr::Tcp(s.to_string()))
            }
            _ => Err(format!(
                "{s:?}: expected a Unix socket path (with a /) or HOST:PORT"
            )),
        }
    }
}

impl fmt::Display for ClamdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClamdAddr::Unix(p) => write!(f, "{}", p.display()),
            ClamdAddr::Tcp(a) => f.write_str(a),
        }
    }
}

/// How to talk to clamd.
#[derive(Debug, Clone)]
pub struct ClamdConfig {
    /// Where clamd listens.
    pub addr: ClamdAddr,
    /// Scans sent at once (each on its own session); more wait for a turn. Keep it at or
    /// under clamd's `MaxThreads` plus `MaxQueue`. Default 16.
    pub max_in_flight: usize,
    /// Longest wait for a turn, for one write to clamd, and for its answer after the last
    /// chunk (clamd scans the whole body then). Default 60 s.
    pub timeout: Duration,
    /// A connection to clamd, and a `PING` answer. Default 5 s.
    pub connect_timeout: Duration,
    /// Largest `INSTREAM` chunk; longer pieces of a body are split. Default 64 KiB (clamd's
    /// `StreamMaxLength` counts the bytes, not the chunks).
    pub chunk_size: usize,
    /// Idle sessions are closed after this (clamd closes them after its `IdleTimeout`, 30 s
    /// by default). Default 10 s.
    pub idle_keep: Duration,
    /// Time between two `PING`s of the health check. Default 2 s.
    pub ping_interval: Duration,
    /// Bodies of at most this many bytes go to a clamd on a Unix socket as a file
    /// (`FILDES`, Linux), held in an anonymous in-memory file until their end; longer ones,
    /// and every body to a
    /// TCP clamd, are streamed (`INSTREAM`). 0: always `INSTREAM`. Default 256 KiB; keep it
    /// under clamd's `MaxFileSize` and `MaxScanSize`.
    pub fildes_max: usize,
}

impl ClamdConfig {
    /// The defaults above, for clamd at `addr`.
    pub fn new(addr: ClamdAddr) -> Self {
        ClamdConfig {
            addr,
            max_in_flight: 16,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            chunk_size: 64 * 1024,
            idle_keep: Duration::from_secs(10),
            ping_interval: Duration::from_secs(2),
            fildes_max: 256 * 1024,
        }
    }
}

/// What clamd said of a body it scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdVerdict {
    /// Nothing found.
    Clean,
    /// A signature or heuristic matched: its name, e.g. `Win.Test.EICAR_HDB-1` or
    /// `Heuristics.Structured.CreditCardNumber`.
    Found(String),
}

/// Why a scan has no verdict. None of these is "clean": a caller answers with an error (or
/// a block, for [`ClamdError::SizeLimit`] by policy).
#[derive(Debug)]
pub enum ClamdError {
    /// clamd is marked down (its last `PING` failed, or a scan could not reach it); the text
    /// says why.
    Unavailable(String),
    /// No connection to clamd.
    Connect(io::Error),
    /// A session broke while the body was sent or the answer read.
    Io(io::Error),
    /// Something took longer than its deadline: the text names it.
    Timeout(&'static str),
    /// The body is over clamd's `StreamMaxLength` (`INSTREAM size limit exceeded`).
    SizeLimit,
    /// The body could not be put in a file for `FILDES` (no memory for it, say).
    Spool(io::Error),
    /// clamd answered with an error of its own (a database or memory problem): its text.
    Engine(String),
    /// An answer this client does not understand: its text.
    Protocol(String),
}

impl fmt::Display for ClamdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClamdError::Unavailable(why) => write!(f, "clamd is unavailable: {why}"),
            ClamdError::Connect(e) => write!(f, "cannot connect to clamd: {e}"),
            ClamdError::Io(e) => write!(f, "clamd connection failed: {e}"),
            ClamdError::Timeout(what) => write!(f, "clamd timed out: {what}"),
            ClamdError::SizeLimit => {
                f.write_str("clamd refused the body: INSTREAM size limit exceeded")
            }
            ClamdError::Engine(msg) => write!(f, "clamd error: {msg}"),
            ClamdError::Spool(e) => write!(f, "cannot hold the body for clamd: {e}"),
            ClamdError::Protocol(msg) => write!(f, "unexpected answer from clamd: {msg:?}"),
        }
    }
}

impl std::error::Error for ClamdError {}

impl ClamdError {
    /// True when the error says clamd itself is unreachable or unusable (rather than this
    /// one body): the health state turns down on these.
    fn means_down(&self) -> bool {
        matches!(
            self,
            ClamdError::Unavailable(_) | ClamdError::Connect(_) | ClamdError::Io(_)
        )
    }
}

/// A byte stream to clamd.
enum Conn {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Conn {
    async fn open(addr: &ClamdAddr) -> io::Result<Conn> {
        match addr {
            ClamdAddr::Tcp(a) => {
                let s = TcpStream::connect(a.as_str()).await?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            }
            #[cfg(unix)]
            ClamdAddr::Unix(p) => Ok(Conn::Unix(tokio::net::UnixStream::connect(p).await?)),
            #[cfg(not(unix))]
            ClamdAddr::Unix(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Unix sockets need a Unix system",
            )),
        }
    }

    fn io(&mut self) -> &mut (dyn Io + '_) {
        match self {
            Conn::Tcp(s) => s,
            #[cfg(unix)]
            Conn::Unix(s) => s,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection in an `IDSESSION`, with the number of the next answer.
struct Session {
    conn: Conn,
    next_id: u64,
}

impl Session {
    async fn open(cfg: &ClamdConfig) -> Result<Session, ClamdError> {
        let mut conn = timeout(cfg.connect_timeout, Conn::open(&cfg.addr))
            .await
            .map_err(|_| ClamdError::Timeout("connecting"))?
            .map_err(ClamdError::Connect)?;
        write_all(&mut conn, b"zIDSESSION\0", cfg.timeout).await?;
        Ok(Session { conn, next_id: 1 })
    }

    /// False when clamd closed the session while it was idle (or sent something unasked).
    async fn still_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        // Polled once: a read that would block means the session is open and quiet.
        matches!(
            timeout(Duration::ZERO, self.conn.io().read(&mut probe)).await,
            Err(_elapsed)
        )
    }

    /// Reads the answer numbered `id` (without the number).
    async fn answer(&mut self, id: u64, limit: Duration) -> Result<String, ClamdError> {
        let text = read_answer(&mut self.conn, limit).await?;
        let prefix = format!("{id}: ");
        match text.strip_prefix(&prefix) {
            Some(rest) => Ok(rest.to_string()),
            // An error clamd sends before it reads the command carries no number.
            None => Err(classify_error(&text)),
        }
    }
}

async fn write_all(conn: &mut Conn, bytes: &[u8], limit: Duration) -> Result<(), ClamdError> {
    match timeout(limit, conn.io().write_all(bytes)).await {
        Ok(r) => r.map_err(ClamdError::Io),
        Err(_) => Err(ClamdError::Timeout("writing to clamd")),
    }
}

/// One NUL-terminated answer (at most [`MAX_ANSWER`] bytes), without its NUL.
async fn read_answer(conn: &mut Conn, limit: Duration) -> Result<String, ClamdError> {
    let read = async {
        let mut out = Vec::new();
        let mut byte = [0u8; 256];
        loop {
            let n = conn.io().read(&mut byte).await.map_err(ClamdError::Io)?;
            if n == 0 {
                return Err(ClamdError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "clamd closed the connection before answering{}",
                        if out.is_empty() {
                            String::new()
                        } else {
                            format!(" (after {:?})", String::from_utf8_lossy(&out))
                        }
                    ),
                )));
            }
            out.extend_from_slice(&byte[..n]);
            if let Some(end) = out.iter().position(|&b| b == 0) {
                // One command at a time per session: nothing follows the NUL.
                out.truncate(end);
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            if out.len() > MAX_ANSWER {
                return Err(ClamdError::Protocol(format!(
                    "an answer over {MAX_ANSWER} bytes: {}...",
                    String::from_utf8_lossy(&out[..64])
                )));
            }
        }
    };
    timeout(limit, read)
        .await
        .map_err(|_| ClamdError::Timeout("waiting for clamd's answer"))?
}

/// An answer that is not a verdict.
fn classify_error(text: &str) -> ClamdError {
    if text.contains("size limit exceeded") {
        ClamdError::SizeLimit
    } else if let Some(msg) = text.strip_suffix(" ERROR") {
        ClamdError::Engine(msg.trim_end_matches('.').to_string())
    } else {
        ClamdError::Protocol(text.to_string())
    }
}

/// The verdict in an `INSTREAM` or `FILDES` answer (`stream: OK`, `fd[12]: NAME FOUND`).
fn parse_verdict(text: &str) -> Result<ClamdVerdict, ClamdError> {
    let scanned = text.strip_prefix("stream: ").or_else(|| {
        let (fd, rest) = text.strip_prefix("fd[")?.split_once("]: ")?;
        fd.bytes().all(|b| b.is_ascii_digit()).then_some(rest)
    });
    match scanned {
        Some("OK") => Ok(ClamdVerdict::Clean),
        Some(rest) => match rest.strip_suffix(" FOUND") {
            Some(name) if !name.is_empty() => Ok(ClamdVerdict::Found(name.to_string())),
            _ => Err(classify_error(text)),
        },
        None => Err(classify_error(text)),
    }
}

/// clamd as a shared engine: a pool of sessions, a bound on scans at once, and a health
/// state. Cheap to share behind an `Arc`.
pub struct Clamd {
    cfg: ClamdConfig,
    turns: Arc<Semaphore>,
    idle: Mutex<Vec<(Session, Instant)>>,
    up: AtomicBool,
    why_down: Mutex<String>,
}

impl fmt::Debug for Clamd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clamd")
            .field("addr", &self.cfg.addr)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Clamd {
    /// A client for clamd as `cfg` says, marked down until [`Clamd::check`] (or the health
    /// check) has had a `PONG`.
    pub fn new(cfg: ClamdConfig) -> Arc<Clamd> {
        Arc::new(Clamd {
            turns: Arc::new(Semaphore::new(cfg.max_in_flight.max(1))),
            idle: Mutex::new(Vec::new()),
            up: AtomicBool::new(false),
            why_down: Mutex::new("not checked yet".to_string()),
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClamdConfig {
        &self.cfg
    }

    /// Sessions open and idle in the pool, for a next scan.
    pub fn idle_sessions(&self) -> usize {
        self.idle.lock().expect("not poisoned").len()
    }

    /// True while clamd answers (see the module's Health section).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Why clamd is marked down (the last failure), when it is.
    pub fn why_down(&self) -> Option<String> {
        (!self.is_up()).then(|| self.why_down.lock().expect("not poisoned").clone())
    }

    fn mark_down(&self, why: String) {
        *self.why_down.lock().expect("not poisoned") = why;
        if self.up.swap(false, Ordering::AcqRel) {
            eprintln!(
                "clamd {}: DOWN, transactions get 503 until it answers PING: {}",
                self.cfg.addr,
                self.why_down().unwrap_or_default()
            );
        }
        // Sessions of a clamd that went away are dead too.
        self.idle.lock().expect("not poisoned").clear();
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            eprintln!("clamd {}: up (PONG)", self.cfg.addr);
        }
    }

    /// Sends `PING` on a fresh connection; marks clamd up on `PONG`, down otherwise.
    pub async fn check(&self) -> Result<(), ClamdError> {
        let ping = async {
            let mut conn = Conn::open(&self.cfg.addr)
                .await
                .map_err(ClamdError::Connect)?;
            write_all(&mut conn, b"zPING\0", self.cfg.connect_timeout).await?;
            let answer = read_answer(&mut conn, self.cfg.connect_timeout).await?;
            if answer == "PONG" {
                Ok(())
            } else {
                Err(ClamdError::Protocol(answer))
            }
        };
        let result = timeout(self.cfg.connect_timeout, ping)
            .await
            .unwrap_or(Err(ClamdError::Timeout("PING")));
        match &result {
            Ok(()) => self.mark_up(),
            Err(e) => self.mark_down(format!("PING: {e}")),
        }
        result
    }

    /// Checks clamd every [`ClamdConfig::ping_interval`] on a tokio task (which ends when
    /// the last `Arc` of this client is dropped).
    pub fn spawn_health_check(self: &Arc<Self>) {
        let weak: Weak<Clamd> = Arc::downgrade(self);
        let interval = self.cfg.ping_interval;
        tokio::spawn(async move {
            loop {
                let Some(clamd) = weak.upgrade() else { return };
                let _ = clamd.check().await;
                drop(clamd);
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// Starts a scan: waits for a turn, takes an idle session (or opens one) and sends
    /// `INSTREAM`. Fails at once while clamd is marked down.
    pub async fn scan(self: &Arc<Self>) -> Result<Instream, ClamdError> {
        if let Some(why) = self.why_down() {
            return Err(ClamdError::Unavailable(why));
        }
        let turn = timeout(self.cfg.timeout, self.turns.clone().acquire_owned())
            .await
            .map_err(|_| ClamdError::Timeout("waiting for a free clamd connection"))?
            .expect("the semaphore is never closed");
        let result = self.start(turn).await;
        if let Err(e) = &result {
            if e.means_down() {
                self.mark_down(e.to_string());
            }
        }
        result
    }

    async fn start(self: &Arc<Self>, turn: OwnedSemaphorePermit) -> Result<Instream, ClamdError> {
        // A pooled session may have been closed by clamd since: skip those, else a new one.
        let mut reused = None;
        while let Some(mut session) = self.take_idle() {
            if session.still_open().await {
                reused = Some(session);
                break;
            }
        }
        let pooled = reused.is_some();
        let session = match reused {
            Some(s) => s,
            None => Session::open(&self.cfg).await?,
        };
        let (held, pending) = if self.fildes() {
            (Some(HeldBody::default()), Vec::new())
        } else {
            let mut pending = Vec::with_capacity(GATHER);
            pending.extend_from_slice(b"zINSTREAM\0");
            (None, pending)
        };
        Ok(Instream {
            clamd: self.clone(),
            session: Some(session),
            _turn: turn,
            sent: 0,
            held,
            pending,
            pooled,
            written: false,
        })
    }

    /// Small bodies go as a file descriptor: to a clamd on this machine, where the
    /// descriptor can be passed.
    fn fildes(&self) -> bool {
        cfg!(target_os = "linux")
            && self.cfg.fildes_max > 0
            && matches!(self.cfg.addr, ClamdAddr::Unix(_))
    }

    fn take_idle(&self) -> Option<Session> {
        let mut idle = self.idle.lock().expect("not poisoned");
        let now = Instant::now();
        idle.retain(|(_, since)| now.duration_since(*since) < self.cfg.idle_keep);
        idle.pop().map(|(s, _)| s)
    }

    fn put_idle(&self, session: Session) {
        if self.is_up() {
            let mut idle = self.idle.lock().expect("not poisoned");
            if idle.len() < self.cfg.max_in_flight {
                idle.push((session, Instant::now()));
            }
        }
    }
}

/// A scan under way: feed the body with [`Instream::feed`], then [`Instream::finish`] for
/// clamd's verdict. Dropped unfinished, its session is closed (clamd drops the stream).
pub struct Instream {
    clamd: Arc<Clamd>,
    session: Option<Session>,
    _turn: OwnedSemaphorePermit,
    sent: u64,
    /// `FILDES` mode: the body so far (at most [`ClamdConfig::fildes_max`] bytes); `None`
    /// once streaming with `INSTREAM`.
    held: Option<HeldBody>,
    /// Bytes gathered and not yet written (at most [`GATHER`]).
    pending: Vec<u8>,
    /// The session came from the pool (clamd may have closed it a moment ago).
    pooled: bool,
    /// Something was written on the session for this scan.
    written: bool,
}

impl fmt::Debug for Instream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instream")
            .field("sent", &self.sent)
            .finish()
    }
}

impl Instream {
    /// Body bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Sends `data` to clamd, in chunks of at most [`ClamdConfig::chunk_size`] (small ones
    /// gathered before they are written); or holds it, while the body may still go as a
    /// file.
    pub async fn feed(&mut self, data: &[u8]) -> Result<(), ClamdError> {
        if self.session.is_none() {
            return Err(ClamdError::Protocol("the scan already failed".into()));
        }
        if let Some(held) = &mut self.held {
            if held.len + data.len() <= self.clamd.cfg.fildes_max {
                held.write(data).map_err(ClamdError::Spool)?;
                self.sent += data.len() as u64;
                return Ok(());
            }
            // Too long for a file in memory: stream it, from what was held.
            let held = self.held.take().expect("checked above");
            self.sent -= held.len as u64;
            self.pending.extend_from_slice(b"zINSTREAM\0");
            let mut file = held.rewound().map_err(ClamdError::Spool)?;
            let mut buf = vec![0u8; GATHER];
            loop {
                let n = file.read(&mut buf).map_err(ClamdError::Spool)?;
                if n == 0 {
                    break;
                }
                self.stream(&buf[..n]).await?;
            }
        }
        self.stream(data).await
    }

    async fn stream(&mut self, data: &[u8]) -> Result<(), ClamdError> {
        let chunk_size = self.clamd.cfg.chunk_size.clamp(1, u32::MAX as usize);
        for chunk in data.chunks(chunk_size) {
            let len = u32::try_from(chunk.len()).expect("clamped to u32");
            if self.pending.len() + 4 + chunk.len() > GATHER {
                self.flush().await?;
            }
            self.pending.extend_from_slice(&len.to_be_bytes());
            if 4 + chunk.len() > GATHER {
                // Large: straight from the body's buffer, no copy.
                self.flush().await?;
                self.write_direct(chunk).await?;
            } else {
                self.pending.extend_from_slice(chunk);
            }
            self.sent += chunk.len() as u64;
        }
        Ok(())
    }

    /// Writes the gathered bytes. The first write on a pooled session that clamd closed
    /// meanwhile is tried again on a new session: nothing of this scan reached clamd yet.
    async fn flush(&mut self) -> Result<(), ClamdError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let limit = self.clamd.cfg.timeout;
        let session = self.session.as_mut().expect("checked by the callers");
        let mut result = write_all(&mut session.conn, &self.pending, limit).await;
        if result.is_err() && self.pooled && !self.written {
            self.pooled = false;
            match Session::open(&self.clamd.cfg).await {
                Ok(mut fresh) => {
                    result = write_all(&mut fresh.conn, &self.pending, limit).await;
                    self.session = Some(fresh);
                }
                Err(e) => result = Err(e),
            }
        }
        match result {
            Ok(()) => {
                self.written = true;
                self.pending.clear();
                Ok(())
            }
            Err(e) => Err(self.explain(e).await),
        }
    }

    /// `FILDES`: the held body in an anonymous file, its descriptor passed to clamd. A
    /// pooled session that clamd closed meanwhile is replaced once, as in [`Self::flush`].
    #[cfg(target_os = "linux")]
    async fn hand_over(&mut self, file: &File) -> Result<(), ClamdError> {
        let limit = self.clamd.cfg.timeout;
        let session = self.session.as_mut().expect("checked by the callers");
        let mut result = fildes::send(&mut session.conn, file, limit).await;
        if result.is_err() && self.pooled {
            self.pooled = false;
            match Session::open(&self.clamd.cfg).await {
                Ok(mut fresh) => {
                    result = fildes::send(&mut fresh.conn, file, limit).await;
                    self.session = Some(fresh);
                }
                Err(e) => result = Err(e),
            }
        }
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(self.explain(e).await),
        }
    }

    #[cfg(not(target_os = "linux"))]
    async fn hand_over(&mut self, _file: &File) -> Result<(), ClamdError> {
        unreachable!("FILDES is chosen on Linux only")
    }

    async fn write_direct(&mut self, bytes: &[u8]) -> Result<(), ClamdError> {
        let limit = self.clamd.cfg.timeout;
        let session = self.session.as_mut().expect("checked by the callers");
        match write_all(&mut session.conn, bytes, limit).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.explain(e).await),
        }
    }

    /// A failed write: clamd may have said why before closing (its size limit).
    async fn explain(&mut self, e: ClamdError) -> ClamdError {
        let Some(mut session) = self.session.take() else {
            return e;
        };
        let e = match e {
            ClamdError::Io(io) => match session.answer(session.next_id, REASON_WAIT).await {
                Err(ClamdError::SizeLimit) => ClamdError::SizeLimit,
                Ok(text) if text.contains("size limit exceeded") => ClamdError::SizeLimit,
                _ => ClamdError::Io(io),
            },
            other => other,
        };
        if e.means_down() {
            self.clamd.mark_down(e.to_string());
        }
        e
    }

    /// Ends the body and waits for clamd's verdict (up to [`ClamdConfig::timeout`]).
    pub async fn finish(mut self) -> Result<ClamdVerdict, ClamdError> {
        if self.session.is_none() {
            return Err(ClamdError::Protocol("the scan already failed".into()));
        }
        match self.held.take() {
            Some(held) => {
                let file = held.rewound().map_err(ClamdError::Spool)?;
                self.hand_over(&file).await?
            }
            None => {
                self.pending.extend_from_slice(&0u32.to_be_bytes());
                self.flush().await?;
            }
        }
        let limit = self.clamd.cfg.timeout;
        let mut session = self.session.take().expect("flush keeps it on success");
        let id = session.next_id;
        let verdict = session
            .answer(id, limit)
            .await
            .and_then(|text| parse_verdict(&text));
        match &verdict {
            Ok(_) => {
                session.next_id += 1;
                self.clamd.put_idle(session);
            }
            Err(e) if e.means_down() => self.clamd.mark_down(e.to_string()),
            Err(_) => {}
        }
        verdict
    }
}

/// A body on its way to `FILDES`: written as it comes to an anonymous in-memory file,
/// made at its first byte.
#[derive(Default)]
struct HeldBody {
    file: Option<File>,
    len: usize,
}

impl HeldBody {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(anonymous_file()?),
        };
        file.write_all(data)?;
        self.len += data.len();
        Ok(())
    }

    /// The file, read from its start (an empty one for an empty body).
    fn rewound(self) -> io::Result<File> {
        let mut file = match self.file {
            Some(f) => f,
            None => anonymous_file()?,
        };
        file.rewind()?;
        Ok(file)
    }
}

#[cfg(target_os = "linux")]
fn anonymous_file() -> io::Result<File> {
    let fd = rustix::fs::memfd_create("icap-clamd", rustix::fs::MemfdFlags::CLOEXEC)?;
    Ok(File::from(fd))
}

#[cfg(not(target_os = "linux"))]
fn anonymous_file() -> io::Result<File> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Passing a body to clamd as an open file.
#[cfg(target_os = "linux")]
mod fildes {
    use std::fs::File;
    use std::io::{self, IoSlice};
    use std::mem::MaybeUninit;
    use std::os::fd::AsFd;
    use std::time::Duration;

    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use tokio::io::Interest;

    use super::{write_all, ClamdError, Conn};

    /// `zFILDES\0`, then one byte carrying `file`'s descriptor (clamd wants at least one
    /// byte of data with it).
    pub(super) async fn send(
        conn: &mut Conn,
        file: &File,
        limit: Duration,
    ) -> Result<(), ClamdError> {
        if !matches!(conn, Conn::Unix(_)) {
            return Err(ClamdError::Protocol(
                "FILDES needs clamd on a Unix socket".into(),
            ));
        }
        write_all(conn, b"zFILDES\0", limit).await?;
        let Conn::Unix(sock) = conn else {
            unreachable!("checked above")
        };
        let pass = async {
            loop {
                sock.writable().await?;
                let sent = sock.try_io(Interest::WRITABLE, || {
                    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                    let mut control = SendAncillaryBuffer::new(&mut space);
                    let fds = [file.as_fd()];
                    control.push(SendAncillaryMessage::ScmRights(&fds));
                    let byte = [0u8];
                    Ok(sendmsg(
                        sock.as_fd(),
                        &[IoSlice::new(&byte)],
                        &mut control,
                        SendFlags::NOSIGNAL,
                    )?)
                });
                match sent {
                    Ok(1) => return Ok(()),
                    Ok(_) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(limit, pass).await {
            Ok(r) => r.map_err(ClamdError::Io),
            Err(_) => Err(ClamdError::Timeout("passing the body's file to clamd")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_a_path_or_host_and_port() {
        assert_eq!(
            "/run/clamav/clamd.ctl".parse::<ClamdAddr>(),
            Ok(ClamdAddr::Unix("/run/clamav/clamd.ctl".into()))
        );
        assert_eq!(
            "./clamd.sock".parse::<ClamdAddr>(),
            Ok(ClamdAddr::Unix("./clamd.sock".into()))
        );
        assert_eq!(
            "127.0.0.1:3310".parse::<ClamdAddr>(),
            Ok(ClamdAddr::Tcp("127.0.0.1:3310".into()))
        );
        assert_eq!(
            "[::1]:3310".parse::<ClamdAddr>(),
            Ok(ClamdAddr::Tcp("[::1]:3310".into()))
        );
        for bad in ["clamd", "host:", ":3310", "host:99999"] {
            let e = bad.parse::<ClamdAddr>().unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn answers_are_verdicts_or_errors_told_apart() {
        assert_eq!(parse_verdict("stream: OK").unwrap(), ClamdVerdict::Clean);
        assert_eq!(
            parse_verdict("stream: Win.Test.EICAR_HDB-1 FOUND").unwrap(),
            ClamdVerdict::Found("Win.Test.EICAR_HDB-1".into())
        );
        // FILDES answers name the descriptor clamd received.
        assert_eq!(parse_verdict("fd[12]: OK").unwrap(), ClamdVerdict::Clean);
        assert_eq!(
            parse_verdict("fd[7]: Heuristics.Structured.SSN FOUND").unwrap(),
            ClamdVerdict::Found("Heuristics.Structured.SSN".into())
        );
        assert!(matches!(
            parse_verdict("fd[x]: OK"),
            Err(ClamdError::Protocol(_))
        ));
        assert!(matches!(
            parse_verdict("INSTREAM size limit exceeded. ERROR"),
            Err(ClamdError::SizeLimit)
        ));
        match parse_verdict("stream: Can't allocate memory ERROR") {
            Err(ClamdError::Engine(m)) => assert_eq!(m, "stream: Can't allocate memory"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_verdict("stream:  FOUND"),
            Err(ClamdError::Protocol(_))
        ));
        assert!(matches!(
            parse_verdict("PONG"),
            Err(ClamdError::Protocol(_))
        ));
    }
}
