//! Real ICAP peers for interop tests: c-icap, c-icap-client, squid, stunnel, an HTTP origin
//! and curl, started on 127.0.0.1 with configurations rendered from `tests/peers/*.in` into a
//! temporary directory.
//!
//! - [`available`] decides whether a test can run: a missing program is a skip with a message
//!   saying how to install it, or a failure when `CI=true`.
//! - [`serial`] is a lock every peer test holds, so peers of different tests never run at
//!   the same time (the machine has 2 cores; c-icap and squid are heavy to start).
//! - Every process is started in its own process group and stopped by its PID when its
//!   [`Process`] is dropped, also when the test panics: SIGTERM first (c-icap removes its
//!   semaphores then), SIGKILL to the group after a grace period, and always `wait()`ed.
//! - [`TempDir`] is removed on drop, but kept (and its path printed) when the test panicked
//!   or `KEEP_PEER_DIRS` is set, so logs of a failure can be read.
//!
//! Use from a test file with `mod peers_support;`.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How to install every peer (root and Debian's apt).
pub const INSTALL_HINT: &str = "install them with `bash .ci/install-peers.sh` (as root on Debian/Ubuntu: \
     apt-get install c-icap libc-icap-mod-urlcheck libc-icap-mod-contentfiltering libc-icap-mod-virus-scan clamav-daemon squid stunnel4 curl python3)";

/// Directory of the peer templates and scripts (`tests/peers`).
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// True when running in CI, where a missing peer is a failure rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The full path of `program`: `PATH`, then the sbin directories (squid lives in
/// `/usr/sbin`, which a non-root `PATH` often lacks).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The c-icap module directory (where `srv_echo.so` is), as `render.sh` finds it.
pub fn cicap_module_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("c_icap"))
        .collect();
    dirs.push(PathBuf::from("/usr/lib/c_icap"));
    dirs.into_iter().find(|d| d.join("srv_echo.so").is_file())
}

/// Checks that every program (and, for `c-icap`, its modules) is installed. When one is
/// missing: panics under `CI=true`, else prints why the test is skipped and returns false.
pub fn available(programs: &[&str]) -> bool {
    let mut missing: Vec<String> = programs
        .iter()
        .filter(|p| find_program(p).is_none())
        .map(|p| p.to_string())
        .collect();
    if programs.contains(&"c-icap") && cicap_module_dir().is_none() {
        missing.push("c-icap modules (srv_echo.so)".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "peer program(s) not installed: {}; {INSTALL_HINT}",
        missing.join(", ")
    );
    if in_ci() {
        panic!("CI=true: {msg}");
    }
    eprintln!("SKIPPED (not a pass): {msg}");
    false
}

static SERIAL: Mutex<()> = Mutex::new(());

/// The guard of [`serial`]: peer tests of this binary run one at a time while it lives.
///
/// Holding it across `.await` in a `#[tokio::test]` is intended: it is taken first thing in
/// the test, on the test's own runtime, and only orders whole tests, so no task on that
/// runtime ever waits for it.
#[must_use = "the peers are serialised only while the guard lives"]
pub struct Serial {
    _guard: MutexGuard<'static, ()>,
}

/// Held by each peer test for its whole run: peers of two tests never overlap. A panic in
/// another test (poisoning) does not matter: the lock only orders tests.
pub fn serial() -> Serial {
    Serial {
        _guard: SERIAL.lock().unwrap_or_else(|e| e.into_inner()),
    }
}

/// A port that was free a moment ago on 127.0.0.1 (the OS picks it; the small race with
/// other programs is accepted, as every start waits for its own port to open).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A temporary directory, removed on drop unless the thread is panicking or
/// `KEEP_PEER_DIRS` is set.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/icap-peers-<pid>-<n>-<label>`, mode 755 (squid, running as `proxy`,
    /// must traverse it).
    pub fn new(label: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!(
            "icap-peers-{}-{}-{label}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// A subdirectory, created.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).expect("create subdir");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("KEEP_PEER_DIRS").is_some() {
            eprintln!("peer files kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Renders `tests/peers/<template>` into `out`, replacing each `@KEY@` by its value, as
/// `render.sh` does: `MODDIR`, `PEERS` and `EXTRA` (empty) have defaults, and a placeholder
/// left over is an error.
pub fn render(template: &str, out: &Path, vars: &[(&str, &str)]) {
    let tpl = peers_dir().join(template);
    let mut text =
        fs::read_to_string(&tpl).unwrap_or_else(|e| panic!("read template {}: {e}", tpl.display()));
    let moddir = cicap_module_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let peers = peers_dir().display().to_string();
    let defaults = [
        ("MODDIR", moddir.as_str()),
        ("PEERS", peers.as_str()),
        ("EXTRA", ""),
    ];
    for (k, v) in vars.iter().chain(defaults.iter()) {
        text = text.replace(&format!("@{k}@"), v);
    }
    let re = regex::Regex::new(r"@[A-Z_]+@").expect("static regex");
    let left: Vec<&str> = re.find_iter(&text).map(|m| m.as_str()).collect();
    assert!(
        left.is_empty(),
        "render {template}: unsubstituted placeholders {left:?}"
    );
    fs::write(out, text).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
}

/// Sends `signal` (e.g. `-TERM`) to a PID, or a process group with a negative id, with
/// `kill(1)` (no libc dependency for one call).
fn send_signal(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits for `child` to exit for at most `limit`.
/// Waits up to `limit` for `child` to exit.
pub fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A long-running peer (server), stopped by its PID on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    /// How long SIGTERM may take before SIGKILL (c-icap ~1.2 s, squid ~1.8 s).
    grace: Duration,
    stopped: bool,
}

impl Process {
    /// Starts `cmd` in its own process group, stdout and stderr into `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Process {
        let out = fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("dup log");
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own group: if it forks (c-icap children), a SIGKILL reaches them all.
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}"));
        Process {
            name: name.into(),
            child,
            log,
            grace: Duration::from_secs(5),
            stopped: false,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process printed so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits until 127.0.0.1:`port` accepts connections. Panics with the log when the
    /// process exits first or `limit` passes.
    pub fn wait_port(&mut self, port: u16, limit: Duration) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!(
                    "{} exited ({s}) before opening port {port}:\n{}",
                    self.name,
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() >= end {
                panic!(
                    "{} did not open port {port} within {limit:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process: SIGTERM to its PID, SIGKILL to its group after the grace period;
    /// always reaped. Returns how it exited (`None` when killed).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.stopped {
            return None;
        }
        self.stopped = true;
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        let pid = self.child.id().to_string();
        send_signal("-TERM", &pid);
        if let Some(s) = wait_for(&mut self.child, self.grace) {
            return Some(s);
        }
        send_signal("-KILL", &format!("-{pid}"));
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a short-lived tool (c-icap-client, curl) did.
#[derive(Debug)]
pub struct ToolOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

/// Runs a tool to completion (output into files in `dir`, so large output cannot block it),
/// killing it and panicking after `limit`.
pub fn run_tool(dir: &Path, cmd: &mut Command, limit: Duration) -> ToolOutput {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let (o, e) = (
        dir.join(format!("tool-{n}.out")),
        dir.join(format!("tool-{n}.err")),
    );
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&o).expect("create stdout file"))
        .stderr(fs::File::create(&e).expect("create stderr file"))
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|err| panic!("run {cmd:?}: {err}"));
    let status = match wait_for(&mut child, limit) {
        Some(s) => s,
        None => {
            send_signal("-KILL", &format!("-{}", child.id()));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}; stdout:\n{}",
                fs::read_to_string(&o).unwrap_or_default()
            );
        }
    };
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    ToolOutput {
        status,
        stdout: read(&o),
        stderr: read(&e),
    }
}

/// What curl got through a proxy.
#[derive(Debug)]
pub struct Fetched {
    /// The HTTP status (0 when curl got none).
    pub code: u16,
    /// The body as far as it came.
    pub body: Vec<u8>,
    /// Whether curl exited 0 (a transfer cut by the proxy makes it fail).
    pub ok: bool,
}

/// curl through the HTTP proxy `proxy`, giving up after `max_time`; `upload` POSTs that file.
pub fn curl_via(
    dir: &Path,
    proxy: &str,
    url: &str,
    upload: Option<&Path>,
    max_time: Duration,
) -> Fetched {
    let out = dir.join("curl.body");
    let _ = fs::remove_file(&out);
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", &max_time.as_secs().to_string()])
        .args(["-x", proxy, "-o"])
        .arg(&out)
        .args(["-w", "%{http_code}"]);
    if let Some(f) = upload {
        cmd.arg("-H")
            .arg("Content-Type: application/octet-stream")
            .arg("--data-binary")
            .arg(format!("@{}", f.display()));
    }
    cmd.arg(url);
    let r = run_tool(dir, &mut cmd, max_time + Duration::from_secs(10));
    Fetched {
        code: r.stdout.trim().parse().unwrap_or(0),
        body: fs::read(&out).unwrap_or_default(),
        ok: r.status.success(),
    }
}

/// The verdicts of `dlp-scan --json` output: one JSON object per scanned file.
pub fn scan_verdicts(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter(|l| l.contains("\"file\""))
        .map(|l| serde_json::from_str(l).expect("dlp-scan --json line"))
        .collect()
}

/// Checks each verdict against the sample set the peer tests scan: `.csv` files hold card
/// numbers and are blocked, the others are allowed.
pub fn assert_sample_verdicts(verdicts: &[serde_json::Value], context: &str) {
    for v in verdicts {
        let file = v["file"].as_str().expect("file name");
        let want = if file.ends_with(".csv") {
            "blocked"
        } else {
            "allowed"
        };
        assert_eq!(v["verdict"], want, "{v}\n{context}");
    }
}

/// Writes `data` to `path`.
pub fn write_file(path: &Path, data: &[u8]) {
    fs::File::create(path)
        .and_then(|mut f| f.write_all(data))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// c-icap in the foreground with `tests/peers/c-icap/c-icap.conf.in`
/// (services `echo`, `url_check`, `content_filtering`, `ex206`).
#[derive(Debug)]
pub struct CIcap {
    /// Its ICAP port on 127.0.0.1.
    pub port: u16,
    /// The running process.
    pub process: Process,
    _dir: TempDir,
}

impl CIcap {
    /// Starts c-icap; `extra` goes in place of `@EXTRA@` (e.g. `Allow204As200okZeroEncaps on`).
    pub fn start(extra: &str) -> CIcap {
        let dir = TempDir::new("c-icap");
        let port = free_port();
        let conf = dir.join("c-icap.conf");
        let p = port.to_string();
        let d = dir.path().display().to_string();
        render(
            "c-icap/c-icap.conf.in",
            &conf,
            &[("PORT", &p), ("DIR", &d), ("EXTRA", extra)],
        );
        let mut cmd = Command::new(find_program("c-icap").expect("c-icap installed"));
        cmd.arg("-N").arg("-f").arg(&conf);
        let mut process = Process::spawn("c-icap", cmd, dir.join("stdout.log"));
        process.grace = Duration::from_secs(5);
        process.wait_port(port, Duration::from_secs(15));
        CIcap {
            port,
            process,
            _dir: dir,
        }
    }
}

/// The uid and gid of a system user, from `/etc/passwd`.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.split(':').next() == Some(name))?;
    let f: Vec<&str> = line.split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// squid in the foreground with `tests/peers/squid/squid.conf.in`: a REQMOD and a RESPMOD
/// ICAP service at 127.0.0.1:`icap_port`, preview 1024.
#[derive(Debug)]
pub struct Squid {
    /// Its HTTP proxy port on 127.0.0.1.
    pub port: u16,
    /// The running process.
    pub process: Process,
    dir: TempDir,
}

impl Squid {
    /// Starts squid with the given ICAP service names and `icap_persistent_connections`.
    pub fn start(
        icap_port: u16,
        reqmod_service: &str,
        respmod_service: &str,
        persistent: bool,
        extra: &str,
    ) -> Squid {
        let dir = TempDir::new("squid");
        // Run as root, squid drops to user "proxy", which must write logs and pid here.
        if let Some((uid, gid)) = user_ids("proxy") {
            let _ = std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid));
        }
        let port = free_port();
        let conf = dir.join("squid.conf");
        let (p, ip, d) = (
            port.to_string(),
            icap_port.to_string(),
            dir.path().display().to_string(),
        );
        render(
            "squid/squid.conf.in",
            &conf,
            &[
                ("PORT", &p),
                ("DIR", &d),
                ("ICAP_PORT", &ip),
                ("REQMOD_SERVICE", reqmod_service),
                ("RESPMOD_SERVICE", respmod_service),
                ("PERSISTENT", if persistent { "on" } else { "off" }),
                ("EXTRA", extra),
            ],
        );
        let mut cmd = Command::new(find_program("squid").expect("squid installed"));
        cmd.arg("-N").arg("-f").arg(&conf);
        let mut process = Process::spawn("squid", cmd, dir.join("stdout.log"));
        process.grace = Duration::from_secs(8);
        process.wait_port(port, Duration::from_secs(20));
        Squid { port, process, dir }
    }

    /// squid's cache.log (ICAP errors show there).
    pub fn cache_log(&self) -> String {
        fs::read_to_string(self.dir.join("cache.log")).unwrap_or_default()
    }

    /// The proxy URL for curl's `-x`.
    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// `tests/peers/origin.py`: an HTTP/1.1 origin on 127.0.0.1 serving files from a directory
/// (GET) and answering `received N bytes` to POST/PUT.
#[derive(Debug)]
pub struct Origin {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The running process.
    pub process: Process,
}

impl Origin {
    /// Serves `root`; logs go to `log_dir`.
    pub fn start(root: &Path, log_dir: &Path) -> Origin {
        let port = free_port();
        let mut cmd = Command::new(find_program("python3").expect("python3 installed"));
        cmd.arg(peers_dir().join("origin.py"))
            .arg(port.to_string())
            .arg(root);
        let mut process = Process::spawn("origin.py", cmd, log_dir.join("origin.log"));
        process.grace = Duration::from_secs(2);
        process.wait_port(port, Duration::from_secs(10));
        Origin { port, process }
    }
}

/// Which stunnel template: server authentication only, or client certificates required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunnelMode {
    /// `stunnel/stunnel-server.conf.in`.
    ServerAuth,
    /// `stunnel/stunnel-mtls.conf.in` (`verify = 2` against the test CA).
    MutualTls,
}

/// stunnel as a TLS server in front of a plain ICAP port.
#[derive(Debug)]
pub struct Stunnel {
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
    /// The running process.
    pub process: Process,
    _dir: TempDir,
}

impl Stunnel {
    /// Starts stunnel forwarding TLS on a free port to 127.0.0.1:`backend_port`, with the
    /// certificates of [`gen_certs`] in `certs`; `extra` e.g. `sslVersionMax = TLSv1.2`.
    pub fn start(mode: StunnelMode, backend_port: u16, certs: &Path, extra: &str) -> Stunnel {
        let dir = TempDir::new("stunnel");
        let port = free_port();
        let conf = dir.join("stunnel.conf");
        let (tp, bp, d) = (
            port.to_string(),
            backend_port.to_string(),
            dir.path().display().to_string(),
        );
        let (cert, key, ca) = (
            certs.join("server.pem").display().to_string(),
            certs.join("server.key").display().to_string(),
            certs.join("ca.pem").display().to_string(),
        );
        let mut vars = vec![
            ("TLS_PORT", tp.as_str()),
            ("PORT", bp.as_str()),
            ("DIR", d.as_str()),
            ("CERT", cert.as_str()),
            ("KEY", key.as_str()),
            ("EXTRA", extra),
        ];
        let template = match mode {
            StunnelMode::ServerAuth => "stunnel/stunnel-server.conf.in",
            StunnelMode::MutualTls => {
                vars.push(("CAFILE", ca.as_str()));
                "stunnel/stunnel-mtls.conf.in"
            }
        };
        render(template, &conf, &vars);
        let mut cmd = Command::new(find_program("stunnel4").expect("stunnel4 installed"));
        cmd.arg(&conf);
        let mut process = Process::spawn("stunnel4", cmd, dir.join("stdout.log"));
        process.grace = Duration::from_secs(3);
        process.wait_port(port, Duration::from_secs(10));
        Stunnel {
            port,
            process,
            _dir: dir,
        }
    }
}

/// Generates the test PKI of `tests/peers/gen-certs.sh` into `out` (ca, server, client,
/// wrong-ca, wrong-client, selfsigned, expired; see the script's header).
pub fn gen_certs(out: &Path) {
    let status = Command::new("bash")
        .arg(peers_dir().join("gen-certs.sh"))
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .expect("run gen-certs.sh");
    assert!(status.success(), "gen-certs.sh failed: {status}");
}

/// The name clamd reports for the EICAR file with [`ClamdPeer`]'s database (the `.hdb`
/// line is named after the file `sigtool --md5` hashed; clamd adds `.UNOFFICIAL` to
/// signatures outside its official databases).
pub const CLAMD_EICAR_NAME: &str = "Icap-Test.EICAR.UNOFFICIAL";

/// clamd in the foreground on a Unix socket in a temporary directory, with a temporary
/// database of one line (the MD5 of the EICAR file, from `sigtool --md5`) and structured
/// data detection (one card number or SSN is enough). No network, no freshclam; it loads
/// in well under a second.
#[derive(Debug)]
pub struct ClamdPeer {
    /// Its `LocalSocket`.
    pub socket: PathBuf,
    /// The running process (`None` while stopped).
    pub process: Option<Process>,
    conf: PathBuf,
    dir: TempDir,
}

impl ClamdPeer {
    /// Starts clamd with `StreamMaxLength stream_max` (e.g. `100M`) and `MaxThreads 16`.
    pub fn start(stream_max: &str) -> ClamdPeer {
        let dir = TempDir::new("clamd");
        let db = dir.subdir("db");
        let sample = dir.join("Icap-Test.EICAR");
        write_file(
            &sample,
            b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*",
        );
        let sig = Command::new(find_program("sigtool").expect("sigtool installed"))
            .arg("--md5")
            .arg(&sample)
            .output()
            .expect("run sigtool");
        assert!(sig.status.success(), "sigtool: {sig:?}");
        write_file(&db.join("icap-test.hdb"), &sig.stdout);
        let socket = dir.join("clamd.sock");
        let conf = dir.join("clamd.conf");
        let text = format!(
            "LocalSocket {}\nLocalSocketMode 666\nDatabaseDirectory {}\nTemporaryDirectory {}\n\
             LogFile {}\nPidFile {}\nForeground yes\nStructuredDataDetection yes\n\
             StructuredMinCreditCardCount 1\nStructuredMinSSNCount 1\nStreamMaxLength {stream_max}\n\
             MaxThreads 16\nSelfCheck 3600\n",
            socket.display(),
            db.display(),
            dir.path().display(),
            dir.join("clamd.log").display(),
            dir.join("clamd.pid").display(),
        );
        write_file(&conf, text.as_bytes());
        let mut peer = ClamdPeer {
            socket,
            process: None,
            conf,
            dir,
        };
        peer.resume();
        peer
    }

    /// Starts clamd again (after [`ClamdPeer::kill`]) on the same socket, and waits until it
    /// answers `PING`.
    pub fn resume(&mut self) {
        let _ = fs::remove_file(&self.socket);
        let mut cmd = Command::new(find_program("clamd").expect("clamd installed"));
        cmd.arg("--foreground")
            .arg(format!("--config-file={}", self.conf.display()));
        let mut process = Process::spawn("clamd", cmd, self.dir.join("stdout.log"));
        process.grace = Duration::from_secs(5);
        let end = Instant::now() + Duration::from_secs(30);
        while !clamd_pong(&self.socket) {
            if let Ok(Some(s)) = process.child.try_wait() {
                panic!("clamd exited ({s}):\n{}", process.log());
            }
            assert!(
                Instant::now() < end,
                "clamd did not answer PING within 30 s:\n{}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.process = Some(process);
    }

    /// Kills clamd at once (SIGKILL: no goodbye to its clients), leaving its socket file.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
            p.stopped = true;
        }
    }

    /// Its log file.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("clamd.log")).unwrap_or_default()
    }
}

/// True when clamd at `socket` answers `zPING` with `PONG`.
pub fn clamd_pong(socket: &Path) -> bool {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"zPING\0").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut got = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.ends_with(b"\0") {
            break;
        }
    }
    got == b"PONG\0"
}
