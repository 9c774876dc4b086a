//! A rolling restart under load, over real processes: two `echo-node` servers share one Redis
//! (sessions and the dedup window); clients spread over both with `Client::connect_any`. Node A
//! is drained with SIGTERM and restarted, then node B. Every client is closed with `1001`,
//! resumes on the other node, and every echo arrives exactly once and in order.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use wsguard_client::{Client, ClientOptions, Event, Message, RetryConfig};
use wsguard_test_support::RedisServer;

const CLIENTS: usize = 8;
/// Between two messages of one client.
const PACE: Duration = Duration::from_millis(3);

/// One `echo-node` process, killed on drop.
struct Node {
    name: &'static str,
    addr: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(name: &'static str, addr: SocketAddr, config: &Path, dir: &Path) -> Self {
        let mut node = Self {
            name,
            addr,
            config: config.to_owned(),
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_echo-node"))
            .args(["--addr", &self.addr.to_string(), "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("echo-node starts");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until `GET /health` answers 200.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut tcp) = TcpStream::connect(self.addr) {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = write!(
                    tcp,
                    "GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
                );
                let mut answer = String::new();
                let _ = tcp.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {} not ready in 30 s; its log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the process to exit; returns how long the drain took.
    fn terminate(&mut self) -> Duration {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = started + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = child.try_wait().unwrap() {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "node {} still running 30 s after SIGTERM; its log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(exit.success(), "node {} exited with {exit}", self.name);
        started.elapsed()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    texts: Vec<String>,
    /// Close codes of the connections that ended (`None`: broken without a close frame).
    disconnects: Vec<Option<u16>>,
    resumed: usize,
    restarted: usize,
    /// Why the client stopped, if it did.
    stopped: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing_and_repeats_nothing() {
    let redis = RedisServer::start();
    let mut dir = tempfile::tempdir().unwrap();
    // `ROLLING_RESTART_KEEP=1` keeps the nodes' logs (their path is printed) to look at a failure.
    if std::env::var_os("ROLLING_RESTART_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("node logs in {}", dir.path().display());
    }
    let config = dir.path().join("wsguard.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[dedup]
fingerprint_key = "00112233445566778899aabbccddeeff"
[dedup.store]
backend = "redis"
[dedup.store.redis]
url = "{url}"
operation_timeout = "1s"
[session]
enabled = true
[session.store]
backend = "redis"
[session.store.redis]
url = "{url}"
operation_timeout = "1s"
"#,
            url = redis.url()
        ),
    )
    .unwrap();
    let mut a = Node::start("a", free_addr(), &config, dir.path());
    let mut b = Node::start("b", free_addr(), &config, dir.path());

    let options = ClientOptions {
        retry: RetryConfig {
            max_attempts: 0,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            ..RetryConfig::testing()
        },
        ..ClientOptions::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut seen = Vec::new();
    for i in 0..CLIENTS {
        // Half start on each node.
        let urls = if i % 2 == 0 {
            [a.url(), b.url()]
        } else {
            [b.url(), a.url()]
        };
        let (client, mut events) = Client::connect_any(urls, options.clone())
            .await
            .expect("connects");
        let log = Arc::new(Mutex::new(Seen::default()));
        seen.push(log.clone());
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let mut log = log.lock().unwrap();
                match event {
                    Event::Message {
                        message: Message::Text(text),
                        ..
                    } => log.texts.push(text),
                    Event::Disconnected(disconnect) => log.disconnects.push(disconnect.code),
                    Event::Resumed => log.resumed += 1,
                    Event::Restarted(_) => log.restarted += 1,
                    Event::Stopped(stopped) => log.stopped = Some(format!("{stopped:?}")),
                    _ => {}
                }
            }
        });
        let stop = stop.clone();
        senders.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sent += 1;
                if client.send(format!("c{i}-{sent}")).await.is_err() {
                    sent -= 1;
                    break;
                }
                tokio::time::sleep(PACE).await;
            }
            (client, sent)
        }));
    }

    let received = |seen: &[Arc<Mutex<Seen>>]| -> Vec<usize> {
        seen.iter().map(|s| s.lock().unwrap().texts.len()).collect()
    };
    // Every client gets `more` echoes beyond `from`.
    let progress = |from: Vec<usize>, more: usize, what: &str| {
        let seen = &seen;
        let what = what.to_owned();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let now = received(seen);
                if now.iter().zip(&from).all(|(n, f)| *n >= f + more) {
                    return now;
                }
                assert!(
                    Instant::now() < deadline,
                    "no progress {what}: {from:?} -> {now:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    let before = progress(vec![0; CLIENTS], 20, "before the restarts").await;
    let drained_a = tokio::task::block_in_place(|| a.terminate());
    tokio::task::block_in_place(|| a.spawn());
    let after_a = progress(before, 50, "after node a restarted").await;
    let drained_b = tokio::task::block_in_place(|| b.terminate());
    tokio::task::block_in_place(|| b.spawn());
    progress(after_a, 50, "after node b restarted").await;

    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    // Held until every echo is in: dropping the last handle stops a client.
    let mut clients = Vec::new();
    for sender in senders {
        let (client, count) = sender.await.unwrap();
        sent.push(count);
        clients.push(client);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while received(&seen)
        .iter()
        .zip(&sent)
        .any(|(n, s)| (*n as u64) < *s)
    {
        assert!(
            Instant::now() < deadline,
            "echoes missing: sent {sent:?}, received {:?}",
            received(&seen)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for (i, (log, sent)) in seen.iter().zip(&sent).enumerate() {
        let log = log.lock().unwrap();
        let expected: Vec<String> = (1..=*sent).map(|n| format!("c{i}-{n}")).collect();
        assert!(
            log.texts == expected,
            "client {i}: {} echoes for {sent} sent, or out of order or repeated",
            log.texts.len()
        );
        assert_eq!(log.restarted, 0, "client {i} lost its session");
        assert_eq!(log.stopped, None, "client {i} stopped");
        assert!(
            log.disconnects.contains(&Some(1001)),
            "client {i} was never told 1001: {:?}",
            log.disconnects
        );
        assert!(log.resumed >= 1, "client {i} never resumed");
    }
    // Each drain is bounded by the server's drain timeout (10 s) and its reconnect window.
    for (node, took) in [("a", drained_a), ("b", drained_b)] {
        assert!(
            took < Duration::from_secs(15),
            "node {node} drained in {took:?}"
        );
    }
    for client in clients {
        client.close().await;
    }
    let total: u64 = sent.iter().sum();
    eprintln!(
        "rolling restart: {total} messages from {CLIENTS} clients, each echoed once in order; drains took {drained_a:?} and {drained_b:?}"
    );
}
