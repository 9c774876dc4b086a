//! Load generator for WebSocket echo servers, and the side-by-side comparison of a bare axum echo
//! with the wsguard `echo` example.
//!
//! ```text
//! # load an echo server that is already running
//! cargo run --release --example loadgen -- --url ws://127.0.0.1:3000/ws -c 16 -n 1000 --mode pipelined
//! # bare axum echo vs wsguard echo, same load, alternating, with their ratio
//! cargo build --release --example echo --example loadgen
//! target/release/examples/loadgen --compare -c 16 -n 2000 --mode ping-pong --rounds 3
//! # server memory per idle connection, bare and wsguard
//! target/release/examples/loadgen --idle 1000
//! ```
//!
//! Options: `-c` connections (16), `-n` messages per connection (1000), `--mode ping-pong|pipelined`
//! (ping-pong), `--dup-ratio R` share of messages re-sent byte for byte (0), `--size B` payload
//! bytes (100), `--rounds R` alternations in `--compare` (3), `--window W` messages in flight per
//! connection when pipelined (64).
//!
//! For `--compare` and `--idle` the servers run as child processes (this binary with `serve-bare`,
//! and the `echo` example built beside it), so that the server's memory is measured apart from the
//! client's. Duplicates get no reply from wsguard (they are dropped before the handler), so the
//! client never waits for one.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

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
        if self.latencies_us.is_empty() {
            return 0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i]
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

fn usage() -> ! {
    eprintln!(
        "usage: loadgen [--url URL] [-c N] [-n N] [--mode ping-pong|pipelined] [--dup-ratio R] [--size B] [--window W]\n       loadgen --compare [--rounds R] [same options]\n       loadgen --idle K\n       loadgen serve-bare ADDR"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
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
    };
    let mut compare = false;
    let mut idle = None;
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
            "--compare" => compare = true,
            "--idle" => idle = Some(value().parse::<usize>().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    if let Some(k) = idle {
        rt.block_on(idle_memory(k));
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
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
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

fn sent_at(reply: &str) -> Option<u64> {
    let start = reply.find("\"t\":")? + 4;
    let end = start + reply[start..].find(',')?;
    reply[start..end].parse().ok()
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

async fn run_load(opts: &Opts) -> Report {
    let epoch = Instant::now();
    let mut sockets = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        let (ws, _) = tokio_tungstenite::connect_async(opts.url.as_str())
            .await
            .unwrap_or_else(|e| {
                eprintln!("cannot connect to {}: {e}", opts.url);
                std::process::exit(1)
            });
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

async fn one_connection<S>(
    conn: usize,
    ws: tokio_tungstenite::WebSocketStream<S>,
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
    let recv_one = |report: &mut Report, msg: Message| {
        if let Message::Text(text) = msg {
            if let Some(t) = sent_at(&text) {
                let now = epoch.elapsed().as_micros() as u64;
                report.latencies_us.push(now.saturating_sub(t));
            }
            report.replied += 1;
        }
    };
    while seq < opts.messages || in_flight > 0 {
        let window = if opts.pipelined { opts.window } else { 1 };
        while seq < opts.messages && in_flight < window {
            if is_duplicate(conn, seq, opts.dup_ratio) && !last.is_empty() {
                // A byte-for-byte re-send: dropped by wsguard's dedup, so no reply is awaited.
                tx.feed(Message::text(last.clone())).await.expect("send");
                report.duplicates_sent += 1;
            } else {
                last = payload(conn, seq, opts.size, epoch.elapsed().as_micros() as u64);
                tx.feed(Message::text(last.clone())).await.expect("send");
                in_flight += 1;
            }
            report.sent += 1;
            seq += 1;
        }
        tx.flush().await.expect("flush");
        if in_flight > 0 {
            match tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
                Ok(Some(Ok(msg))) => {
                    recv_one(&mut report, msg);
                    in_flight -= 1;
                }
                Ok(_) => break,
                Err(_) => {
                    eprintln!("connection {conn}: no reply for 10 s; {in_flight} in flight");
                    break;
                }
            }
        }
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
/// development preset allows 1000) through its `WSGUARD_` environment override.
async fn start_server(kind: &str, max_connections: usize) -> ServerProcess {
    let me = std::env::current_exe().expect("own path");
    let addr = free_addr();
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
            c.env(
                "WSGUARD_CONNECTION__MAX_CONNECTIONS",
                max_connections.max(1000).to_string(),
            );
            c
        }
    };
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start server");
    let server = ServerProcess { child, addr };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{kind} server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn compare_servers(opts: Opts) {
    let bare = start_server("bare", opts.connections).await;
    let guarded = start_server("wsguard", opts.connections).await;
    println!(
        "compare: {} connections x {} messages, {}, {} B payload, {:.0}% duplicates, {} rounds",
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
    let (mut b_all, mut w_all) = (Vec::new(), Vec::new());
    for round in 0..opts.rounds {
        for (label, server, acc) in [
            ("bare", &bare, &mut b_all),
            ("wsguard", &guarded, &mut w_all),
        ] {
            let o = Opts {
                url: format!("ws://{}/ws", server.addr),
                ..opts.clone()
            };
            let r = run_load(&o).await;
            print!("round {round} ");
            r.print(label);
            acc.push(r);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let tb = median(&mut b_all.iter().map(Report::throughput).collect());
    let tw = median(&mut w_all.iter().map(Report::throughput).collect());
    let pb = median(&mut b_all.iter().map(|r| r.percentile(0.99) as f64).collect());
    let pw = median(&mut w_all.iter().map(|r| r.percentile(0.99) as f64).collect());
    println!(
        "median throughput: bare {tb:.0}/s, wsguard {tw:.0}/s, ratio wsguard/bare {:.3}",
        tw / tb
    );
    println!(
        "median p99: bare {pb:.0} us, wsguard {pw:.0} us, ratio wsguard/bare {:.3}",
        pw / pb
    );
}

async fn idle_memory(k: usize) {
    for kind in ["bare", "wsguard"] {
        let server = start_server(kind, k + 16).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = server.child.id();
        let before = rss_kib(pid);
        let url = format!("ws://{}/ws", server.addr);
        let mut held = Vec::with_capacity(k);
        for i in 0..k {
            match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((ws, _)) => held.push(ws),
                Err(e) => {
                    eprintln!("{kind}: connection {i} failed: {e}");
                    break;
                }
            }
        }
        // Let the server finish setting up every connection before reading its memory.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let during = rss_kib(pid);
        let per = (during.saturating_sub(before) as f64 * 1024.0) / held.len().max(1) as f64;
        let n = held.len();
        let open_stats = get_json(server.addr, "/stats").await;
        for mut ws in held {
            let _ = ws.close(None).await;
        }
        // Give the server time to see every close and drop the connections' state.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pid);
        println!(
            "{kind:>8}: {n} idle connections, server RSS {before} KiB -> {during} KiB ({:.1} KB per connection), {after} KiB after they closed",
            per / 1000.0
        );
        let field = |stats: &serde_json::Value, path: &[&str]| {
            path.iter()
                .try_fold(stats, |v, k| v.get(k))
                .map_or_else(|| "-".to_owned(), ToString::to_string)
        };
        if let Some(stats) = open_stats {
            println!(
                "{kind:>8}: while open: open connections {}, connections registered with the metrics {}",
                field(&stats, &["connections", "open"]),
                field(&stats, &["metrics", "connections_active"]),
            );
        }
        if let Some(stats) = get_json(server.addr, "/stats").await {
            println!(
                "{kind:>8}: after close: open connections {}, tracked clients {}, remembered dedup keys {}",
                field(&stats, &["connections", "open"]),
                field(&stats, &["metrics", "clients", "tracked"]),
                field(&stats, &["dedup", "remembered"]),
            );
        }
    }
}

/// `GET path` on `addr`, parsed as JSON; `None` when the server has no such route.
async fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let response = String::from_utf8_lossy(&response);
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    let body = response.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}
