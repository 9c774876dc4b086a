//! An echo server with the three wsguard layers on every WebSocket message.
//!
//! ```text
//! cargo run --example echo                                  # 127.0.0.1:3000, development preset
//! cargo run --example echo -- --addr 0.0.0.0:8080 --config examples/wsguard.toml
//! cargo run --example echo -- --preset production
//! cargo run --example echo -- --reuse-port & cargo run --example echo -- --reuse-port  # two processes, one port
//! WSGUARD_ADDR=127.0.0.1:9000 cargo run --example echo
//! ```
//!
//! - `GET /ws`: each text or binary message comes back, through `MetricsLayer`, `DedupLayer`
//!   (content fingerprint, per connection: a resent message, even with its JSON keys reordered,
//!   is dropped) and `CircuitBreakerLayer`.
//! - `GET /metrics`: Prometheus text (`wsguard_calls_total`, `wsguard_connections_active`, ...).
//! - `GET /stats`: a JSON snapshot of the metrics registry, dedup, breaker, connections and
//!   the allocator (jemalloc's allocated, active, resident, metadata and retained bytes).
//! - `GET /health`: 200.
//! - `POST /sessions/{token}/messages?count=N`: logs the body N times in a `wsguard.v1` session,
//!   whether its client is connected or not (it gets them on resume).
//!
//! With `--config FILE`, edits of the file apply without a restart (an invalid edit is refused
//! and logged). Without `--preset` the base is the `development` preset. At start the server
//! raises its file-descriptor limit as far as it may (one descriptor per connection) and logs it.
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`).

use std::process::ExitCode;

fn main() -> ExitCode {
    // A runtime whose workers give their allocator caches back once the heap has shrunk (after
    // connections close): see `wsguard_examples::allocator`.
    wsguard_examples::allocator::block_on(wsguard_examples::run_echo()).unwrap_or_else(|err| {
        eprintln!("runtime failed: {err}");
        ExitCode::FAILURE
    })
}
