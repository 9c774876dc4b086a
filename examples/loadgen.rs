//! Load generator for WebSocket echo servers: the side-by-side comparison of a bare axum echo
//! with the wsguard `echo` example, of plain connections with `wsguard.v1` sessions, the time to
//! resume a session, and the server's cost of many idle connections.
//!
//! ```text
//! # load an echo server that is already running
//! cargo run --release --example loadgen -- --url ws://127.0.0.1:3000/ws -c 16 -n 1000 --mode pipelined
//! cargo build --release --example echo --example loadgen
//! # bare axum echo vs wsguard echo, same load, alternating, with their ratio
//! target/release/examples/loadgen --compare -c 16 -n 2000 --mode ping-pong --rounds 3
//! # the same load on the wsguard echo, plain connections vs wsguard.v1 sessions
//! target/release/examples/loadgen --compare --session -c 16 -n 2000 --mode ping-pong --rounds 3
//! # a session resumed with 1000 messages logged while its client was away, 20 times
//! target/release/examples/loadgen --resume 1000 --runs 20
//! # server memory per idle connection, bare and wsguard
//! target/release/examples/loadgen --idle 1000
//! # 100,000 idle connections on the production preset, held through a heartbeat
//! target/release/examples/loadgen --idle 100000 --servers wsguard --preset production --hold 25
//! # the same over 6 server and 6 client processes (each under a 20,000 descriptor limit)
//! target/release/examples/loadgen --idle 100000 --procs 6 --servers wsguard --preset production --hold 45
//! # 10,000 idle sessions, then every client drops and resumes at once
//! target/release/examples/loadgen --idle 10000 --servers wsguard --preset production --session --reconnect
//! ```
//!
//! Options: `-c` connections (16), `-n` messages per connection (1000), `--mode ping-pong|pipelined`
//! (ping-pong), `--dup-ratio R` share of messages re-sent byte for byte (0), `--size B` payload
//! bytes (100), `--rounds R` alternations in `--compare` (3), `--control` (in `--compare`: the
//! base runs again after the test in each round, and its ratio to itself is printed, the
//! harness's own spread), `--window W` messages in flight per connection when pipelined (64),
//! `--session` speak `wsguard.v1` (hello, numbered messages, acks every 32 messages).
//!
//! `--idle K`: `--servers bare,wsguard` (both), `--preset NAME` of the wsguard server
//! (`development`), `--hold S` seconds to hold the connections open (1; past the ping interval,
//! ping lateness is measured), `--session` (each connection opens a session), `--reconnect`
//! (with `--session`: all drop without a close frame and resume at once), `--per-source N`
//! connections per loopback source address (20,000: about 28,000 ephemeral ports per address;
//! above N connections they come from 127.0.0.2, 127.0.0.3, ...), `--dials D` connections being
//! opened at once (256), `--procs P` (1: with more, P echo processes share the port with
//! `--reuse-port` and P processes of this binary, `idle-worker`, hold K/P connections each).
//!
//! The servers run as child processes (this binary with `serve-bare`, and the `echo` example
//! built beside it), so that the server's memory and CPU are measured apart from the client's.
//! Duplicates get no reply from wsguard (they are dropped before the handler), so the client
//! never waits for one. The session client speaks the protocol itself (no client library), so
//! that what is measured is the server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wsguard::config::Preset;

const SUBPROTOCOL: &str = "wsguard.v1";
/// The session client acknowledges every this many messages (and at the end).
const ACK_EVERY: u64 = 32;

#[derive(Debug, Clone)]
struct Opts {
    url: String,
    connections: usize,
    messages: usize,
    pipelined: bool,
    window: usize,
    dup_ratio: f64,
    size: usize,
    rounds: usize,
    session: bool,
    /// In `--compare`: each round runs the base once more after the test, and the base against
    /// itself gives the harness's own spread.
    control: bool,
}

#[derive(Debug, Default, Clone)]
struct Report {
    sent: u64,
    duplicates_sent: u64,
    replied: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Report {
    fn throughput(&self) -> f64 {
        self.replied as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> u64 {
        percentile(&self.latencies_us, p)
    }

    fn print(&self, label: &str) {
        println!(
            "{label:>8}: {:>10.0} replies/s  p50 {:>6} us  p99 {:>6} us  sent {}  replied {}  duplicates sent {}  duplicates dropped {}",
            self.throughput(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.sent,
            self.replied,
            self.duplicates_sent,
            self.sent - self.replied,
        );
    }
}

/// The `p` quantile of sorted `values` (0 when empty).
fn percentile(values: &[u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let i = ((values.len() - 1) as f64 * p).round() as usize;
    values[i]
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen [--url URL] [-c N] [-n N] [--mode ping-pong|pipelined] [--dup-ratio R] [--size B] [--window W] [--session]\n       loadgen --compare [--session] [--rounds R] [--control] [same options]\n       loadgen --resume P [--runs R] [--size B]\n       loadgen --idle K [--servers bare,wsguard] [--preset NAME] [--hold S] [--session [--reconnect]] [--per-source N] [--dials D] [--procs P]\n       loadgen serve-bare ADDR"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if args.first().map(String::as_str) == Some("idle-worker") {
        rt.block_on(idle_worker(&args[1..]));
        return;
    }
    if args.first().map(String::as_str) == Some("serve-bare") {
        let addr: SocketAddr = args
            .get(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| usage());
        rt.block_on(serve_bare(addr));
        return;
    }
    let mut opts = Opts {
        url: std::env::var("WSGUARD_URL").unwrap_or_else(|_| "ws://127.0.0.1:3000/ws".into()),
        connections: 16,
        messages: 1000,
        pipelined: false,
        window: 64,
        dup_ratio: 0.0,
        size: 100,
        rounds: 3,
        session: false,
        control: false,
    };
    let mut idle = IdleOpts {
        connections: 0,
        servers: vec!["bare".to_owned(), "wsguard".to_owned()],
        preset: None,
        hold: Duration::from_secs(1),
        session: false,
        reconnect: false,
        per_source: 20_000,
        dials: 256,
        procs: 1,
    };
    let mut compare = false;
    let mut idle_mode = false;
    let mut resume = None;
    let mut runs = 20;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--url" => opts.url = value(),
            "-c" | "--connections" => {
                opts.connections = value().parse().unwrap_or_else(|_| usage())
            }
            "-n" | "--messages" => opts.messages = value().parse().unwrap_or_else(|_| usage()),
            "--mode" => {
                opts.pipelined = match value().as_str() {
                    "pipelined" => true,
                    "ping-pong" | "pingpong" => false,
                    _ => usage(),
                }
            }
            "--window" => opts.window = value().parse().unwrap_or_else(|_| usage()),
            "--dup-ratio" => opts.dup_ratio = value().parse().unwrap_or_else(|_| usage()),
            "--size" => opts.size = value().parse().unwrap_or_else(|_| usage()),
            "--rounds" => opts.rounds = value().parse().unwrap_or_else(|_| usage()),
            "--session" => opts.session = true,
            "--control" => opts.control = true,
            "--compare" => compare = true,
            "--resume" => resume = Some(value().parse::<u32>().unwrap_or_else(|_| usage())),
            "--runs" => runs = value().parse().unwrap_or_else(|_| usage()),
            "--idle" => {
                idle_mode = true;
                idle.connections = value().parse().unwrap_or_else(|_| usage());
            }
            "--servers" => idle.servers = value().split(',').map(str::to_owned).collect(),
            "--preset" => {
                let name = value();
                if Preset::from_name(&name).is_none() {
                    usage()
                }
                idle.preset = Some(name);
            }
            "--hold" => {
                idle.hold = Duration::from_secs_f64(value().parse().unwrap_or_else(|_| usage()))
            }
            "--reconnect" => idle.reconnect = true,
            "--per-source" => idle.per_source = value().parse().unwrap_or_else(|_| usage()),
            "--dials" => idle.dials = value().parse().unwrap_or_else(|_| usage()),
            "--procs" => idle.procs = value().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    idle.session = opts.session;
    if idle.reconnect && !idle.session {
        eprintln!("--reconnect needs --session");
        usage();
    }
    let fd_limit = wsguard_examples::raise_fd_limit(0);
    if let Some(limit) = fd_limit
        && idle_mode
        && (limit as usize) < idle.connections.div_ceil(idle.procs.max(1)) + 64
    {
        eprintln!(
            "loadgen: open-file limit {limit}, raised as far as this process may{}: it stops below {} connections",
            if wsguard_examples::may_raise_hard_limits() {
                ""
            } else {
                " (the hard limit needs CAP_SYS_RESOURCE, which it lacks)"
            },
            idle.connections
        );
    }
    if idle_mode && idle.procs > 1 {
        rt.block_on(idle_across_processes(idle));
    } else if idle_mode {
        rt.block_on(idle_connections(idle));
    } else if let Some(pending) = resume {
        rt.block_on(resume_bench(pending, runs, opts.size));
    } else if compare {
        rt.block_on(compare_servers(opts));
    } else {
        let report = rt.block_on(run_load(&opts));
        report.print("server");
    }
}

async fn serve_bare(addr: SocketAddr) {
    async fn echo(mut socket: WebSocket) {
        while let Some(Ok(msg)) = socket.recv().await {
            use axum::extract::ws::Message as M;
            if matches!(msg, M::Text(_) | M::Binary(_)) && socket.send(msg).await.is_err() {
                break;
            }
        }
    }
    let app = Router::new()
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async { ws.on_upgrade(echo) }),
        )
        .route("/health", get(|| async { "ok" }));
    // TCP_NODELAY, inherited by accepted sockets, as the examples' servers have it.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_nodelay(true).expect("TCP_NODELAY");
    socket.bind(addr).expect("bind");
    let listener = socket.listen(4096).expect("listen");
    axum::serve(listener, app).await.expect("serve");
}

/// The `n`-th payload of connection `conn`: JSON padded to about `size` bytes, carrying the send
/// time so that pipelined replies give their own latency.
fn payload(conn: usize, seq: usize, size: usize, sent_at_us: u64) -> String {
    let head = format!("{{\"conn\":{conn},\"seq\":{seq},\"t\":{sent_at_us},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = head;
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// The unsigned integer after `needle` (a key with its quotes and colon: `"seq":`) in a JSON
/// text, at its first occurrence.
fn field_u64(text: &str, needle: &str) -> Option<u64> {
    let start = text.find(needle)? + needle.len();
    leading_u64(&text[start..])
}

/// The unsigned integer `text` starts with.
fn leading_u64(text: &str) -> Option<u64> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text[..digits].parse().ok()
}

fn sent_at(reply: &str) -> Option<u64> {
    field_u64(reply, r#""t":"#)
}

/// The `seq` of a server `msg` frame, from the fixed start the server writes it with
/// (`{"type":"msg","seq":N,"data":...}`), and the rest of the frame.
fn msg_seq(frame: &str) -> Option<(u64, &str)> {
    let rest = frame.strip_prefix(r#"{"type":"msg","seq":"#)?;
    Some((leading_u64(rest)?, rest))
}

/// A cheap deterministic choice of which messages are duplicates (no RNG dependency needed).
fn is_duplicate(conn: usize, seq: usize, ratio: f64) -> bool {
    if ratio <= 0.0 || seq == 0 {
        return false;
    }
    let mut x = (conn as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (seq as u64);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x as f64 / u64::MAX as f64) < ratio
}

/// The server's answer to `hello` or `resume`.
#[derive(Debug)]
struct SessionAnswer {
    token: String,
    resumed: bool,
    last: u64,
}

/// Sends `first` (`hello` or `resume`) and reads frames up to the `session` frame.
async fn open_session<S>(
    ws: &mut WebSocketStream<S>,
    first: String,
) -> Result<SessionAnswer, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(first))
        .await
        .map_err(|e| format!("send: {e}"))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
                if frame["type"] != "session" {
                    return Err(format!("first frame is not a session frame: {text}"));
                }
                let Some(token) = frame["session"].as_str() else {
                    return Err(format!("no session: {text}"));
                };
                return Ok(SessionAnswer {
                    token: token.to_owned(),
                    resumed: frame["resumed"].as_bool().unwrap_or(false),
                    last: frame["last"].as_u64().unwrap_or(0),
                });
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(format!("read: {e}")),
            Ok(None) => return Err("closed before the session frame".to_owned()),
            Err(_) => return Err("no session frame within 30 s".to_owned()),
        }
    }
}

/// A WebSocket request for `url`, offering `wsguard.v1` when `session`.
fn ws_request(
    url: &str,
    session: bool,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().expect("a ws:// URL");
    if session {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            SUBPROTOCOL.parse().expect("a header value"),
        );
    }
    request
}

async fn connect(url: &str, session: bool) -> WebSocketStream<TcpStream> {
    let request = ws_request(url, session);
    let host = request.uri().authority().expect("host:port").to_string();
    let stream = TcpStream::connect(host.as_str()).await.unwrap_or_else(|e| {
        eprintln!("cannot connect to {url}: {e}");
        std::process::exit(1)
    });
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap_or_else(|e| {
            eprintln!("cannot open a WebSocket on {url}: {e}");
            std::process::exit(1)
        });
    ws
}

async fn run_load(opts: &Opts) -> Report {
    let epoch = Instant::now();
    let mut sockets = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        let mut ws = connect(&opts.url, opts.session).await;
        if opts.session {
            let answer = open_session(&mut ws, r#"{"type":"hello"}"#.to_owned()).await;
            if let Err(err) = answer {
                eprintln!("no session on {}: {err}", opts.url);
                std::process::exit(1)
            }
        }
        sockets.push(ws);
    }
    let start = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(conn, ws)| {
            let opts = opts.clone();
            tokio::spawn(async move { one_connection(conn, ws, &opts, epoch).await })
        })
        .collect();
    let mut total = Report::default();
    for t in tasks {
        let r = t.await.expect("connection task");
        total.sent += r.sent;
        total.duplicates_sent += r.duplicates_sent;
        total.replied += r.replied;
        total.latencies_us.extend(r.latencies_us);
    }
    total.elapsed = start.elapsed();
    total.latencies_us.sort_unstable();
    total
}

/// Under a session, a message travels as `{"type":"msg","id":N,"data":PAYLOAD}` (written in one
/// allocation of the right size, as a client library would).
fn session_msg(id: u64, data: &str) -> String {
    use std::fmt::Write as _;
    let mut frame = String::with_capacity(data.len() + 48);
    frame.push_str(r#"{"type":"msg","id":"#);
    let _ = write!(frame, "{id}");
    frame.push_str(r#","data":"#);
    frame.push_str(data);
    frame.push('}');
    frame
}

async fn one_connection<S>(
    conn: usize,
    ws: WebSocketStream<S>,
    opts: &Opts,
    epoch: Instant,
) -> Report
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let mut report = Report::default();
    let mut last = String::new();
    let mut in_flight = 0usize;
    let mut seq = 0usize;
    // Under a session: the next message id, the highest seq received, the last one acked.
    let mut next_id = 1u64;
    let (mut received_seq, mut acked_seq) = (0u64, 0u64);
    while seq < opts.messages || in_flight > 0 {
        let window = if opts.pipelined { opts.window } else { 1 };
        while seq < opts.messages && in_flight < window {
            let duplicate = is_duplicate(conn, seq, opts.dup_ratio) && !last.is_empty();
            if !duplicate {
                last = payload(conn, seq, opts.size, epoch.elapsed().as_micros() as u64);
            }
            let frame = if opts.session {
                next_id += 1;
                session_msg(next_id - 1, &last)
            } else {
                last.clone()
            };
            tx.feed(Message::text(frame)).await.expect("send");
            if duplicate {
                // A byte-for-byte re-send: dropped by wsguard's dedup, so no reply is awaited.
                report.duplicates_sent += 1;
            } else {
                in_flight += 1;
            }
            report.sent += 1;
            seq += 1;
        }
        if opts.session && received_seq >= acked_seq + ACK_EVERY {
            let ack = format!(r#"{{"type":"ack","seq":{received_seq}}}"#);
            tx.feed(Message::text(ack)).await.expect("send");
            acked_seq = received_seq;
        }
        tx.flush().await.expect("flush");
        if in_flight > 0 {
            match tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let mut data = text.as_str();
                    if opts.session {
                        let Some((seq, rest)) = msg_seq(data) else {
                            // The server's acks of our ids.
                            continue;
                        };
                        received_seq = seq;
                        data = rest;
                    }
                    if let Some(t) = sent_at(data) {
                        let now = epoch.elapsed().as_micros() as u64;
                        report.latencies_us.push(now.saturating_sub(t));
                    }
                    report.replied += 1;
                    in_flight -= 1;
                }
                Ok(Some(Ok(_))) => {}
                Ok(_) => break,
                Err(_) => {
                    eprintln!("connection {conn}: no reply for 10 s; {in_flight} in flight");
                    break;
                }
            }
        }
    }
    if opts.session && received_seq > acked_seq {
        let ack = format!(r#"{{"type":"ack","seq":{received_seq}}}"#);
        let _ = tx.send(Message::text(ack)).await;
    }
    let _ = tx.close().await;
    report
}

struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// Starts a server; `max_connections` raises the wsguard server's connection limit (the
/// development preset allows 1000) through its `WSGUARD_` environment override, and its session
/// cap likewise.
async fn start_server(kind: &str, max_connections: usize, preset: Option<&str>) -> ServerProcess {
    let server = spawn_server(kind, free_addr(), max_connections, preset, false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(server.addr).await.is_err() {
        assert!(Instant::now() < deadline, "{kind} server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// Starts a server process on `addr` (with `reuse_port`, one of several on it) without waiting.
fn spawn_server(
    kind: &str,
    addr: SocketAddr,
    max_connections: usize,
    preset: Option<&str>,
    reuse_port: bool,
) -> ServerProcess {
    let me = std::env::current_exe().expect("own path");
    let mut cmd = match kind {
        "bare" => {
            let mut c = Command::new(&me);
            c.arg("serve-bare").arg(addr.to_string());
            c
        }
        _ => {
            let echo = me.with_file_name("echo");
            if !echo.exists() {
                eprintln!(
                    "{} not found: build it with `cargo build --release --example echo`",
                    echo.display()
                );
                std::process::exit(1);
            }
            let mut c = Command::new(echo);
            c.arg("--addr").arg(addr.to_string());
            if let Some(preset) = preset {
                c.arg("--preset").arg(preset);
            }
            if reuse_port {
                c.arg("--reuse-port");
            }
            c.env(
                "WSGUARD_CONNECTION__MAX_CONNECTIONS",
                max_connections.max(1000).to_string(),
            );
            c.env(
                "WSGUARD_SESSION__MAX_SESSIONS",
                (max_connections + 1000).max(100_000).to_string(),
            );
            c
        }
    };
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start server");
    ServerProcess { child, addr }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// A process's RSS in anonymous and file-backed pages (the program's code and data once run),
/// in KiB.
fn rss_parts(pid: u32) -> (u64, u64) {
    (status_kib(pid, "RssAnon"), status_kib(pid, "RssFile"))
}

/// User plus system CPU time of a process, in clock ticks (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    field(11) + field(12)
}

/// How this machine's idle CPUs wait, when a virtual machine's `haltpoll` driver decides it: a
/// wake-up of a thread whose CPU halted costs an interrupt through the host, and how often that
/// happens differs between the two servers of a comparison (the faster one leaves its peer
/// idle longer), so ratios depend on it.
fn cpu_idle_policy() -> Option<String> {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let driver = read("/sys/devices/system/cpu/cpuidle/current_driver")?;
    if driver != "haltpoll" {
        return Some(format!("cpuidle driver: {driver}"));
    }
    let poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")?;
    Some(format!(
        "cpuidle driver: haltpoll, guest_halt_poll_ns {poll}{}",
        if poll == "0" {
            " (no polling: every idle vCPU halts, and waking it goes through the host)"
        } else {
            ""
        }
    ))
}

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ): 100 on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn compare_servers(opts: Opts) {
    // Without sessions: bare axum against the wsguard echo. With: the wsguard echo, plain
    // connections against wsguard.v1 sessions.
    let bare = if opts.session {
        None
    } else {
        Some(start_server("bare", opts.connections, None).await)
    };
    let guarded = start_server("wsguard", opts.connections, None).await;
    let (base, test) = if opts.session {
        ("plain", "session")
    } else {
        ("bare", "wsguard")
    };
    println!(
        "compare {base} vs {test}: {} connections x {} messages, {}, {} B payload, {:.0}% duplicates, {} rounds",
        opts.connections,
        opts.messages,
        if opts.pipelined {
            "pipelined"
        } else {
            "ping-pong"
        },
        opts.size,
        opts.dup_ratio * 100.0,
        opts.rounds
    );
    if let Some(idle) = cpu_idle_policy() {
        println!("{idle}");
    }
    let base_addr = bare.as_ref().unwrap_or(&guarded).addr;
    let again = format!("{base} again");
    let (mut b_all, mut w_all, mut c_all) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..opts.rounds {
        let control = opts
            .control
            .then_some((again.as_str(), base_addr, false, &mut c_all));
        for (label, addr, session, acc) in [
            Some((base, base_addr, false, &mut b_all)),
            Some((test, guarded.addr, opts.session, &mut w_all)),
            control,
        ]
        .into_iter()
        .flatten()
        {
            let o = Opts {
                url: format!("ws://{addr}/ws"),
                session,
                ..opts.clone()
            };
            let r = run_load(&o).await;
            print!("round {round} ");
            r.print(label);
            acc.push(r);
        }
    }
    let (tb, pb) = medians(&b_all);
    let (tw, pw) = medians(&w_all);
    println!(
        "median throughput: {base} {tb:.0}/s, {test} {tw:.0}/s, ratio {test}/{base} {:.3}",
        tw / tb
    );
    println!(
        "median p99: {base} {pb:.0} us, {test} {pw:.0} us, ratio {test}/{base} {:.3}",
        pw / pb
    );
    if opts.control {
        // The same load on the same server: how far apart two measurements of one thing fall.
        let (tc, pc) = medians(&c_all);
        println!(
            "control ({again} against {base}, same load and server): throughput ratio {:.3}, p99 ratio {:.3}",
            tc / tb,
            pc / pb
        );
    }
}

/// The median throughput and the median p99 (in µs) of `reports`.
fn medians(reports: &[Report]) -> (f64, f64) {
    let throughput = median(&mut reports.iter().map(Report::throughput).collect::<Vec<_>>());
    let p99 = median(
        &mut reports
            .iter()
            .map(|r| r.percentile(0.99) as f64)
            .collect::<Vec<_>>(),
    );
    (throughput, p99)
}

/// Closes the TCP connection with a reset: no close frame, as when a client's network goes.
fn abort(ws: WebSocketStream<TcpStream>) {
    let _ = ws.get_ref().set_zero_linger();
    drop(ws);
}

/// A session opened, dropped without a close frame, `pending` messages logged for it by the
/// server meanwhile, then resumed: the time from sending `resume` to the last replayed message.
async fn resume_bench(pending: u32, runs: usize, size: usize) {
    let server = start_server("wsguard", 16, None).await;
    let url = format!("ws://{}/ws", server.addr);
    let body = payload(0, 0, size, 0);
    println!(
        "resume: {pending} messages of {} B logged while the client was away, {runs} runs",
        body.len()
    );
    let mut times = Vec::with_capacity(runs);
    let mut first_frames = Vec::with_capacity(runs);
    for run in 0..runs {
        let mut ws = connect(&url, true).await;
        let answer = open_session(&mut ws, r#"{"type":"hello"}"#.to_owned())
            .await
            .expect("hello");
        let detached_before = session_stat(server.addr, "detached").await;
        abort(ws);
        // The server sees the reset and detaches the session.
        let deadline = Instant::now() + Duration::from_secs(5);
        while session_stat(server.addr, "detached").await <= detached_before {
            assert!(Instant::now() < deadline, "the session was not detached");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let path = format!("/sessions/{}/messages?count={pending}", answer.token);
        let logged = post_json(server.addr, &path, &body)
            .await
            .expect("the echo server logs messages for a session");
        assert_eq!(logged["last_seq"], pending, "{logged}");

        let mut ws = connect(&url, true).await;
        let resume = format!(
            r#"{{"type":"resume","session":"{}","last":0}}"#,
            answer.token
        );
        let start = Instant::now();
        ws.send(Message::text(resume)).await.expect("send resume");
        let mut next_seq = 1u64;
        let mut session_frame_at = None;
        while next_seq <= u64::from(pending) {
            let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("the replay within 10 s")
                .expect("the connection stays open")
                .expect("a frame");
            let Message::Text(text) = frame else { continue };
            if text.starts_with(r#"{"type":"session""#) {
                assert!(text.contains(r#""resumed":true"#), "not resumed: {text}");
                session_frame_at = Some(start.elapsed());
            } else if text.starts_with(r#"{"type":"msg""#) {
                let seq = field_u64(&text, r#""seq":"#).expect("a seq");
                assert_eq!(seq, next_seq, "replay out of order");
                next_seq += 1;
            }
        }
        let elapsed = start.elapsed();
        let first = session_frame_at.expect("the session frame comes first");
        println!(
            "run {run:>2}: session frame after {:>6} us, last of {pending} replayed after {:>6} us",
            first.as_micros(),
            elapsed.as_micros()
        );
        times.push(elapsed.as_secs_f64() * 1e6);
        first_frames.push(first.as_secs_f64() * 1e6);
        let ack = format!(r#"{{"type":"ack","seq":{pending}}}"#);
        let _ = ws.send(Message::text(ack)).await;
        let _ = ws.close(None).await;
    }
    let worst = times.iter().copied().fold(0.0, f64::max);
    println!(
        "resume with {pending} pending: median {:.0} us, worst {worst:.0} us (session frame: median {:.0} us)",
        median(&mut times),
        median(&mut first_frames)
    );
}

/// A figure of `/stats` `sessions` (0 when absent).
async fn session_stat(addr: SocketAddr, name: &str) -> u64 {
    get_json(addr, "/stats")
        .await
        .and_then(|s| s["sessions"][name].as_u64())
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
struct IdleOpts {
    connections: usize,
    servers: Vec<String>,
    preset: Option<String>,
    hold: Duration,
    session: bool,
    reconnect: bool,
    per_source: usize,
    dials: usize,
    /// Server processes sharing the port, and as many client processes.
    procs: usize,
}

/// What the idle connections are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Hold,
    /// Drop without a close frame and resume at once.
    Reconnect,
    Close,
}

/// How one idle connection went.
#[derive(Debug, Default)]
struct Held {
    /// How late each ping came, against the ping interval, in microseconds.
    lateness_us: Vec<u64>,
    /// The connection ended before it was told to.
    dropped: bool,
    /// Under `--reconnect`: the resume's outcome.
    resumed: Option<Result<(), String>>,
    /// Under `--reconnect`, for the sample: the exactly-once check.
    exact: Option<Result<(), String>>,
}

/// Opens connections from loopback source addresses, `per_source` from each.
#[derive(Debug)]
struct Dialer {
    target: SocketAddr,
    url: String,
    per_source: usize,
    spread: bool,
    session: bool,
    dials: Semaphore,
    /// Ports past the regular ones, for a regular port another socket holds.
    spare_ports: AtomicUsize,
    /// Dials refused with 503 (connections over `max_connections`) and tried again.
    retries: AtomicUsize,
}

/// Spread connections bind explicit local ports from here: about 55,000 per source address,
/// against the 28,000 of the usual ephemeral range.
const FIRST_PORT: usize = 10_000;

impl Dialer {
    /// Source address of connection `i`: 127.0.0.2, 127.0.0.3, ... when spreading.
    fn source(&self, i: usize) -> Option<IpAddr> {
        let n = i / self.per_source.max(1);
        self.spread.then(|| {
            IpAddr::V4(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(127, 0, 0, 2)) + n as u32,
            ))
        })
    }

    async fn dial(&self, i: usize) -> Result<WebSocketStream<TcpStream>, String> {
        let Ok(_permit) = self.dials.acquire().await else {
            return Err("not dialled: an earlier connection failed".to_owned());
        };
        let source = self.source(i);
        let socket = match source {
            Some(source) => self.bound(source, FIRST_PORT + i % self.per_source.max(1))?,
            None => TcpSocket::new_v4().map_err(|e| describe_io("socket", &e, None))?,
        };
        let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(self.target))
            .await
            .map_err(|_| "connect: no answer in 10 s (server's accept backlog?)".to_owned())?
            .map_err(|e| describe_io("connect", &e, source))?;
        // Small buffers: 100,000 clients with tungstenite's default 128 KiB would take 13 GB.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let request = ws_request(&self.url, self.session);
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
        )
        .await
        .map_err(|_| "upgrade: no answer in 10 s".to_owned())?
        .map_err(|e| format!("upgrade: {e} (a 503 is the server's max_connections)"))?;
        Ok(ws)
    }
}

impl Dialer {
    /// As [`dial`](Self::dial), trying again after a `503` as a client would (the server counts
    /// a dropped connection until it notices the drop): after 50 to 150 ms, then longer.
    async fn redial(&self, i: usize) -> Result<WebSocketStream<TcpStream>, String> {
        let mut attempt = 0u32;
        loop {
            match self.dial(i).await {
                Err(err) if err.contains("503") && attempt < 30 => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    let jitter = (i as u64 * 37 + u64::from(attempt) * 11) % 100;
                    let wait = 50 * u64::from(attempt.min(10)) + jitter;
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                other => return other,
            }
        }
    }

    /// A socket bound to `source` and `port`, or to a spare port if another socket holds it.
    fn bound(&self, source: IpAddr, port: usize) -> Result<TcpSocket, String> {
        let mut port = port;
        for _ in 0..16 {
            let socket = TcpSocket::new_v4().map_err(|e| describe_io("socket", &e, None))?;
            // A port left in TIME_WAIT by an earlier run is free for a new peer.
            let _ = socket.set_reuseaddr(true);
            let Ok(port16) = u16::try_from(port) else {
                break;
            };
            match socket.bind(SocketAddr::new(source, port16)) {
                Ok(()) => return Ok(socket),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    port = FIRST_PORT
                        + self.per_source
                        + self.spare_ports.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(describe_io("bind", &e, Some(source))),
            }
        }
        Err(format!(
            "bind: no free local port on {source} (ports {FIRST_PORT} to 65535; lower --per-source)"
        ))
    }
}

/// Names the limit behind a socket error.
fn describe_io(step: &str, err: &std::io::Error, source: Option<IpAddr>) -> String {
    let limit = match err.raw_os_error() {
        Some(24) => {
            " (EMFILE: this process's open-file limit, `ulimit -n`, hard limit included)".to_owned()
        }
        Some(23) => " (ENFILE: the system's open-file limit, fs.file-max)".to_owned(),
        Some(99) | Some(98) => format!(
            " (no free local port on {}: net.ipv4.ip_local_port_range; lower --per-source)",
            source.map_or("127.0.0.1".to_owned(), |s| s.to_string())
        ),
        Some(111) => " (refused: the server is gone or its listen backlog is full)".to_owned(),
        _ => String::new(),
    };
    format!("{step}: {err}{limit}")
}

/// What every idle connection shares: how to dial again, what to do, and the count of resumes.
#[derive(Debug, Clone)]
struct Control {
    dialer: Arc<Dialer>,
    phase: watch::Receiver<Phase>,
    ping_interval: Duration,
    resumed: Arc<AtomicUsize>,
}

/// Holds one idle connection: answers pings (tungstenite does) and records how late each came;
/// then closes, or drops and resumes, as told.
async fn hold_one(
    i: usize,
    (mut ws, opened_at): (WebSocketStream<TcpStream>, Instant),
    token: Option<String>,
    sample: bool,
    control: Control,
) -> Held {
    let Control {
        dialer,
        mut phase,
        ping_interval,
        resumed,
    } = control;
    let mut held = Held::default();
    let interval_us = ping_interval.as_micros().max(1) as u64;
    // Pings are due a whole number of intervals after the connection opened (after a pong the
    // server skips one) or after the previous ping (a late tick moves the schedule).
    let mut since = opened_at;
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Ping(_))) => {
                    // Past the nearest due time: lateness; before it (jitter): on time.
                    let over = since.elapsed().as_micros() as u64 % interval_us;
                    held.lateness_us.push(if over < interval_us / 2 { over } else { 0 });
                    since = Instant::now();
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    held.dropped = true;
                    return held;
                }
            },
            changed = phase.changed() => {
                if changed.is_err() {
                    return held;
                }
                let now = *phase.borrow_and_update();
                match now {
                    Phase::Hold => {}
                    Phase::Close => {
                        let _ = ws.close(None).await;
                        // Read until the server's close frame ends the stream.
                        let _ = tokio::time::timeout(Duration::from_secs(10), async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                        return held;
                    }
                    Phase::Reconnect => {
                        let token = token.clone().expect("reconnect needs a session");
                        if sample {
                            held.exact = Some(exactly_once(i, &dialer, ws, &token).await);
                            resumed.fetch_add(1, Ordering::AcqRel);
                            return held;
                        }
                        abort(ws);
                        let outcome = resume_session(&dialer, i, &token).await;
                        resumed.fetch_add(1, Ordering::AcqRel);
                        match outcome {
                            Ok(new) => {
                                ws = new;
                                since = Instant::now();
                                held.resumed = Some(Ok(()));
                            }
                            Err(err) => {
                                held.resumed = Some(Err(err));
                                return held;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Dials again and resumes session `token` (its client holds nothing: `last` 0).
async fn resume_session(
    dialer: &Dialer,
    i: usize,
    token: &str,
) -> Result<WebSocketStream<TcpStream>, String> {
    let mut ws = dialer.redial(i).await?;
    let resume = format!(r#"{{"type":"resume","session":"{token}","last":0}}"#);
    let answer = open_session(&mut ws, resume).await?;
    if !answer.resumed {
        return Err(format!("not resumed: {answer:?}"));
    }
    Ok(ws)
}

/// Messages each sampled session sends around its drop.
const SAMPLE_MESSAGES: u64 = 20;

/// The exactly-once check of one session: sends 20 numbered messages, reads part of their
/// echoes, drops without a close frame, resumes with the highest `seq` it holds, resends what
/// the server had not processed, and checks that every message came back exactly once and in
/// `seq` order.
async fn exactly_once(
    i: usize,
    dialer: &Dialer,
    mut ws: WebSocketStream<TcpStream>,
    token: &str,
) -> Result<(), String> {
    let data = |k: u64| format!(r#"{{"conn":{i},"k":{k}}}"#);
    for id in 1..=SAMPLE_MESSAGES {
        ws.feed(Message::text(session_msg(id, &data(id))))
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    ws.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut echoed = vec![0u32; SAMPLE_MESSAGES as usize + 1];
    let mut held_seq = 0u64;
    let mut record = |text: &str, held_seq: &mut u64| -> Result<(), String> {
        if !text.starts_with(r#"{"type":"msg""#) {
            return Ok(());
        }
        let seq = field_u64(text, r#""seq":"#).ok_or("no seq")?;
        if seq != *held_seq + 1 {
            return Err(format!("seq {seq} after {held_seq}"));
        }
        *held_seq = seq;
        let k = field_u64(text, r#""k":"#).ok_or("no k")?;
        echoed[k as usize] += 1;
        Ok(())
    };
    // Half the echoes, then the drop: the rest are in flight or not yet processed.
    while held_seq < SAMPLE_MESSAGES / 2 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => record(&text, &mut held_seq)?,
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("before the drop: {other:?}")),
        }
    }
    abort(ws);
    let mut ws = dialer.redial(i).await?;
    let resume = format!(r#"{{"type":"resume","session":"{token}","last":{held_seq}}}"#);
    let answer = open_session(&mut ws, resume).await?;
    if !answer.resumed {
        return Err(format!("not resumed: {answer:?}"));
    }
    for id in answer.last + 1..=SAMPLE_MESSAGES {
        ws.feed(Message::text(session_msg(id, &data(id))))
            .await
            .map_err(|e| format!("resend: {e}"))?;
    }
    ws.flush().await.map_err(|e| format!("flush: {e}"))?;
    while held_seq < SAMPLE_MESSAGES {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => record(&text, &mut held_seq)?,
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("after the resume, at seq {held_seq}: {other:?}")),
        }
    }
    // Anything more within a moment would be a duplicate.
    if let Ok(Some(Ok(Message::Text(text)))) =
        tokio::time::timeout(Duration::from_millis(200), ws.next()).await
        && text.starts_with(r#"{"type":"msg""#)
    {
        return Err(format!("more than {SAMPLE_MESSAGES} echoes: {text}"));
    }
    if echoed[1..].iter().any(|&n| n != 1) {
        return Err(format!("echo counts by k: {:?}", &echoed[1..]));
    }
    let ack = format!(r#"{{"type":"ack","seq":{held_seq}}}"#);
    let _ = ws.send(Message::text(ack)).await;
    let _ = ws.close(None).await;
    Ok(())
}

/// Opens connections `indices`, `dials` at a time, each held by a task of its own; stops dialling
/// at the first failure. Returns the holders, how many opened, and the first failure.
async fn open_idle(
    indices: std::ops::Range<usize>,
    control: &Control,
    reconnect: bool,
) -> (tokio::task::JoinSet<Held>, usize, Option<String>) {
    let dialer = &control.dialer;
    let mut opening = tokio::task::JoinSet::new();
    for i in indices {
        let dialer = dialer.clone();
        opening.spawn(async move {
            let mut ws = dialer.dial(i).await?;
            let token = if dialer.session {
                let answer = open_session(&mut ws, r#"{"type":"hello"}"#.to_owned()).await?;
                Some(answer.token)
            } else {
                None
            };
            Ok::<_, String>((i, ws, token, Instant::now()))
        });
    }
    let mut holders = tokio::task::JoinSet::new();
    let mut first_error = None;
    let mut opened = 0usize;
    while let Some(done) = opening.join_next().await {
        match done.expect("dial task") {
            Ok((i, ws, token, opened_at)) => {
                opened += 1;
                let sample = reconnect && i < SAMPLE_SESSIONS;
                holders.spawn(hold_one(i, (ws, opened_at), token, sample, control.clone()));
            }
            Err(err) => {
                if first_error.is_none() {
                    first_error = Some(err);
                    // Stop dialling: whatever stopped this one stops the rest.
                    dialer.dials.close();
                }
            }
        }
    }
    (holders, opened, first_error)
}

/// Sessions in the exactly-once sample of `--reconnect`.
const SAMPLE_SESSIONS: usize = 100;

async fn idle_connections(opts: IdleOpts) {
    let k = opts.connections;
    let ping_interval = opts
        .preset
        .as_deref()
        .and_then(Preset::from_name)
        .unwrap_or(Preset::Development)
        .config()
        .connection
        .ping_interval;
    for kind in opts.servers.clone() {
        let server = start_server(&kind, k + 16, opts.preset.as_deref()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = server.child.id();
        let before = rss_kib(pid);
        let parts_start = rss_parts(pid);
        let alloc_start = allocator_figures(server.addr, &kind).await;
        let session = opts.session && kind != "bare";
        let spread = k > opts.per_source;
        let dialer = Arc::new(Dialer {
            target: server.addr,
            url: format!("ws://{}/ws", server.addr),
            per_source: opts.per_source,
            spread,
            session,
            dials: Semaphore::new(opts.dials.max(1)),
            spare_ports: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
        });
        if spread {
            println!(
                "{kind:>8}: {k} connections from {} loopback addresses, 127.0.0.2 on, {} each",
                k.div_ceil(opts.per_source),
                opts.per_source
            );
        }

        let (phase_tx, phase_rx) = watch::channel(Phase::Hold);
        let resumed = Arc::new(AtomicUsize::new(0));
        let control = Control {
            dialer: dialer.clone(),
            phase: phase_rx,
            ping_interval,
            resumed: resumed.clone(),
        };
        let start = Instant::now();
        let (mut holders, opened, first_error) = open_idle(0..k, &control, opts.reconnect).await;
        let open_time = start.elapsed();
        if let Some(err) = &first_error {
            println!(
                "{kind:>8}: stopped at {opened} of {k} connections: {err} (the dials left were cancelled)"
            );
        }
        // The server counts a connection once its upgrade is done.
        let accepted_time = wait_for(server.addr, &kind, Duration::from_secs(10), |s| {
            s["connections"]["open"].as_u64() == Some(opened as u64)
        })
        .await
        .map(|_| start.elapsed());
        println!(
            "{kind:>8}: {opened} connections open in {:.1} s (client side), all counted by the server after {}",
            open_time.as_secs_f64(),
            accepted_time.map_or("-".to_owned(), |t| format!("{:.1} s", t.as_secs_f64()))
        );

        // Let the server finish setting up every connection, then hold them.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let during = rss_kib(pid);
        let alloc_open = allocator_figures(server.addr, &kind).await;
        let per = (during.saturating_sub(before) as f64 * 1024.0) / opened.max(1) as f64;
        let cpu_start = (cpu_ticks(pid), Instant::now());
        tokio::time::sleep(opts.hold.saturating_sub(Duration::from_secs(1))).await;
        let cpu = (cpu_ticks(pid) - cpu_start.0) as f64
            / TICKS_PER_SECOND
            / cpu_start.1.elapsed().as_secs_f64();
        let held_rss = rss_kib(pid);
        let open_stats = get_json(server.addr, "/stats").await;
        println!(
            "{kind:>8}: {opened} idle connections{}, server RSS {before} KiB -> {during} KiB ({:.2} KB per connection; {held_rss} KiB after the hold), client RSS {} KiB",
            if session { " with sessions" } else { "" },
            per / 1000.0,
            rss_kib(std::process::id()),
        );
        let cpu_span = cpu_start.1.elapsed().as_secs_f64();
        if cpu_span >= 1.0 {
            println!(
                "{kind:>8}: server CPU while idle {:.2}% of one core over {cpu_span:.1} s",
                cpu * 100.0,
            );
        }
        if let Some(stats) = &open_stats {
            println!(
                "{kind:>8}: while open: open connections {}, registered with the metrics {}, sessions {} ({} detached)",
                field(stats, &["connections", "open"]),
                field(stats, &["metrics", "connections_active"]),
                field(stats, &["sessions", "live"]),
                field(stats, &["sessions", "detached"]),
            );
        }

        if opts.reconnect && session {
            reconnect_all(&kind, pid, &server, opened, &phase_tx, &resumed, &dialer).await;
        }

        // Close them all, then wait for the server's tables and memory.
        let closing = Instant::now();
        let _ = phase_tx.send(Phase::Close);
        let mut lateness = Vec::new();
        let mut dropped = 0usize;
        let (mut resume_failed, mut exact_ok, mut exact_failed) = (Vec::new(), 0usize, Vec::new());
        while let Some(held) = holders.join_next().await {
            let held = held.expect("holder task");
            lateness.extend(held.lateness_us);
            dropped += usize::from(held.dropped);
            if let Some(Err(err)) = held.resumed {
                resume_failed.push(err);
            }
            match held.exact {
                Some(Ok(())) => exact_ok += 1,
                Some(Err(err)) => exact_failed.push(err),
                None => {}
            }
        }
        let client_closed = closing.elapsed();
        // Dedup keys (of the sample's messages) and detached sessions stay for their TTLs.
        let messages_sent = opts.reconnect && session;
        let emptied = wait_for(server.addr, &kind, Duration::from_secs(120), |s| {
            s["connections"]["open"].as_u64() == Some(0)
                && s["metrics"]["clients"]["tracked"].as_u64() == Some(0)
                && (messages_sent || s["dedup"]["remembered"].as_u64() == Some(0))
                && (session || s["sessions"]["live"].as_u64() == Some(0))
        })
        .await
        .map(|_| closing.elapsed());
        let mut rss_back = None;
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(10) {
            if rss_kib(pid) as f64 <= before as f64 * 1.2 {
                rss_back = Some(closing.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(closing.elapsed())).await;
        // Then until it settles (no new low for 2 s, at most 12 s after the close): the figure
        // after close is where it stays, not where it crossed the 20 % line.
        let (mut after, mut low_at) = (rss_kib(pid), Instant::now());
        while low_at.elapsed() < Duration::from_secs(2)
            && closing.elapsed() < Duration::from_secs(12)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = rss_kib(pid);
            if now < after {
                (after, low_at) = (now, Instant::now());
            }
        }
        let settled = closing.elapsed();
        let parts_after = rss_parts(pid);
        let alloc_after = allocator_figures(server.addr, &kind).await;
        lateness.sort_unstable();
        if !lateness.is_empty() {
            println!(
                "{kind:>8}: ping lateness over {} pings (interval {} s): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                lateness.len(),
                ping_interval.as_secs(),
                percentile(&lateness, 0.50) as f64 / 1000.0,
                percentile(&lateness, 0.99) as f64 / 1000.0,
                lateness.last().copied().unwrap_or(0) as f64 / 1000.0,
            );
        } else if opts.hold > ping_interval {
            println!("{kind:>8}: no pings received");
        }
        if dropped > 0 {
            println!("{kind:>8}: {dropped} connections ended before they were closed");
        }
        if opts.reconnect && session {
            println!(
                "{kind:>8}: exactly-once sample: {exact_ok} of {} sessions passed{}",
                exact_ok + exact_failed.len(),
                exact_failed
                    .first()
                    .map_or(String::new(), |e| format!("; first failure: {e}"))
            );
            if !resume_failed.is_empty() {
                println!(
                    "{kind:>8}: {} resumes failed; first: {}",
                    resume_failed.len(),
                    resume_failed[0]
                );
            }
        }
        println!(
            "{kind:>8}: closed by the clients in {:.1} s; server tables empty after {}; RSS within 20% of the start after {}; RSS {before} KiB at start, {after} KiB after close ({:+.1} %, settled {:.1} s after the close)",
            client_closed.as_secs_f64(),
            emptied.map_or("-".to_owned(), |t| format!("{:.1} s", t.as_secs_f64())),
            rss_back.map_or("- (not within 10 s)".to_owned(), |t| format!(
                "{:.1} s",
                t.as_secs_f64()
            )),
            (after as f64 / before.max(1) as f64 - 1.0) * 100.0,
            settled.as_secs_f64(),
        );
        if let (Some(start), Some(open), Some(after)) = (&alloc_start, &alloc_open, &alloc_after) {
            let mb = |v: &serde_json::Value, key: &str| {
                v.get(key)
                    .and_then(serde_json::Value::as_u64)
                    .map_or("-".to_owned(), |b| format!("{:.1}", b as f64 / 1e6))
            };
            let line = ["allocated", "active", "metadata", "resident", "retained"]
                .map(|key| {
                    format!(
                        "{key} {} -> {} -> {}",
                        mb(start, key),
                        mb(open, key),
                        mb(after, key)
                    )
                })
                .join(", ");
            println!(
                "{kind:>8}: allocator, MB at start -> open -> after close: {line}; thread caches returned {}",
                field(after, &["caches_returned"])
            );
        }
        println!(
            "{kind:>8}: RSS at start -> after close, KiB: anonymous {} -> {}, file {} -> {}",
            parts_start.0, parts_after.0, parts_start.1, parts_after.1
        );
        if let Some(stats) = get_json(server.addr, "/stats").await {
            println!(
                "{kind:>8}: after close: open connections {}, tracked clients {}, remembered dedup keys {}, sessions {} ({} detached, kept for the TTL)",
                field(&stats, &["connections", "open"]),
                field(&stats, &["metrics", "clients", "tracked"]),
                field(&stats, &["dedup", "remembered"]),
                field(&stats, &["sessions", "live"]),
                field(&stats, &["sessions", "detached"]),
            );
        }
    }
}

/// Every session's client drops without a close frame and resumes at once, as after a load
/// balancer restart.
async fn reconnect_all(
    kind: &str,
    pid: u32,
    server: &ServerProcess,
    opened: usize,
    phase: &watch::Sender<Phase>,
    resumed: &AtomicUsize,
    dialer: &Dialer,
) {
    let rss_start = rss_kib(pid);
    let start = Instant::now();
    let _ = phase.send(Phase::Reconnect);
    let mut peak = rss_start;
    while resumed.load(Ordering::Acquire) < opened && start.elapsed() < Duration::from_secs(60) {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    peak = peak.max(rss_kib(pid));
    let stats = get_json(server.addr, "/stats").await;
    println!(
        "{kind:>8}: mass reconnect: {} of {opened} sessions done (failures below) in {:.2} s, {} dials answered 503 and retried; server RSS {rss_start} KiB before, peak {peak} KiB (sampled every 20 ms; VmHWM {} KiB)",
        resumed.load(Ordering::Acquire),
        took.as_secs_f64(),
        dialer.retries.load(Ordering::Relaxed),
        status_kib(pid, "VmHWM"),
    );
    if let Some(stats) = stats {
        println!(
            "{kind:>8}: after the reconnect: open connections {}, sessions {} ({} detached), resumed {}, replayed {}, refused {}",
            field(&stats, &["connections", "open"]),
            field(&stats, &["sessions", "live"]),
            field(&stats, &["sessions", "detached"]),
            field(&stats, &["sessions", "resumed"]),
            field(&stats, &["sessions", "replayed"]),
            field(&stats, &["sessions", "refused"]),
        );
    }
}

fn field(stats: &serde_json::Value, path: &[&str]) -> String {
    path.iter()
        .try_fold(stats, |v, k| v.get(k))
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// The server's allocator figures (`/stats`'s `allocator`: jemalloc's allocated, active,
/// metadata, resident and retained bytes); `None` for bare axum.
async fn allocator_figures(addr: SocketAddr, kind: &str) -> Option<serde_json::Value> {
    if kind == "bare" {
        return None;
    }
    get_json(addr, "/stats")
        .await?
        .get("allocator")
        .filter(|a| a.is_object())
        .cloned()
}

/// Polls `/stats` until `done` holds (at most `limit`); `None` without a `/stats` (bare) or in
/// time.
async fn wait_for(
    addr: SocketAddr,
    kind: &str,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Option<()> {
    if kind == "bare" {
        return None;
    }
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if get_json(addr, "/stats").await.as_ref().is_some_and(&done) {
            return Some(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// One HTTP/1.1 request on `addr`, its body parsed as JSON; `None` unless the answer is 200
/// within 5 s (a server out of file descriptors accepts nothing).
async fn http_json(addr: SocketAddr, request: String) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()??;
    let response = String::from_utf8_lossy(&response);
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    let body = response.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// `GET path` on `addr`, parsed as JSON; `None` when the server has no such route.
async fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    http_json(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// `POST path` with `body` on `addr`, the answer parsed as JSON.
async fn post_json(addr: SocketAddr, path: &str, body: &str) -> Option<serde_json::Value> {
    http_json(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

/// `--idle K --procs P`: P echo processes share one port (`SO_REUSEPORT`, the kernel spreads the
/// connections) and P client processes of this binary hold K/P connections each, from their own
/// source ports, so that no process needs more than K/P descriptors. Memory and CPU are the sum
/// over the server processes; ping lateness is pooled from every client.
async fn idle_across_processes(opts: IdleOpts) {
    let k = opts.connections;
    let procs = opts.procs;
    let per_proc = k.div_ceil(procs);
    let addr = free_addr();
    let servers: Vec<ServerProcess> = (0..procs)
        .map(|_| {
            spawn_server(
                "wsguard",
                addr,
                per_proc * 12 / 10 + 64,
                opts.preset.as_deref(),
                true,
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "the servers did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    let rss = || pids.iter().map(|&p| rss_kib(p)).sum::<u64>();
    let cpu = || pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let before = rss();
    println!(
        "wsguard: {k} connections to {procs} server processes on {addr} from {procs} client processes, {} loopback source addresses",
        k.div_ceil(opts.per_source)
    );
    let ping_ms = opts
        .preset
        .as_deref()
        .and_then(Preset::from_name)
        .unwrap_or(Preset::Development)
        .config()
        .connection
        .ping_interval
        .as_millis();
    let me = std::env::current_exe().expect("own path");
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..procs {
        let first = w * per_proc;
        let count = per_proc.min(k.saturating_sub(first));
        let mut child = Command::new(&me)
            .arg("idle-worker")
            .args([
                addr.to_string(),
                first.to_string(),
                count.to_string(),
                opts.per_source.to_string(),
                ping_ms.to_string(),
                opts.dials.div_ceil(procs).to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a client process");
        let stdin = child.stdin.take().expect("piped");
        let lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("piped")));
        workers.push((child, stdin, lines));
    }
    let read_line = |lines: &mut std::io::Lines<std::io::BufReader<std::process::ChildStdout>>| {
        lines.next().and_then(Result::ok).unwrap_or_default()
    };
    let mut opened = 0usize;
    for (_, _, lines) in &mut workers {
        // `opened N` or `opened N error ...`
        let line = tokio::task::block_in_place(|| read_line(lines));
        let mut words = line.split_whitespace().skip(1);
        opened += words
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        if line.contains(" error ") {
            println!("wsguard: a client process stopped: {line}");
        }
    }
    let open_time = start.elapsed();
    println!(
        "wsguard: {opened} connections open in {:.1} s (client side)",
        open_time.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = rss();
    let per = (during.saturating_sub(before) as f64 * 1024.0) / opened.max(1) as f64;
    let (ticks, since) = (cpu(), Instant::now());
    tokio::time::sleep(opts.hold.saturating_sub(Duration::from_secs(1))).await;
    let span = since.elapsed().as_secs_f64();
    let busy = (cpu() - ticks) as f64 / TICKS_PER_SECOND / span;
    let per_server: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
    println!(
        "wsguard: {opened} idle connections, server RSS (sum of {procs}) {before} KiB -> {during} KiB ({:.2} KB per connection); per process now {per_server:?} KiB",
        per / 1000.0
    );
    println!(
        "wsguard: server CPU while idle (sum of {procs}) {:.2}% of one core over {span:.1} s",
        busy * 100.0
    );
    let closing = Instant::now();
    let mut lateness: Vec<u64> = Vec::new();
    for (_, stdin, _) in &mut workers {
        use std::io::Write;
        let _ = writeln!(stdin, "close");
    }
    for (child, _, lines) in &mut workers {
        let line = tokio::task::block_in_place(|| read_line(lines));
        lateness.extend(
            line.split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse::<u64>().ok()),
        );
        let _ = tokio::task::block_in_place(|| child.wait());
    }
    let client_closed = closing.elapsed();
    lateness.sort_unstable();
    if !lateness.is_empty() {
        println!(
            "wsguard: ping lateness over {} pings (interval {} s): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lateness.len(),
            ping_ms / 1000,
            percentile(&lateness, 0.50) as f64 / 1000.0,
            percentile(&lateness, 0.99) as f64 / 1000.0,
            lateness.last().copied().unwrap_or(0) as f64 / 1000.0,
        );
    }
    let mut rss_back = None;
    while closing.elapsed() < Duration::from_secs(12) {
        if rss() as f64 <= before as f64 * 1.2 {
            rss_back = Some(closing.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "wsguard: closed by the clients in {:.1} s; RSS within 20% of the start after {}; RSS (sum) {before} KiB at start, {} KiB after close",
        client_closed.as_secs_f64(),
        rss_back.map_or("- (not within 12 s)".to_owned(), |t| format!(
            "{:.1} s",
            t.as_secs_f64()
        )),
        rss(),
    );
}

/// A client process of `--procs`: `idle-worker ADDR FIRST COUNT PER_SOURCE PING_MS DIALS` opens
/// connections FIRST.. FIRST+COUNT, prints `opened N` (and `error ...` if it stopped), holds them
/// until a line on its input, closes them and prints `lateness` with every ping's lateness in
/// microseconds.
async fn idle_worker(args: &[String]) {
    let arg = |i: usize| -> usize {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| usage())
    };
    let target: SocketAddr = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage());
    let (first, count, per_source, ping_ms, dials) = (arg(1), arg(2), arg(3), arg(4), arg(5));
    let dialer = Arc::new(Dialer {
        target,
        url: format!("ws://{target}/ws"),
        per_source,
        spread: true,
        session: false,
        dials: Semaphore::new(dials.max(1)),
        spare_ports: AtomicUsize::new(0),
        retries: AtomicUsize::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Hold);
    let control = Control {
        dialer,
        phase: phase_rx,
        ping_interval: Duration::from_millis(ping_ms as u64),
        resumed: Arc::new(AtomicUsize::new(0)),
    };
    let (mut holders, opened, first_error) = open_idle(first..first + count, &control, false).await;
    match first_error {
        Some(err) => println!("opened {opened} error {err}"),
        None => println!("opened {opened}"),
    }
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await
    .expect("stdin reader");
    let _ = phase_tx.send(Phase::Close);
    let mut lateness = Vec::new();
    while let Some(held) = holders.join_next().await {
        lateness.extend(held.expect("holder task").lateness_us);
    }
    let values: Vec<String> = lateness.iter().map(u64::to_string).collect();
    println!("lateness {}", values.join(" "));
}
