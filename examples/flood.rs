//! What a per-client rate limit buys a quiet client while another floods the same route, and
//! what the limit costs per message.
//!
//! ```text
//! cargo build --release --example flood && target/release/examples/flood
//! target/release/examples/flood --seconds 20 --action drop -c 16 -n 2000 --rounds 5
//! ```
//!
//! The servers are the `echo` example's application with and without `RateLimitLayer`
//! (`echo::app_with`), each run as a child process of this binary (`flood serve ...`), so that
//! their CPU is apart from the clients'. Each reads a config file this binary writes: the
//! `development` preset, client ids from the `x-client-id` header, and `rate_limit` per client
//! (the echo binary does the same with `--config FILE --rate-limit`).
//!
//! 1. **Latency under a flood.** One quiet client sends `--rate` pings a second (100) for
//!    `--seconds` (10) and times each echo: alone, then while a flooder on the same route sends as
//!    fast as it can (and reads what comes back). The limit is 200 messages a second per client
//!    (burst 400), refused with `--action` (`error_frame`) as soon as the limit refuses; the same
//!    flood on the server without the layer shows what the limit spares the quiet client. Then
//!    `--trials` (3) times alone and flooded on a server that holds each refusal until the
//!    flooder's limit refills (`rate_limit.hold_refused = "1s"`, as in the production preset),
//!    so that the flooder's connection is read no faster than its limit: the p99 ratio of each
//!    trial and their median, against the target of 1.5x.
//! 2. **Cost per message.** `-c` connections (16), each `-n` (2000) back-to-back ping-pongs with
//!    its own client id, on the server with the layer (limits no client reaches) and on the one
//!    without, alternating for `--rounds` (5); the best round of each, and their ratio.
//!
//! The quiet client runs on a thread and runtime of its own, the flooder and the load on
//! another, so that the flooder's loop does not delay the quiet client's reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{MissedTickBehavior, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use wsguard_examples::echo::{self, EchoOptions};
use wsguard_examples::{ServerArgs, serve};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

/// The per-client limit of the latency test.
const LIMIT_PER_SECOND: u32 = 200;
const LIMIT_BURST: u32 = 400;
/// Payload of every message: a sequence number, padded.
const PAYLOAD: usize = 64;
/// Longest hold of a refusal on the server whose refusals are held (`rate_limit.hold_refused`,
/// as in the production preset).
const HOLD: &str = "1s";
/// Longest wait for one reply before the run is called failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Opts {
    seconds: f64,
    rate: u32,
    action: String,
    trials: usize,
    connections: usize,
    messages: usize,
    rounds: usize,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut opts = Self {
            seconds: 10.0,
            rate: 100,
            action: "error_frame".to_owned(),
            trials: 3,
            connections: 16,
            messages: 2000,
            rounds: 5,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            let number = |v: String| v.parse::<f64>().map_err(|e| format!("{flag} {v:?}: {e}"));
            match flag.as_str() {
                "--seconds" => opts.seconds = number(value()?)?,
                "--rate" => opts.rate = number(value()?)? as u32,
                "--action" => opts.action = value()?,
                "--trials" => opts.trials = number(value()?)? as usize,
                "-c" => opts.connections = number(value()?)? as usize,
                "-n" => opts.messages = number(value()?)? as usize,
                "--rounds" => opts.rounds = number(value()?)? as usize,
                _ => return Err(Self::USAGE.to_owned()),
            }
        }
        if !matches!(opts.action.as_str(), "drop" | "error_frame") {
            return Err(
                "--action is drop or error_frame (a closed flooder would only reconnect)".into(),
            );
        }
        if !opts.seconds.is_finite()
            || opts.seconds <= 0.0
            || opts.rate == 0
            || opts.rate >= LIMIT_PER_SECOND
            || opts.connections == 0
            || opts.messages == 0
            || opts.rounds == 0
            || opts.trials == 0
        {
            return Err(format!(
                "--seconds, --trials, -c, -n and --rounds must be > 0, --rate between 1 and {}",
                LIMIT_PER_SECOND - 1
            ));
        }
        Ok(opts)
    }

    const USAGE: &'static str = "usage: flood [--seconds S] [--rate R] [--action drop|error_frame] [-c N] [-n N] [--rounds R]\n       flood serve ADDR CONFIG with-limit|with-held-limit|without-limit";
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve_child(&args[1..]),
        _ => Opts::parse(&args)
            .map_err(Error::from)
            .and_then(|opts| run(&opts)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("flood: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `flood serve ADDR CONFIG with-limit|without-limit`: the echo application, until killed.
fn serve_child(args: &[String]) -> Result<(), Error> {
    let [addr, config, limit] = args else {
        return Err(Opts::USAGE.into());
    };
    let options = match limit.as_str() {
        "with-limit" => EchoOptions { rate_limit: true },
        "without-limit" => EchoOptions::default(),
        other => return Err(format!("unknown {other:?}\n{}", Opts::USAGE).into()),
    };
    let server = ServerArgs::parse(
        ["--addr", addr.as_str(), "--config", config.as_str()].map(str::to_owned),
        None,
    )?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let (config, _watcher) = server.config()?;
        let app = echo::app_with(&config, None, options);
        serve(app.router, server.addr).await?;
        Ok(())
    })
}

/// The config of the servers: client ids from a header the clients set (trusted here: this
/// binary is every client), and per-client limits as given.
fn write_config(
    dir: &Path,
    name: &str,
    (per_second, burst): (u32, u32),
    (bytes_per_second, bytes_burst): (u32, u32),
    action: &str,
    hold: &str,
) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    let text = format!(
        r#"[connection]
client_id = "header"
client_id_key = "x-client-id"
client_id_trusted = true

[rate_limit]
enabled = true
scope = "client"
messages_per_second = {per_second}
messages_burst = {burst}
bytes_per_second = {bytes_per_second}
bytes_burst = {bytes_burst}
on_limit = "{action}"
hold_refused = "{hold}"
"#
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A child server, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// `mode`: `with-limit` or `without-limit`.
    fn start(config: &Path, mode: &str) -> Result<Self, Error> {
        // A free port: bound, read, released for the child.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg(addr.to_string())
            .arg(config)
            .arg(mode)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        let server = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err(format!("server on {addr} did not start").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(addr: SocketAddr, client: &str) -> Result<Client, Error> {
    let mut request = format!("ws://{addr}/ws").into_client_request()?;
    request.headers_mut().insert("x-client-id", client.parse()?);
    let (ws, _) = timeout(REPLY_TIMEOUT, connect_async(request)).await??;
    Ok(ws)
}

fn text(prefix: &str, seq: u64) -> Message {
    Message::text(format!("{prefix} {seq:0width$}", width = PAYLOAD))
}

/// Sends `message` and waits for its echo; a rate-limit refusal is an error.
async fn ping(ws: &mut Client, message: Message) -> Result<(), Error> {
    ws.send(message.clone()).await?;
    loop {
        let frame = timeout(REPLY_TIMEOUT, ws.next())
            .await?
            .ok_or("connection closed")??;
        match frame {
            Message::Ping(_) | Message::Pong(_) => {}
            reply if reply == message => return Ok(()),
            other => return Err(format!("unexpected reply {other:?}").into()),
        }
    }
}

/// The quiet client: `rate` pings a second for `seconds`, on its own thread; the echo times.
fn quiet(
    addr: SocketAddr,
    client: String,
    rate: u32,
    seconds: f64,
) -> Result<Vec<Duration>, Error> {
    std::thread::spawn(move || -> Result<Vec<Duration>, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let mut ws = connect(addr, &client).await?;
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let end = Instant::now() + Duration::from_secs_f64(seconds);
            let mut times = Vec::new();
            for seq in 0.. {
                tick.tick().await;
                if Instant::now() >= end {
                    break;
                }
                let start = Instant::now();
                ping(&mut ws, text("quiet", seq)).await?;
                times.push(start.elapsed());
            }
            let _ = ws.close(None).await;
            Ok(times)
        })
    })
    .join()
    .map_err(|_| "the quiet client panicked")?
}

/// The flooder's counters, shared with its reader.
#[derive(Debug, Default)]
struct FloodCounts {
    sent: AtomicU64,
    echoed: AtomicU64,
    refused: AtomicU64,
}

/// A flooder: sends as fast as the connection takes, reads every reply, until `stop`.
async fn flood(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counts: Arc<FloodCounts>,
) -> Result<(), Error> {
    let ws = connect(addr, "flooder").await?;
    let (mut tx, mut rx) = ws.split();
    let reading = counts.clone();
    let mut reader = AbortOnDrop(tokio::spawn(async move {
        while let Some(Ok(frame)) = rx.next().await {
            match frame {
                Message::Text(t) if t.starts_with("flood") => {
                    reading.echoed.fetch_add(1, Ordering::Relaxed);
                }
                Message::Text(_) => {
                    reading.refused.fetch_add(1, Ordering::Relaxed);
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    }));
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..32 {
            tx.feed(text("flood", seq)).await?;
            seq += 1;
            counts.sent.fetch_add(1, Ordering::Relaxed);
        }
        tx.flush().await?;
    }
    // A server that reads this connection slowly has a backlog ahead of the close frame: the
    // replies of a moment, then the connection is dropped.
    let _ = timeout(Duration::from_secs(1), tx.close()).await;
    let _ = timeout(Duration::from_secs(1), &mut reader.0).await;
    Ok(())
}

/// Ends the task when dropped: a flooder stopped while blocked on a full socket takes its
/// reader with it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The quiet client's times while a flooder floods `addr`; and what the flooder saw.
fn quiet_under_flood(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    opts: &Opts,
    client: &str,
) -> Result<(Vec<Duration>, FloodSeen), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(FloodCounts::default());
    let flooder = runtime.spawn(flood(addr, stop.clone(), counts.clone()));
    // The flood reaches its pace (and spends its burst) before the measurement starts.
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let sent_before = counts.sent.load(Ordering::Relaxed);
    let times = quiet(addr, client.to_owned(), opts.rate, opts.seconds);
    let seen = FloodSeen {
        sent_per_second: (counts.sent.load(Ordering::Relaxed) - sent_before) as f64
            / started.elapsed().as_secs_f64(),
        echoed: 0,
        refused: 0,
    };
    stop.store(true, Ordering::Relaxed);
    // Blocked on a full socket, the flooder never sees `stop`: it is dropped then.
    let mut flooder = AbortOnDrop(flooder);
    if let Ok(joined) =
        runtime.block_on(async { timeout(Duration::from_secs(3), &mut flooder.0).await })
    {
        joined??;
    }
    drop(flooder);
    let seen = FloodSeen {
        echoed: counts.echoed.load(Ordering::Relaxed),
        refused: counts.refused.load(Ordering::Relaxed),
        ..seen
    };
    Ok((times?, seen))
}

/// What the flooder did: its pace while the quiet client measured, and its replies over the
/// whole flood.
struct FloodSeen {
    sent_per_second: f64,
    echoed: u64,
    refused: u64,
}

/// `c` connections, each `n` back-to-back ping-pongs; the run's wall time.
async fn load_round(addr: SocketAddr, c: usize, n: usize, round: usize) -> Result<Duration, Error> {
    let mut clients = Vec::with_capacity(c);
    for i in 0..c {
        clients.push(connect(addr, &format!("load-{round}-{i}")).await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                for seq in 0..n as u64 {
                    ping(&mut ws, text("load", seq)).await?;
                }
                let _ = ws.close(None).await;
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

fn latency(mut times: Vec<Duration>) -> Latency {
    times.sort_unstable();
    Latency {
        p50: percentile(&times, 0.50),
        p99: percentile(&times, 0.99),
        max: times.last().copied().unwrap_or_default(),
        n: times.len(),
    }
}

fn show(label: &str, l: &Latency) {
    println!(
        "  {label:<28} p50 {:>8.0} us   p99 {:>8.0} us   max {:>8.0} us   ({} pings)",
        micros(l.p50),
        micros(l.p99),
        micros(l.max),
        l.n
    );
}

fn show_flood(seen: &FloodSeen) {
    println!(
        "  {:<28} wrote {:.0} msg/s into its socket while measured; over the whole flood {} echoed, {} refused with a frame",
        "flooder", seen.sent_per_second, seen.echoed, seen.refused,
    );
}

fn run(opts: &Opts) -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("wsguard-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Messages only: the flood is of small messages.
    let limited = write_config(
        &dir,
        "limited.toml",
        (LIMIT_PER_SECOND, LIMIT_BURST),
        (0, 0),
        &opts.action,
        "0s",
    )?;
    let held = write_config(
        &dir,
        "held.toml",
        (LIMIT_PER_SECOND, LIMIT_BURST),
        (0, 0),
        &opts.action,
        HOLD,
    )?;
    // Both limits, so high that no client reaches them: every message is checked twice and
    // none refused.
    let roomy = write_config(
        &dir,
        "roomy.toml",
        (1_000_000_000, 1_000_000_000),
        (1_000_000_000, 1_000_000_000),
        &opts.action,
        "0s",
    )?;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "flood: {cores} cores, load average at start {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    // The flooder and the load run here; the quiet client on a thread of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    {
        let with_limit = Server::start(&limited, "with-limit")?;
        let with_held_limit = Server::start(&held, "with-limit")?;
        let without_limit = Server::start(&limited, "without-limit")?;
        println!(
            "\nquiet client, {} pings/s for {} s; limit {LIMIT_PER_SECOND} msg/s per client (burst {LIMIT_BURST}), on_limit = {}:",
            opts.rate, opts.seconds, opts.action
        );
        let alone = latency(quiet(
            with_limit.addr,
            "quiet-alone".into(),
            opts.rate,
            opts.seconds,
        )?);
        show("alone", &alone);
        let (times, seen) = quiet_under_flood(&runtime, with_limit.addr, opts, "quiet-limited")?;
        let limited = latency(times);
        show("flooder limited", &limited);
        show_flood(&seen);
        let (times, seen) =
            quiet_under_flood(&runtime, without_limit.addr, opts, "quiet-unlimited")?;
        let unlimited = latency(times);
        show("flooder, no rate limit", &unlimited);
        show_flood(&seen);
        let ratio = |l: &Latency, alone: &Latency| micros(l.p99) / micros(alone.p99).max(1.0);
        println!(
            "  p99 ratio to alone: limited flooder {:.2}x, unlimited flooder {:.2}x",
            ratio(&limited, &alone),
            ratio(&unlimited, &alone)
        );

        println!(
            "\nrefusals held until the limit refills (hold_refused = {HOLD:?}, the production preset's), {} trials of alone then flooded:",
            opts.trials
        );
        let mut ratios = Vec::with_capacity(opts.trials);
        for trial in 0..opts.trials {
            let alone = latency(quiet(
                with_held_limit.addr,
                format!("quiet-alone-{trial}"),
                opts.rate,
                opts.seconds,
            )?);
            show("alone", &alone);
            let (times, seen) = quiet_under_flood(
                &runtime,
                with_held_limit.addr,
                opts,
                &format!("quiet-held-{trial}"),
            )?;
            let flooded = latency(times);
            show("flooder limited and held", &flooded);
            show_flood(&seen);
            ratios.push(ratio(&flooded, &alone));
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "  p99 ratio to alone per trial: {} ; median {:.2}x (target <= 1.5x)",
            ratios
                .iter()
                .map(|r| format!("{r:.2}x"))
                .collect::<Vec<_>>()
                .join(", "),
            ratios[ratios.len() / 2]
        );
    }

    {
        let with_layer = Server::start(&roomy, "with-limit")?;
        let without_layer = Server::start(&roomy, "without-limit")?;
        println!(
            "\ncost per message: {} connections x {} ping-pongs, {} rounds alternating, best round of each:",
            opts.connections, opts.messages, opts.rounds
        );
        let (mut best_on, mut best_off) = (Duration::MAX, Duration::MAX);
        for round in 0..opts.rounds {
            let (c, n) = (opts.connections, opts.messages);
            let on = runtime.block_on(load_round(with_layer.addr, c, n, round))?;
            let off = runtime.block_on(load_round(without_layer.addr, c, n, round))?;
            println!(
                "  round {}: with the layer {:>7.0} msg/s, without {:>7.0} msg/s",
                round + 1,
                (c * n) as f64 / on.as_secs_f64(),
                (c * n) as f64 / off.as_secs_f64()
            );
            best_on = best_on.min(on);
            best_off = best_off.min(off);
        }
        let total = (opts.connections * opts.messages) as f64;
        println!(
            "  best: with the layer {:.0} msg/s ({:.1} us per message), without {:.0} msg/s ({:.1} us)",
            total / best_on.as_secs_f64(),
            micros(best_on) / total,
            total / best_off.as_secs_f64(),
            micros(best_off) / total,
        );
        println!(
            "  ratio of time per message, with/without: {:.3}x (target <= 1.1x)",
            best_on.as_secs_f64() / best_off.as_secs_f64()
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nload average at end {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
