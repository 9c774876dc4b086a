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
//! - `GET /stats`: a JSON snapshot of the metrics registry, dedup, breaker and connections.
//! - `GET /health`: 200.
//! - `POST /sessions/{token}/messages?count=N`: logs the body N times in a `wsguard.v1` session,
//!   whether its client is connected or not (it gets them on resume).
//!
//! With `--config FILE`, edits of the file apply without a restart (an invalid edit is refused
//! and logged). Without `--preset` the base is the `development` preset. At start the server
//! raises its file-descriptor limit as far as it may (one descriptor per connection) and logs it.
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`).

use std::process::ExitCode;

use wsguard_examples::{
    ServerArgs, echo, init_tracing, listen, prometheus, raise_fd_limit, serve_on,
};

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let args = match ServerArgs::from_env() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let (config, _watcher) = match args.config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("configuration refused:\n{err}");
            return ExitCode::from(1);
        }
    };
    raise_fd_limit(config.get().connection.max_connections);
    let app = echo::app(&config, Some(prometheus()));
    let listener = match listen(args.addr, args.reuse_port) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("cannot listen on {}: {err}", args.addr);
            return ExitCode::from(1);
        }
    };
    match serve_on(app.router, listener).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("server failed: {err}");
            ExitCode::from(1)
        }
    }
}
