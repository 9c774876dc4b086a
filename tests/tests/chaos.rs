//! Chaos over real sockets: clients of `wsguard-client` talk to the `echo` example through a TCP
//! proxy that cuts connections at random without a close frame; every message still comes back
//! exactly once and in order, text and binary alike.
//!
//! The default size is what CI runs; `CHAOS_CLIENTS`, `CHAOS_MESSAGES` and `CHAOS_CUTS` set
//! another (issue 19's full size: `CHAOS_CLIENTS=32 CHAOS_MESSAGES=1000 CHAOS_CUTS=200`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use wsguard::config::{ConfigHandle, StabilityConfig};
use wsguard_client::{Client, ClientOptions, Event, Message, RetryConfig};
use wsguard_examples::echo;
use wsguard_tests::{WAIT, serve, wait_until};

fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A TCP proxy in front of `server` that drops each connection (both sockets, with a reset and
/// no close frame) after a random lifetime, unless it ended first.
struct Proxy {
    addr: SocketAddr,
    cuts: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(server: SocketAddr, lifetime_ms: (u64, u64)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cuts = Arc::new(AtomicUsize::new(0));
        let counted = cuts.clone();
        tokio::spawn(async move {
            let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let (lo, hi) = lifetime_ms;
                let lifetime = Duration::from_millis(lo + rng.next() % (hi - lo + 1));
                let cuts = counted.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(server).await else {
                        return;
                    };
                    let piped = tokio::io::copy_bidirectional(&mut client, &mut upstream);
                    if tokio::time::timeout(lifetime, piped).await.is_err() {
                        let _ = client.set_zero_linger();
                        let _ = upstream.set_zero_linger();
                        cuts.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Self { addr, cuts }
    }
}

/// Message `m` of client `c`: unique content (the echo's dedup layer drops repeats), every
/// tenth one binary.
fn message(c: usize, m: usize) -> Message {
    let text = format!("c{c} m{m}");
    if m % 10 == 9 {
        Message::binary(text.into_bytes())
    } else {
        Message::text(text)
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_echo_arrives_exactly_once_and_in_order_across_random_cuts() {
    let clients = size("CHAOS_CLIENTS", 32);
    let messages = size("CHAOS_MESSAGES", 1000);
    let min_cuts = size("CHAOS_CUTS", 200);

    let mut config = StabilityConfig::development();
    config.dedup.ttl = Duration::from_secs(600);
    let config = ConfigHandle::new(config).unwrap();
    let app = echo::app(&config, None);
    let server = serve(app.router.clone()).await;
    let proxy = Proxy::start(server, (5, 60)).await;

    let options = ClientOptions {
        retry: RetryConfig {
            enabled: true,
            max_attempts: 0,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            multiplier: 2.0,
            jitter: 0.5,
        },
        max_unacknowledged: 128,
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let resumed = Arc::new(AtomicU64::new(0));
    let started = tokio::time::Instant::now();
    let url = format!("ws://{}/ws", proxy.addr);
    let runs = (0..clients).map(|c| {
        let (options, resumed, url) = (options.clone(), resumed.clone(), url.clone());
        tokio::spawn(async move {
            let (client, mut events) = Client::connect(url, options)
                .await
                .expect("connect through the proxy");
            let sender = client.clone();
            let writer = tokio::spawn(async move {
                for m in 0..messages {
                    sender.send(message(c, m)).await.expect("client open");
                }
            });
            let mut echoed = Vec::with_capacity(messages);
            while echoed.len() < messages {
                let event = tokio::time::timeout(WAIT, events.next())
                    .await
                    .unwrap_or_else(|_| panic!("client {c}: echo {} in time", echoed.len()))
                    .expect("events open");
                match event {
                    Event::Message { message, .. } => echoed.push(message),
                    Event::Resumed => {
                        resumed.fetch_add(1, Ordering::Relaxed);
                    }
                    // A cut: the resume follows.
                    Event::Disconnected(_) => {}
                    other => panic!("client {c}: unexpected {other:?}"),
                }
            }
            let expected: Vec<Message> = (0..messages).map(|m| message(c, m)).collect();
            if echoed != expected {
                let first = echoed.iter().zip(&expected).position(|(a, b)| a != b);
                panic!("client {c}: echoes differ first at {first:?}");
            }
            writer.await.unwrap();
            client.close().await;
        })
    });
    for run in runs.collect::<Vec<_>>() {
        run.await.unwrap();
    }
    let elapsed = started.elapsed();

    let cuts = proxy.cuts.load(Ordering::Relaxed);
    eprintln!(
        "{clients} clients x {messages} messages each way in {elapsed:?}: {cuts} cuts, {} resumes",
        resumed.load(Ordering::Relaxed)
    );
    assert!(cuts >= min_cuts, "only {cuts} cuts, wanted {min_cuts}");
    assert!(resumed.load(Ordering::Relaxed) > 0);
    // A resend after a cut never runs the handler twice.
    wait_until("every message handled", || {
        app.handled.load(Ordering::Relaxed) >= (clients * messages) as u64
    })
    .await;
    assert_eq!(
        app.handled.load(Ordering::Relaxed),
        (clients * messages) as u64
    );
}
