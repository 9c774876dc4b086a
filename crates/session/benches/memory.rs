//! Heap bytes a session holds: per logged message at several payload sizes, and per detached
//! session among 10,000. Prints figures against the issue's targets (a message at most its
//! payload plus 64 B; a detached session at most 2 KB).
//!
//! ```text
//! cargo bench -p wsguard-session --bench memory
//! ```
//!
//! Bytes are jemalloc's `stats.allocated`: what the application holds, each block counted at its
//! size class (as a server on jemalloc pays for it), read before and after, with nothing else
//! running. Sessions go through `Sessions` over the `MemorySessionStore`, as a route's do.

use std::time::Duration;

use tikv_jemalloc_ctl::{epoch, stats};
use wsguard_config::SessionConfig;
use wsguard_session::{MessageData, Opened, Session, SessionToken, Sessions};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes allocated now (jemalloc refreshes its statistics on an epoch advance).
fn allocated() -> usize {
    epoch::advance().expect("jemalloc epoch");
    stats::allocated::read().expect("jemalloc stats.allocated")
}

/// Room for everything the bench logs: no bound drops a message.
fn unbounded(max_messages: usize, max_sessions: usize) -> SessionConfig {
    SessionConfig {
        max_messages,
        max_bytes: usize::MAX / 4,
        max_sessions,
        max_total_bytes: usize::MAX / 4,
        ttl: Duration::from_secs(3600),
        ..SessionConfig::production()
    }
}

async fn hello(sessions: &Sessions) -> Session {
    match sessions.hello(None).await {
        Opened::Attached { session, .. } => session,
        Opened::Unavailable { .. } => panic!("a session is available"),
    }
}

/// A JSON string of exactly `len` bytes, quotes included.
fn json_payload(len: usize, fill: char) -> String {
    let mut text = String::with_capacity(len);
    text.push('"');
    text.extend(std::iter::repeat_n(fill, len.saturating_sub(2)));
    text.push('"');
    text
}

/// Bytes per message when `per_session` messages of `payload` bytes are logged in each of
/// `sessions` detached sessions (the production bound is 1,000 per session).
async fn per_message(payload: usize, per_session: usize, session_count: usize) -> f64 {
    let sessions = Sessions::new(unbounded(per_session, session_count));
    let mut tokens: Vec<SessionToken> = Vec::with_capacity(session_count);
    for _ in 0..session_count {
        tokens.push(hello(&sessions).await.token());
    }
    let text = json_payload(payload, 'x');
    let before = allocated();
    for token in &tokens {
        let sender = sessions.sender_for_session(token);
        for _ in 0..per_session {
            sender.send_now(text.as_str()).expect("the session is held");
        }
    }
    let after = allocated();
    let stats = sessions.stats();
    assert_eq!(stats.dropped, 0, "no bound dropped a message");
    assert_eq!(stats.bytes, Some(payload * per_session * session_count));
    (after - before) as f64 / (per_session * session_count) as f64
}

/// The baseline: bytes per payload when the same number of payloads is held alone, each in a
/// block of exactly its length (what any store holding it pays in this allocator).
fn per_payload_alone(payload: usize, count: usize) -> f64 {
    let text = json_payload(payload, 'x');
    let before = allocated();
    let held: Vec<Box<[u8]>> = (0..count).map(|_| Box::from(text.as_bytes())).collect();
    let after = allocated();
    let list = std::mem::size_of::<Box<[u8]>>() * held.capacity();
    drop(held);
    (after - before - list) as f64 / count as f64
}

/// Bytes per session with `count` sessions and no messages: attached (with the connection's
/// `Session` handle) and detached (the handles dropped).
async fn per_session(count: usize) -> (f64, f64) {
    let sessions = Sessions::new(unbounded(1000, count));
    let before = allocated();
    let mut attached = Vec::with_capacity(count);
    for _ in 0..count {
        attached.push(hello(&sessions).await);
    }
    let with_handles = allocated();
    drop(attached);
    let detached = allocated();
    assert_eq!(sessions.stats().detached, Some(count));
    (
        (with_handles - before) as f64 / count as f64,
        (detached - before) as f64 / count as f64,
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        // What the log asks for, before the allocator rounds it up: a `JsonText` (two counts,
        // then the JSON) and one deque slot (1,024 slots hold 1,000 messages), the message
        // itself (its `seq` follows from its place in the memory store's deque).
        let slot = std::mem::size_of::<MessageData>();
        let structural = |payload: usize| payload + 16 + slot * 1024 / 1000;
        println!("per logged message, 1,000 messages per detached session (production max_messages):");
        println!("| payload B | sessions | bytes / message (jemalloc) | over payload | requested, over payload | the payload alone (jemalloc) | over the payload alone | target: over payload <= 64 |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---|");
        for (payload, sessions) in [(16, 100), (100, 100), (1_000, 50), (10_000, 10)] {
            let per = per_message(payload, 1_000, sessions).await;
            let alone = per_payload_alone(payload, 1_000 * sessions);
            let over = per - payload as f64;
            println!(
                "| {payload} | {sessions} | {per:.1} | {over:.1} | {} | {alone:.1} | {:.1} | {} |",
                structural(payload) - payload,
                per - alone,
                if over <= 64.0 {
                    "met"
                } else if per - alone <= 64.0 {
                    "met over the payload's own block, missed over its length"
                } else {
                    "missed"
                }
            );
        }
        println!("(a deque slot is {slot} B; jemalloc rounds each message's block up to its size class)");
        println!();
        println!("per logged message, 100,000 messages in one session (its deque at 131,072 slots):");
        let per = per_message(100, 100_000, 1).await;
        println!("100 B payload: {per:.1} bytes / message, {:.1} over payload", per - 100.0);
        println!();
        for count in [1_000, 10_000] {
            let (attached, detached) = per_session(count).await;
            println!(
                "{count} sessions: {attached:.0} bytes each attached (with the connection's handle), {detached:.0} bytes each detached ({}; target 2,048)",
                if detached <= 2048.0 { "met" } else { "missed" }
            );
        }
    });
}
