//! What a deploy costs: a node holding K `wsguard.v1` clients is drained with SIGTERM while a
//! second node shares its Redis session store. Prints the time from SIGTERM to the node's exit,
//! how many clients were told `1001`, how many resumed their session on the other node and how
//! long that took, and how many lost their session (none should).
//!
//! ```text
//! cargo build --release --example echo --example drain
//! target/release/examples/drain --connections 10000
//! ```
//!
//! Starts its own `redis-server` (Debian package `redis-server`; no persistence, a free port)
//! and two release `echo` servers built beside this binary, on the production preset with
//! sessions in that Redis. The clients are `wsguard-client` clients given both nodes
//! (`Client::connect_any`), all connected to the first: after its `1001` each waits the reconnect
//! delay the server put in the close reason (spread over the drain's 5 s reconnect window) and
//! resumes on the second.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use wsguard_client::{Client, ClientOptions, Event, RetryConfig};
use wsguard_examples::raise_fd_limit;

/// Connections being opened at once.
const DIALS: usize = 256;

/// A child process, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

fn wait_listening(addr: SocketAddr, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("drain: {what} exited with {status}");
            std::process::exit(1);
        }
        if Instant::now() > deadline {
            eprintln!("drain: {what} is not listening on {addr} after 30 s");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_echo(binary: &Path, addr: SocketAddr, config: &Path) -> Process {
    let mut child = Command::new(binary)
        .args([
            "--addr",
            &addr.to_string(),
            "--preset",
            "production",
            "--config",
        ])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!("drain: cannot start {}: {e}", binary.display());
            std::process::exit(1);
        });
    wait_listening(addr, "echo", &mut child);
    Process(child)
}

fn usage() -> ! {
    eprintln!("usage: drain [--connections K]   (10000)");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let mut connections = 10_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--connections" => {
                connections = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    raise_fd_limit(connections);
    let here: PathBuf = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let echo = here.join("echo");
    if !echo.exists() {
        eprintln!("drain: build the echo example first: cargo build --release --example echo");
        std::process::exit(1);
    }

    let dir = tempfile::tempdir().expect("a temporary directory");
    let redis_addr = free_addr();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &redis_addr.port().to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "1000",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!("drain: cannot start redis-server (Debian package redis-server): {e}");
            std::process::exit(1);
        });
    wait_listening(redis_addr, "redis-server", &mut redis);
    let _redis = Process(redis);
    let config = dir.path().join("wsguard.toml");
    std::fs::write(
        &config,
        format!(
            "[connection]\nmax_connections = {max}\n[session]\nenabled = true\n[session.store]\nbackend = \"redis\"\n[session.store.redis]\nurl = \"redis://{redis_addr}\"\noperation_timeout = \"500ms\"\n",
            max = connections + 1000
        ),
    )
    .expect("config written");
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut a = start_echo(&echo, a_addr, &config);
    let _b = start_echo(&echo, b_addr, &config);

    let told = Arc::new(AtomicUsize::new(0));
    let resumed = Arc::new(AtomicUsize::new(0));
    let restarted = Arc::new(AtomicUsize::new(0));
    let options = ClientOptions {
        retry: RetryConfig {
            max_attempts: 0,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            ..RetryConfig::production()
        },
        ..ClientOptions::default()
    };
    let urls = [format!("ws://{a_addr}/ws"), format!("ws://{b_addr}/ws")];
    let dials = Arc::new(Semaphore::new(DIALS));
    let opened = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let permit = dials.clone().acquire_owned().await.expect("open");
        let (urls, options) = (urls.clone(), options.clone());
        let (told, resumed, restarted) = (told.clone(), resumed.clone(), restarted.clone());
        tasks.push(tokio::spawn(async move {
            let connected = Client::connect_any(urls, options).await;
            drop(permit);
            let (client, mut events) = connected.ok()?;
            tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    match event {
                        Event::Disconnected(d) if d.code == Some(1001) => {
                            told.fetch_add(1, Ordering::Relaxed);
                        }
                        Event::Resumed => {
                            resumed.fetch_add(1, Ordering::Relaxed);
                        }
                        Event::Restarted(_) => {
                            restarted.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            });
            Some(client)
        }));
    }
    let mut clients = Vec::with_capacity(connections);
    for task in tasks {
        if let Ok(Some(client)) = task.await {
            clients.push(client);
        }
    }
    println!(
        "{} of {connections} clients opened a session on node A in {:.1} s",
        clients.len(),
        opened.elapsed().as_secs_f64()
    );

    let signalled = Instant::now();
    let pid = rustix::process::Pid::from_raw(a.0.id() as i32).expect("a child's pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM sent");
    let exit = tokio::task::spawn_blocking(move || {
        let status = a.0.wait();
        (status, a)
    })
    .await
    .expect("waited");
    let drained = signalled.elapsed();
    println!(
        "node A exited ({}) {:.0} ms after SIGTERM",
        exit.0.map_or_else(|e| e.to_string(), |s| s.to_string()),
        drained.as_secs_f64() * 1000.0
    );

    let deadline = signalled + Duration::from_secs(60);
    let all = clients.len();
    while resumed.load(Ordering::Relaxed) + restarted.load(Ordering::Relaxed) < all
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = signalled.elapsed();
    println!(
        "told 1001: {}; resumed on node B: {} in {:.2} s after SIGTERM; session lost (restarted): {}",
        told.load(Ordering::Relaxed),
        resumed.load(Ordering::Relaxed),
        took.as_secs_f64(),
        restarted.load(Ordering::Relaxed)
    );
    for client in clients {
        drop(client);
    }
}
