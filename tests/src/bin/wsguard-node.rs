//! One wsguard node for the cross-node tests (`tests/tests/prometheus.rs`): the `echo` example's
//! app (metrics, dedup and circuit breaker on every message, sessions, `/metrics`) on a free
//! loopback port, in a process of its own so that its `metrics` recorder is its own.
//!
//! `/metrics` is rendered by a Prometheus recorder with the configured latency buckets (as
//! `wsguard_metrics::export` recommends), so latencies export as histograms (`_bucket`, `_sum`,
//! `_count`). Prints `listening ADDR` on stdout once it accepts connections, and exits when its
//! stdin closes, so that it never outlives the test that started it.

use std::error::Error;
use std::io::{Read, Write};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use wsguard::config::{ConfigHandle, StabilityConfig};
use wsguard_examples::echo;

fn main() -> Result<(), Box<dyn Error>> {
    let mut config = StabilityConfig::testing();
    // A window far longer than any test, so that a re-send is a duplicate however slow the machine.
    config.dedup.ttl = Duration::from_secs(600);
    // The recorder first: the registry and the layers bind their series to it.
    let recorder = PrometheusBuilder::new()
        .set_buckets(&config.metrics.latency_buckets)?
        .build_recorder();
    let prometheus = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    let config = ConfigHandle::new(config)?;

    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let app = echo::app(&config, Some(prometheus));
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening {}", listener.local_addr()?)?;
        stdout.flush()?;
        drop(stdout);
        wsguard::axum::serve(listener, app.router).await;
        Ok(())
    })
}
