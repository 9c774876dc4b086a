//! The attacks of issue 17 against the `echo` example, with the server's memory and what each
//! client saw.
//!
//! ```text
//! # the server under attack is the `echo` example built beside this binary: build both
//! cargo build --release --example attack --example echo
//! cargo run --release --example attack        # or target/release/examples/attack
//! ```
//!
//! Each attack starts its own `echo` server (the binary built beside this one) as a child process
//! on a free loopback port, with its output (stderr, where its log goes, and stdout) in a file of a
//! temporary directory and, when the attack needs settings other than the `development` preset, a
//! `--config` file there too (`WSGUARD_` variables are not passed on). The directory is kept, and
//! named, when an attack fails. The server's `VmRSS` is sampled every 50 ms while the attack runs.
//! One line per attack gives what was done, the RSS before / at peak / 1.5 s after, what the client
//! saw, and PASS or FAIL against the expectation; a Markdown table sums them up at the end. The
//! process exits with 1 if any attack failed.
//!
//! 1. ping flood: 125-byte masked pings as fast as possible, never reading, for at most 5.5 s or
//!    until the server stops taking them; then read up to the close frame. Expect `1008`, RSS
//!    growth under 16 MiB (before the fix: 7 MB -> 2.09 GB).
//! 2. large replies never read: 8 clients send distinct 64 KiB messages (so that dedup lets each
//!    through) for 3 s and read nothing, with `overflow = "close"` (expect `1008` for each) and
//!    again with `drop_newest` (expect the connections kept and drops counted in `/stats`); RSS
//!    growth within 8 x (2 x `send_queue_bytes` + 2 x 64 KiB) + 8 MiB (before: 139 MB).
//! 3. slowloris: 1,200 connections each send half a request head, then nothing, held up to 15 s.
//!    Expect at most 1,024 (`max_pending_handshakes`) open at 1 s, none at 12 s (10 s header-read
//!    timeout).
//! 4. refused-upgrade log flood: `max_connections = 1`, one connection held, 3,000 upgrades.
//!    Expect 503 for each, at most 10 `WARN` lines per second of the attack (before: 522 KB of
//!    log in 1.2 s), and the next refusal, a second later, logged with `suppressed=N` for the
//!    lines left out.
//! 5. protocol errors: 8 connections, each breaking RFC 6455 once. Expect close frames `1002`
//!    (`1007` for invalid UTF-8).
//! 6. slow reader: 64 KiB messages without reading until the server closes, 3 s of nothing, then
//!    read. Expect the `1008` close frame (`close_timeout` is 5 s).
//! 7. invalid config written in place: the `--config` file truncated, 50 ms later
//!    `max_connections = 0` written, 5 times. Expect the running config (`max_connections = 3`)
//!    kept each time, checked by connecting past it and below it.
//!
//! A client that does not read cannot see the server's close frame, and a server waiting for the
//! answer to its close frame goes on reading (and discarding) what the client writes. So a
//! flooding client learns of the close from the server: when the socket takes no byte for 500 ms
//! (the server stopped reading), or when `/stats` `handled` (messages that reached the echo
//! handler) stops growing for 300 ms. Only loopback addresses are used; every loop is bounded in
//! count and time.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout, timeout_at};

const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// No byte taken for this long: the server has stopped reading this client.
const STALL: Duration = Duration::from_millis(500);
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Wait before the "after" RSS: the example servers' jemalloc returns freed pages within 1 s.
const SETTLE: Duration = Duration::from_millis(1500);
/// Longest wait for a server's close frame once the client reads (`close_timeout` is 5 s).
const CLOSE_WAIT: Duration = Duration::from_secs(6);
const KIB: u64 = 1024;
/// The presets' `send_queue_bytes`.
const SEND_QUEUE_BYTES: u64 = 256 * KIB;
/// The default `max_pending_handshakes` of `wsguard_axum::serve`.
const MAX_PENDING_HANDSHAKES: usize = 1024;

fn main() -> ExitCode {
    if std::env::args().len() > 1 {
        eprintln!("usage: attack (no arguments; see the module docs)");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run())
}

async fn run() -> ExitCode {
    let temp = match tempfile::tempdir() {
        Ok(temp) => temp,
        Err(err) => {
            eprintln!("cannot make a temporary directory: {err}");
            return ExitCode::FAILURE;
        }
    };
    let dir = temp.path();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let started = utc_now();
    println!(
        "attack: the echo example under the attacks of issue 17; {cpus} CPUs, Linux {}, {started}",
        kernel.trim()
    );

    let mut reports = Vec::new();
    let mut record = |report: Report| {
        report.print();
        reports.push(report);
    };
    record(or_failed("1", "ping flood", ping_flood(dir).await));
    record(or_failed(
        "2a",
        "large replies, overflow close",
        large_replies(dir, "2a", "close").await,
    ));
    record(or_failed(
        "2b",
        "large replies, overflow drop_newest",
        large_replies(dir, "2b", "drop_newest").await,
    ));
    record(or_failed("3", "slowloris", slowloris(dir).await));
    record(or_failed(
        "4",
        "refused-upgrade log flood",
        log_flood(dir).await,
    ));
    record(or_failed(
        "5",
        "protocol errors",
        protocol_errors(dir).await,
    ));
    record(or_failed("6", "slow reader", slow_reader(dir).await));
    record(or_failed(
        "7",
        "invalid config in place",
        config_in_place(dir).await,
    ));

    let failed = reports.iter().filter(|r| !r.finding.pass).count();
    println!();
    println!("## wsguard `echo` under the attacks of issue 17");
    println!();
    println!(
        "Machine: {cpus} CPUs (`nproc`), Linux {}; run {started}. Command: `cargo run --release --example attack`.",
        kernel.trim()
    );
    println!();
    println!(
        "| # | attack | what was done | server RSS before / peak / after | client saw | expected | result |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &reports {
        println!("{}", r.markdown_row());
    }
    println!();
    println!(
        "{} of {} passed{}",
        reports.len() - failed,
        reports.len(),
        if failed > 0 { "; FAILED" } else { "" }
    );
    if failed > 0 {
        println!("servers' logs kept in {}", temp.keep().display());
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What an attack did and saw.
struct Finding {
    done: String,
    rss: Rss,
    outcome: String,
    expected: String,
    pass: bool,
}

type Attack = Result<Finding, String>;

/// One attack's line.
struct Report {
    id: &'static str,
    name: &'static str,
    finding: Finding,
}

impl Report {
    fn verdict(&self) -> &'static str {
        if self.finding.pass { "PASS" } else { "FAIL" }
    }

    fn print(&self) {
        let f = &self.finding;
        println!(
            "[{}] {}: {} | RSS {} | saw: {} | expected: {} | {}",
            self.id,
            self.name,
            f.done,
            f.rss,
            f.outcome,
            f.expected,
            self.verdict()
        );
    }

    fn markdown_row(&self) -> String {
        let f = &self.finding;
        let cells = [
            self.id.to_owned(),
            self.name.to_owned(),
            f.done.clone(),
            f.rss.to_string(),
            f.outcome.clone(),
            f.expected.clone(),
            self.verdict().to_owned(),
        ];
        let cells: Vec<String> = cells
            .iter()
            .map(|c| c.replace('\n', " ").replace('|', "\\|"))
            .collect();
        format!("| {} |", cells.join(" | "))
    }
}

/// An attack that could not run (no server, no connection) is a failure with its reason.
fn or_failed(id: &'static str, name: &'static str, attack: Attack) -> Report {
    let finding = attack.unwrap_or_else(|err| Finding {
        done: "did not complete".to_owned(),
        rss: Rss::default(),
        outcome: err,
        expected: "-".to_owned(),
        pass: false,
    });
    Report { id, name, finding }
}

/// Server RSS in KiB.
#[derive(Debug, Default, Clone, Copy)]
struct Rss {
    before: u64,
    peak: u64,
    after: u64,
}

impl Rss {
    fn growth(&self) -> u64 {
        self.peak.saturating_sub(self.before)
    }
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |kib: u64| kib as f64 / 1024.0;
        write!(
            f,
            "{:.1} / {:.1} / {:.1} MiB",
            mib(self.before),
            mib(self.peak),
            mib(self.after)
        )
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples a process's RSS every 50 ms from a thread of its own, so that a busy runtime does not
/// skip samples.
struct RssWatch {
    pid: u32,
    before: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    /// Samples stop after this many (a minute) even if `finish` is never called.
    const MAX_SAMPLES: u32 = 1200;

    fn start(pid: u32) -> Self {
        let before = rss_kib(pid);
        let peak = Arc::new(AtomicU64::new(before));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            for _ in 0..Self::MAX_SAMPLES {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Self {
            pid,
            before,
            peak,
            stop,
        }
    }

    /// The peak so far, then the RSS once the server had `SETTLE` to hand memory back.
    async fn finish(self) -> Rss {
        self.stop.store(true, Ordering::Relaxed);
        let peak = self.peak.load(Ordering::Relaxed).max(rss_kib(self.pid));
        sleep(SETTLE).await;
        Rss {
            before: self.before,
            peak,
            after: rss_kib(self.pid),
        }
    }
}

/// A running `echo` example; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `echo` on a free loopback port, its output in `dir/name.log`, with `config` as its
    /// `--config` file if given (else the `development` preset).
    async fn start(dir: &Path, name: &str, config: Option<&Path>) -> Result<Self, String> {
        let me = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
        let echo = me.with_file_name("echo");
        if !echo.exists() {
            return Err(format!(
                "{} not found: build it with `cargo build --release --example echo`",
                echo.display()
            ));
        }
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?;
        let log = dir.join(format!("{name}.log"));
        let output = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let output_too = output
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(echo);
        cmd.arg("--addr").arg(addr.to_string());
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WSGUARD_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            // The log goes to stderr; stdout is kept too, for anything else a server prints.
            .stdout(output)
            .stderr(output_too)
            .spawn()
            .map_err(|e| format!("cannot start echo: {e}"))?;
        let mut server = Self { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "echo exited ({status}): {}",
                    server.log_from(0).trim()
                ));
            }
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err("echo did not listen within 20 s".to_owned());
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    fn log_from(&self, offset: u64) -> String {
        let bytes = fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

fn write_config(dir: &Path, name: &str, text: &str) -> Result<PathBuf, String> {
    let file = dir.join(format!("{name}.toml"));
    fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(file)
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Reads a response head byte by byte, so that nothing after it is consumed.
async fn read_head(tcp: &mut TcpStream) -> io::Result<Vec<u8>> {
    timeout(Duration::from_secs(5), async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                return Err(io::Error::other("response head over 16 KiB"));
            }
            head.push(tcp.read_u8().await?);
        }
        Ok(head)
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response head within 5 s"))?
}

fn status_of(head: &[u8]) -> Option<u16> {
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

/// Sends `GET /ws` with an upgrade and returns the connection and the response status.
async fn upgrade_with_status(addr: SocketAddr) -> io::Result<(TcpStream, u16)> {
    let mut tcp = connect(addr).await?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let head = read_head(&mut tcp).await?;
    let status = status_of(&head).ok_or_else(|| io::Error::other("no HTTP status"))?;
    Ok((tcp, status))
}

/// An upgraded connection, driven by hand (frames are written and read raw).
async fn upgrade(addr: SocketAddr) -> Result<TcpStream, String> {
    match upgrade_with_status(addr).await {
        Ok((tcp, 101)) => Ok(tcp),
        Ok((_, status)) => Err(format!("upgrade answered {status}")),
        Err(err) => Err(format!("upgrade failed: {err}")),
    }
}

/// `GET path`, parsed as JSON; `None` unless 200 with a JSON body.
async fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    timeout(Duration::from_secs(5), async {
        let mut tcp = connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response);
        if !response.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_str(response.split_once("\r\n\r\n")?.1).ok()
    })
    .await
    .ok()
    .flatten()
}

/// One frame as a client sends it: `first` is the first byte (FIN, RSV bits, opcode); masked
/// unless `masked` is false (which RFC 6455 forbids a client).
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(first);
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A final, masked frame.
fn final_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(0x80 | opcode, payload, true)
}

/// A 64 KiB binary message unlike any other, so that dedup lets each one through to the echo.
fn unique_message(client: usize, seq: u64) -> Vec<u8> {
    let mut payload = vec![b'x'; 64 * 1024];
    payload[..8].copy_from_slice(&seq.to_le_bytes());
    payload[8..16].copy_from_slice(&(client as u64).to_le_bytes());
    final_frame(BINARY, &payload)
}

/// Bytes on the wire of one 64 KiB masked message.
const MESSAGE_FRAME_LEN: usize = 64 * 1024 + 2 + 2 + 4;

/// Reads one server frame (unmasked): opcode and payload; `None` at the end of the stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<(u8, Vec<u8>)> {
    let first = r.read_u8().await.ok()?;
    let len = match r.read_u8().await.ok()? & 0x7f {
        126 => u64::from(r.read_u16().await.ok()?),
        127 => r.read_u64().await.ok()?,
        n => u64::from(n),
    };
    let mut payload = vec![0; usize::try_from(len).ok()?];
    r.read_exact(&mut payload).await.ok()?;
    Some((first & 0x0f, payload))
}

/// What a client read up to the server's close frame.
#[derive(Debug, Default)]
struct UntilClose {
    /// The close frame's code; `None` if the stream ended (or the wait did) without one.
    code: Option<u16>,
    pongs: u64,
    data: u64,
    timed_out: bool,
}

impl UntilClose {
    fn describe(&self) -> String {
        match (self.code, self.timed_out) {
            (Some(code), _) => format!("close {code}"),
            (None, true) => format!("no close frame within {} s", CLOSE_WAIT.as_secs()),
            (None, false) => "connection ended without a close frame".to_owned(),
        }
    }
}

/// Reads frames until the server's close frame, the end of the stream, or `CLOSE_WAIT`.
async fn read_until_close(tcp: &mut TcpStream) -> UntilClose {
    let mut seen = UntilClose::default();
    let mut reader = BufReader::with_capacity(64 * 1024, tcp);
    let read = async {
        while let Some((opcode, payload)) = read_frame(&mut reader).await {
            match opcode {
                CLOSE => {
                    seen.code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    break;
                }
                PONG => seen.pongs += 1,
                PING => {}
                _ => seen.data += 1,
            }
        }
    };
    seen.timed_out = timeout(CLOSE_WAIT, read).await.is_err();
    seen
}

/// How a flood of writes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FloodEnd {
    TimeLimit,
    /// The server stopped handling messages (see [`HandledWatch`]).
    ServerClosed,
    /// The socket took no byte for `STALL`: the server stopped reading.
    Stalled,
    WriteFailed,
}

#[derive(Debug)]
struct Flood {
    /// Whole frames written.
    frames: u64,
    /// When the socket last took a byte, from the flood's start.
    last_progress: Duration,
    /// When the flood ended, from its start.
    ended_at: Duration,
    end: FloodEnd,
}

/// Writes what `next` gives, as fast as the socket takes it, until `limit`, a write error, a
/// stall, or `stop`. `frame_len` is the length of every frame, to count them.
async fn flood(
    tcp: &mut TcpStream,
    limit: Duration,
    frame_len: usize,
    stop: Option<&AtomicBool>,
    mut next: impl FnMut() -> Vec<u8>,
) -> Flood {
    let start = Instant::now();
    let mut buf = next();
    let (mut pos, mut written) = (0usize, 0u64);
    let mut last_progress = Duration::ZERO;
    let stopped = || stop.is_some_and(|s| s.load(Ordering::Relaxed));
    let end = loop {
        let elapsed = start.elapsed();
        if elapsed >= limit {
            break FloodEnd::TimeLimit;
        }
        if stopped() {
            break FloodEnd::ServerClosed;
        }
        // Short waits while a stop may come, so that it is seen even when the socket is full.
        let wait = STALL.min(limit - elapsed);
        let wait = if stop.is_some() {
            wait.min(Duration::from_millis(100))
        } else {
            wait
        };
        let mut waited = Duration::ZERO;
        let step = loop {
            match timeout(wait, tcp.write(&buf[pos..])).await {
                Ok(result) => break Some(result),
                Err(_) => {
                    waited += wait;
                    if waited >= STALL || stopped() || start.elapsed() >= limit {
                        break None;
                    }
                }
            }
        };
        match step {
            Some(Ok(0) | Err(_)) => break FloodEnd::WriteFailed,
            Some(Ok(n)) => {
                written += n as u64;
                pos += n;
                last_progress = start.elapsed();
                if pos == buf.len() {
                    buf = next();
                    pos = 0;
                }
            }
            None if stopped() => break FloodEnd::ServerClosed,
            None if waited >= STALL => break FloodEnd::Stalled,
            None => break FloodEnd::TimeLimit,
        }
    };
    Flood {
        frames: written / frame_len as u64,
        last_progress,
        ended_at: start.elapsed(),
        end,
    }
}

/// Watches the echo server's `/stats` `handled` (messages that reached the echo handler) every
/// 100 ms. A server that has closed a connection stops handling its messages even while it still
/// reads them (waiting for the answer to its close frame), so a client that does not read learns
/// of the close from here.
struct HandledWatch {
    /// Set once `handled` grew, then did not grow for 300 ms.
    stopped: Arc<AtomicBool>,
    /// When `handled` last grew, in ms from the watch's start.
    last_growth_ms: Arc<AtomicU64>,
}

impl HandledWatch {
    /// Watches for at most `limit`.
    fn start(addr: SocketAddr, limit: Duration) -> Self {
        let stopped = Arc::new(AtomicBool::new(false));
        let last_growth_ms = Arc::new(AtomicU64::new(0));
        let (stop, last) = (stopped.clone(), last_growth_ms.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let (mut seen, mut flat) = (0u64, 0u32);
            while start.elapsed() < limit {
                sleep(Duration::from_millis(100)).await;
                let Some(handled) = get_json(addr, "/stats")
                    .await
                    .and_then(|s| s.get("handled").and_then(serde_json::Value::as_u64))
                else {
                    continue;
                };
                if handled > seen {
                    seen = handled;
                    flat = 0;
                    last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                } else if seen > 0 {
                    flat += 1;
                    if flat >= 3 {
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
        Self {
            stopped,
            last_growth_ms,
        }
    }

    fn last_growth(&self) -> Duration {
        Duration::from_millis(self.last_growth_ms.load(Ordering::Relaxed))
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

async fn ping_flood(dir: &Path) -> Attack {
    let server = Server::start(dir, "1-ping-flood", None).await?;
    let watch = RssWatch::start(server.pid());
    let mut tcp = upgrade(server.addr).await?;
    let batch: Vec<u8> = (0..64)
        .flat_map(|_| final_frame(PING, &[b'p'; 125]))
        .collect();
    let start = Instant::now();
    let flooded = flood(&mut tcp, Duration::from_millis(5500), 131, None, || {
        batch.clone()
    })
    .await;
    let seen = read_until_close(&mut tcp).await;
    let read_at = start.elapsed();
    drop(tcp);
    let rss = watch.finish().await;

    let limit = 16 * 1024;
    let pass = seen.code == Some(1008) && rss.growth() < limit;
    let done = format!(
        "{} pings of 125 B written in {} without reading; flood ended at {}: {}",
        flooded.frames,
        secs(flooded.last_progress),
        secs(flooded.ended_at),
        flood_end(flooded.end)
    );
    let outcome = format!(
        "reading then: {} pongs, {} (read by {}); RSS growth {:.1} MiB",
        seen.pongs,
        seen.describe(),
        secs(read_at),
        rss.growth() as f64 / 1024.0
    );
    let expected = format!("close 1008, RSS growth < {} MiB", limit / 1024);
    Ok(Finding {
        done,
        rss,
        outcome,
        expected,
        pass,
    })
}

fn flood_end(end: FloodEnd) -> &'static str {
    match end {
        FloodEnd::TimeLimit => "time limit",
        FloodEnd::ServerClosed => "server stopped handling messages (/stats)",
        FloodEnd::Stalled => "server stopped reading (no byte taken for 0.5 s)",
        FloodEnd::WriteFailed => "write failed",
    }
}

/// What one client of the large-replies attack saw.
struct ClientRun {
    flood: Flood,
    close: Option<(UntilClose, Duration)>,
    /// Kept, so that the connection stays open until `/stats` is read.
    _stream: TcpStream,
}

async fn large_replies(dir: &Path, id: &str, overflow: &str) -> Attack {
    const CLIENTS: usize = 8;
    let name = format!("{id}-large-replies");
    let config = write_config(
        dir,
        &name,
        &format!("[connection]\nmax_message_size = 131072\noverflow = \"{overflow}\"\n"),
    )?;
    let server = Server::start(dir, &name, Some(&config)).await?;
    let watch = RssWatch::start(server.pid());
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(upgrade(server.addr).await?);
    }
    let read_close = overflow == "close";
    let handled = HandledWatch::start(server.addr, Duration::from_secs(4));
    let mut runs = JoinSet::new();
    for (client, mut tcp) in clients.into_iter().enumerate() {
        runs.spawn(async move {
            let start = Instant::now();
            let mut seq = 0u64;
            let flood = flood(
                &mut tcp,
                Duration::from_secs(3),
                MESSAGE_FRAME_LEN,
                None,
                || {
                    seq += 1;
                    unique_message(client, seq)
                },
            )
            .await;
            // Each client reads as soon as it has seen the server close, within `close_timeout`.
            let close = if read_close {
                Some((read_until_close(&mut tcp).await, start.elapsed()))
            } else {
                None
            };
            ClientRun {
                flood,
                close,
                _stream: tcp,
            }
        });
    }
    let mut done = Vec::new();
    while let Some(run) = runs.join_next().await {
        done.push(run.map_err(|e| format!("client task: {e}"))?);
    }
    // With drop_newest the connections are still open here: `/stats` says so, and counts drops.
    let stats = get_json(server.addr, "/stats").await;
    let open = stats
        .as_ref()
        .and_then(|s| s.pointer("/connections/open"))
        .and_then(serde_json::Value::as_u64);
    let dropped = stats.as_ref().map(send_dropped);
    let remembered = stats
        .as_ref()
        .and_then(|s| s.pointer("/dedup/remembered"))
        .and_then(serde_json::Value::as_u64);
    let sent: u64 = done.iter().map(|r| r.flood.frames).sum();
    let ends = count_ends(done.iter().map(|r| r.flood.end));
    let handling_stopped = handled
        .stopped
        .load(Ordering::Relaxed)
        .then(|| handled.last_growth());
    let closes: Vec<&(UntilClose, Duration)> =
        done.iter().filter_map(|r| r.close.as_ref()).collect();
    let closed_1008 = closes
        .iter()
        .filter(|(seen, _)| seen.code == Some(1008))
        .count();
    let others: Vec<String> = closes
        .iter()
        .filter(|(seen, _)| seen.code != Some(1008))
        .map(|(seen, _)| seen.describe())
        .collect();
    let last_close = closes
        .iter()
        .map(|(_, at)| at.as_secs_f64())
        .fold(0.0, f64::max);
    drop(done);
    let rss = watch.finish().await;
    let remembered_after = get_json(server.addr, "/stats").await.and_then(|s| {
        s.pointer("/dedup/remembered")
            .and_then(serde_json::Value::as_u64)
    });

    let bound = CLIENTS as u64 * (2 * SEND_QUEUE_BYTES + 2 * 64 * KIB) / KIB + 8 * 1024;
    let within = rss.growth() <= bound;
    let done = format!(
        "{CLIENTS} clients, overflow = \"{overflow}\": {sent} messages of 64 KiB written in <= 3 s without reading; floods ended: {ends}"
    );
    let growth = format!("RSS growth {:.1} MiB", rss.growth() as f64 / 1024.0);
    let show = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
    let (outcome, expected, pass) = if read_close {
        let mut outcome = format!(
            "server stopped handling messages {} (/stats handled); then read: {closed_1008} of {CLIENTS} close 1008 (last by {last_close:.2} s)",
            handling_stopped.map_or_else(|| "-".to_owned(), |at| format!("after {}", secs(at)))
        );
        if !others.is_empty() {
            outcome.push_str(&format!("; others: {}", others.join(", ")));
        }
        outcome.push_str(&format!("; {growth}"));
        (
            outcome,
            format!(
                "close 1008 for each; RSS growth <= {:.1} MiB",
                bound as f64 / 1024.0
            ),
            closed_1008 == CLIENTS && within,
        )
    } else {
        (
            format!(
                "{} of {CLIENTS} still open after 3 s; /stats send_dropped {}, dedup keys remembered {} ({} after the clients left); {growth}",
                show(open),
                show(dropped),
                show(remembered),
                show(remembered_after)
            ),
            format!(
                "connections kept, drops counted; RSS growth <= {:.1} MiB",
                bound as f64 / 1024.0
            ),
            open == Some(CLIENTS as u64) && dropped.is_some_and(|d| d > 0) && within,
        )
    };
    Ok(Finding {
        done,
        rss,
        outcome,
        expected,
        pass,
    })
}

/// Outbound messages dropped by send queues, summed over the routes of a `/stats` snapshot.
fn send_dropped(stats: &serde_json::Value) -> u64 {
    stats
        .pointer("/metrics/routes")
        .and_then(serde_json::Value::as_array)
        .map_or(0, |routes| {
            routes
                .iter()
                .filter_map(|r| r.get("send_dropped").and_then(serde_json::Value::as_u64))
                .sum()
        })
}

/// "7 time limit, 1 server stopped reading (...)".
fn count_ends(ends: impl Iterator<Item = FloodEnd>) -> String {
    let ends: Vec<FloodEnd> = ends.collect();
    [
        FloodEnd::TimeLimit,
        FloodEnd::ServerClosed,
        FloodEnd::Stalled,
        FloodEnd::WriteFailed,
    ]
    .into_iter()
    .filter_map(|kind| {
        let n = ends.iter().filter(|&&e| e == kind).count();
        (n > 0).then(|| format!("{n} {}", flood_end(kind)))
    })
    .collect::<Vec<_>>()
    .join(", ")
}

async fn slowloris(dir: &Path) -> Attack {
    const CONNECTIONS: usize = 1200;
    let server = Server::start(dir, "3-slowloris", None).await?;
    let watch = RssWatch::start(server.pid());
    let addr = server.addr;
    let half = format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnec");
    let start = Instant::now();
    // A bound for the readers; the connections are let go 15 s after the last one opened.
    let hold_until = start + Duration::from_secs(25);
    let closed = Arc::new(AtomicUsize::new(0));
    let mut held = JoinSet::new();
    let mut failed = 0usize;
    for _ in 0..CONNECTIONS {
        if start.elapsed() > Duration::from_secs(5) {
            failed += 1;
            continue;
        }
        match connect(addr).await {
            Ok(mut tcp) => {
                if tcp.write_all(half.as_bytes()).await.is_err() {
                    closed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let closed = closed.clone();
                held.spawn(async move {
                    let mut buf = [0u8; 512];
                    loop {
                        match timeout_at(hold_until, tcp.read(&mut buf)).await {
                            Ok(Ok(0) | Err(_)) => {
                                closed.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            Ok(Ok(_)) => {}
                            Err(_) => return,
                        }
                    }
                });
            }
            Err(_) => failed += 1,
        }
    }
    let opened = Instant::now();
    let opened_in = opened - start;
    let open_now = || CONNECTIONS - failed - closed.load(Ordering::Relaxed);
    let mut open_at = Vec::new();
    let mut health = String::new();
    for at in [1, 5, 12] {
        tokio::time::sleep_until(opened + Duration::from_secs(at)).await;
        open_at.push(open_now());
        if at == 5 {
            // What a legitimate client gets while the attack holds the pending places.
            health = match timeout(Duration::from_secs(2), http_status(addr, "/health")).await {
                Ok(Ok(status)) => format!("GET /health at 5 s: {status}"),
                Ok(Err(err)) => format!("GET /health at 5 s: {}", err.kind()),
                Err(_) => "GET /health at 5 s: no answer in 2 s".to_owned(),
            };
        }
    }
    // Held up to 15 s: whatever is still open then is let go.
    while timeout_at(opened + Duration::from_secs(15), held.join_next())
        .await
        .is_ok_and(|n| n.is_some())
    {}
    held.abort_all();
    let left_at_15 = open_now();
    drop(held);
    let rss = watch.finish().await;

    let pass = open_at[0] <= MAX_PENDING_HANDSHAKES && open_at[2] == 0;
    let done = format!(
        "{CONNECTIONS} connections opened in {} ({failed} failed or not tried within 5 s), each sent {} bytes of a request head, then nothing; counted from the last one opened",
        secs(opened_in),
        half.len()
    );
    let outcome = format!(
        "still open at 1 s: {}, at 5 s: {}, at 12 s: {}, at 15 s: {left_at_15}; {health}",
        open_at[0], open_at[1], open_at[2]
    );
    let expected = format!(
        "<= {MAX_PENDING_HANDSHAKES} open at 1 s (max_pending_handshakes), 0 at 12 s (10 s header-read timeout)"
    );
    Ok(Finding {
        done,
        rss,
        outcome,
        expected,
        pass,
    })
}

/// `GET path`: the response status.
async fn http_status(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let mut tcp = connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let head = read_head(&mut tcp).await?;
    status_of(&head).ok_or_else(|| io::Error::other("no HTTP status"))
}

async fn log_flood(dir: &Path) -> Attack {
    const ATTEMPTS: usize = 3000;
    const TASKS: usize = 8;
    let config = write_config(dir, "4-log-flood", "[connection]\nmax_connections = 1\n")?;
    let server = Server::start(dir, "4-log-flood", Some(&config)).await?;
    let addr = server.addr;
    let held = upgrade(addr).await?;
    // Startup lines are written by now; only the attack's count.
    sleep(Duration::from_millis(500)).await;
    let offset = server.log_len();
    let watch = RssWatch::start(server.pid());
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            for _ in (task..ATTEMPTS).step_by(TASKS) {
                statuses.push(match upgrade_with_status(addr).await {
                    Ok((_, status)) => status,
                    Err(_) => 0,
                });
            }
            statuses
        });
    }
    let mut statuses = Vec::new();
    while let Some(done) = tasks.join_next().await {
        statuses.extend(done.map_err(|e| format!("attempt task: {e}"))?);
    }
    let elapsed = start.elapsed();
    // The last refusals' lines reach the file.
    sleep(Duration::from_millis(200)).await;
    let log = server.log_from(offset);
    // One more refusal in a later second is written with the count of those left out.
    sleep(Duration::from_millis(1100)).await;
    let probe = upgrade_with_status(addr).await.map_or(0, |(_, s)| s);
    sleep(Duration::from_millis(200)).await;
    let probe_log = server.log_from(offset + log.len() as u64);
    drop(held);
    let rss = watch.finish().await;

    let refused = statuses.iter().filter(|&&s| s == 503).count();
    let refusal_lines = log
        .lines()
        .filter(|l| l.contains("websocket upgrade refused"))
        .count();
    let probe_suppressed = probe_log
        .lines()
        .find(|l| l.contains("websocket upgrade refused"))
        .and_then(suppressed_field);
    let other = statuses.len() - refused;
    let warns: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    let suppressed: u64 = warns.iter().filter_map(|l| suppressed_field(l)).sum();
    // The limit counts whole seconds: an attack of d seconds touches at most ceil(d) + 1 of them.
    let max_warns = 10 * (elapsed.as_secs() as usize + 2);
    let left_out = (refused - refusal_lines) as u64;
    let pass = refused == ATTEMPTS
        && warns.len() <= max_warns
        && probe == 503
        && probe_suppressed == Some(left_out);
    let done = format!(
        "max_connections = 1 with one connection held; {ATTEMPTS} upgrades from {TASKS} tasks in {}",
        secs(elapsed)
    );
    let outcome = format!(
        "{refused} answered 503, {other} otherwise; server log during the attack: {} bytes, {} lines, {} WARN (suppressed= fields sum to {suppressed}); one more upgrade 1.1 s later: {probe}, logged with suppressed={}",
        log.len(),
        log.lines().count(),
        warns.len(),
        probe_suppressed.map_or_else(|| "?".to_owned(), |n| n.to_string())
    );
    let expected = format!(
        "503 each; <= {max_warns} WARN lines (10/s per kind); the next line says suppressed={left_out}"
    );
    Ok(Finding {
        done,
        rss,
        outcome,
        expected,
        pass,
    })
}

/// The `suppressed=N` field of a log line.
fn suppressed_field(line: &str) -> Option<u64> {
    let value = line.split("suppressed=").nth(1)?;
    value
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

async fn protocol_errors(dir: &Path) -> Attack {
    let server = Server::start(dir, "5-protocol-errors", None).await?;
    let watch = RssWatch::start(server.pid());
    let cases: [(&str, Vec<u8>, u16); 8] = [
        ("unmasked", frame(0x80 | TEXT, b"hi", false), 1002),
        ("RSV1 set", frame(0x80 | 0x40 | TEXT, b"hi", true), 1002),
        ("opcode 0x3", final_frame(0x3, b"hi"), 1002),
        ("opcode 0xB", final_frame(0xB, b"hi"), 1002),
        ("126-byte ping", final_frame(PING, &[0; 126]), 1002),
        ("FIN=0 ping", frame(PING, b"hi", true), 1002),
        ("continuation first", final_frame(CONT, b"hi"), 1002),
        ("invalid UTF-8", final_frame(TEXT, &[0xff, 0xfe]), 1007),
    ];
    let mut seen = Vec::new();
    let mut pass = true;
    let mut slowest = Duration::ZERO;
    for (what, bytes, code) in &cases {
        let mut tcp = upgrade(server.addr).await?;
        let start = Instant::now();
        let got = match tcp.write_all(bytes).await {
            Ok(()) => read_until_close(&mut tcp).await,
            Err(_) => UntilClose::default(),
        };
        slowest = slowest.max(start.elapsed());
        pass &= got.code == Some(*code);
        seen.push(format!(
            "{what}: {}",
            got.code.map_or_else(|| got.describe(), |c| c.to_string())
        ));
    }
    let rss = watch.finish().await;
    let done = format!("{} connections, one protocol error each", cases.len());
    let outcome = format!("{}; slowest close {}", seen.join(", "), secs(slowest));
    Ok(Finding {
        done,
        rss,
        outcome,
        expected: "1002 each, 1007 for invalid UTF-8".to_owned(),
        pass,
    })
}

async fn slow_reader(dir: &Path) -> Attack {
    let config = write_config(
        dir,
        "6-slow-reader",
        "[connection]\nmax_message_size = 131072\noverflow = \"close\"\n",
    )?;
    let server = Server::start(dir, "6-slow-reader", Some(&config)).await?;
    let watch = RssWatch::start(server.pid());
    let mut tcp = upgrade(server.addr).await?;
    let handled = HandledWatch::start(server.addr, Duration::from_secs(6));
    let mut seq = 0u64;
    let flooded = flood(
        &mut tcp,
        Duration::from_secs(5),
        MESSAGE_FRAME_LEN,
        Some(&handled.stopped),
        || {
            seq += 1;
            unique_message(0, seq)
        },
    )
    .await;
    let paused = Instant::now();
    sleep(Duration::from_secs(3)).await;
    let seen = read_until_close(&mut tcp).await;
    let read_by = paused.elapsed();
    drop(tcp);
    let rss = watch.finish().await;

    let pass = flooded.end == FloodEnd::ServerClosed && seen.code == Some(1008);
    let done = format!(
        "{} messages of 64 KiB written without reading; flood ended at {}: {} (last handled at {}); then 3 s of nothing, then read",
        flooded.frames,
        secs(flooded.ended_at),
        flood_end(flooded.end),
        secs(handled.last_growth())
    );
    let outcome = format!(
        "{} echoes, then {} (read by {} after the flood ended)",
        seen.data,
        seen.describe(),
        secs(read_by)
    );
    Ok(Finding {
        done,
        rss,
        outcome,
        expected: "server closes during the flood; close 1008 read after the 3 s pause (close_timeout 5 s)"
            .to_owned(),
        pass,
    })
}

async fn config_in_place(dir: &Path) -> Attack {
    const LIMIT: usize = 3;
    const TRIALS: usize = 5;
    let valid = format!("[connection]\nmax_connections = {LIMIT}\n");
    let invalid = "[connection]\nmax_connections = 0\n";
    let file = write_config(dir, "7-config", &valid)?;
    let server = Server::start(dir, "7-config", Some(&file)).await?;
    let addr = server.addr;
    let watch = RssWatch::start(server.pid());
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        held.push(upgrade(addr).await?);
    }
    let offset = server.log_len();
    let mut kept = 0;
    let mut notes = Vec::new();
    for trial in 1..=TRIALS {
        {
            let mut f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&file)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            sleep(Duration::from_millis(50)).await;
            f.write_all(invalid.as_bytes())
                .map_err(|e| format!("{}: {e}", file.display()))?;
        }
        // The watcher reads a file 200 ms after its last event.
        sleep(Duration::from_millis(800)).await;
        // Past the limit: refused unless a reload raised it.
        let past = upgrade_with_status(addr).await.map(|(_, s)| s).unwrap_or(0);
        // Below it: one place freed must be taken again, which a limit of 0 would refuse.
        held.pop();
        let mut below = 0;
        for _ in 0..20 {
            below = upgrade_with_status(addr).await.map_or(0, |(tcp, s)| {
                if s == 101 {
                    held.push(tcp);
                }
                s
            });
            if below == 101 {
                break;
            }
            sleep(Duration::from_millis(100)).await;
        }
        if past == 503 && below == 101 {
            kept += 1;
        } else {
            notes.push(format!(
                "trial {trial}: past the limit {past}, below it {below}"
            ));
        }
        // Back to the valid file, atomically, before the next trial.
        let tmp = dir.join("7-config.toml.tmp");
        fs::write(&tmp, &valid)
            .and_then(|()| fs::rename(&tmp, &file))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        sleep(Duration::from_millis(500)).await;
    }
    let log = server.log_from(offset);
    drop(held);
    let rss = watch.finish().await;

    let refused = log.lines().filter(|l| l.contains("change refused")).count();
    let updated = log
        .lines()
        .filter(|l| l.contains("configuration updated"))
        .count();
    let pass = kept == TRIALS && updated == 0;
    let done = format!(
        "echo --config FILE (max_connections = {LIMIT}), {LIMIT} connections held; {TRIALS} times: FILE opened with truncate, 50 ms, `max_connections = 0` written; then connect past and below the limit"
    );
    let mut outcome = format!(
        "running config kept in {kept} of {TRIALS} trials (503 past the limit, 101 below it); log: {refused} refused changes, {updated} updates"
    );
    if !notes.is_empty() {
        outcome.push_str(&format!("; {}", notes.join("; ")));
    }
    Ok(Finding {
        done,
        rss,
        outcome,
        expected: format!("kept in {TRIALS} of {TRIALS}"),
        pass,
    })
}

/// Now, as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}
