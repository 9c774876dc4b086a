//! Helpers shared by the wsguard example servers: command line, configuration, tracing, serving.

#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod allocator;
pub mod echo;

// Example servers use jemalloc, tuned in .cargo/config.toml to hand freed pages back within a
// second: with glibc's allocator a server's RSS stays near its peak after 10,000 connections
// close (measured: 97 MB of 99 MB kept; with this setting 10 MB of 104 MB). See BENCHMARKS.md.
// `allocator::runtime` has the workers give their caches back when the heap shrinks.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use wsguard::axum::SessionStats;
use wsguard_config::{ConfigHandle, ConfigLoader, FileWatcher, LoadError, Preset, StabilityConfig};

/// Where a server listens when neither `--addr` nor `WSGUARD_ADDR` says.
pub const DEFAULT_ADDR: &str = "127.0.0.1:3000";

/// The command line of an example server:
/// `[--addr HOST:PORT] [--preset NAME] [--config FILE] [--reuse-port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerArgs {
    /// `--addr`, else `WSGUARD_ADDR`, else [`DEFAULT_ADDR`].
    pub addr: SocketAddr,
    /// `--preset production|development|testing`: the base under the file and the environment.
    /// `None`: the `development` preset (or the server's own base).
    pub preset: Option<Preset>,
    /// `--config FILE`, over the preset.
    pub config_file: Option<PathBuf>,
    /// `--reuse-port`: share the address with other processes started the same way
    /// (`SO_REUSEPORT`; the kernel spreads new connections over them).
    pub reuse_port: bool,
    /// `--rate-limit`: the `echo` server puts `RateLimitLayer` in its stack, reading the
    /// config's `rate_limit` section (`EchoOptions::rate_limit`). Off by default there, since a
    /// load generator on one host is one client. The other servers decide for themselves.
    pub rate_limit: bool,
}

impl ServerArgs {
    /// Reads the process's arguments and `WSGUARD_ADDR`.
    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::args().skip(1), std::env::var("WSGUARD_ADDR").ok())
    }

    /// Parses `args` (without the program name); `env_addr` is the value of `WSGUARD_ADDR`.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        env_addr: Option<String>,
    ) -> Result<Self, String> {
        let mut addr = None;
        let mut preset = None;
        let mut config_file = None;
        let mut reuse_port = false;
        let mut rate_limit = false;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "--addr" => addr = Some(value()?),
                "--config" => config_file = Some(PathBuf::from(value()?)),
                "--reuse-port" => reuse_port = true,
                "--rate-limit" => rate_limit = true,
                "--preset" => {
                    let name = value()?;
                    preset = Some(
                        Preset::from_name(&name)
                            .ok_or_else(|| format!("unknown preset {name:?}"))?,
                    );
                }
                "-h" | "--help" => {
                    return Err(
                        "usage: [--addr HOST:PORT] [--preset production|development|testing] [--config FILE] [--reuse-port] [--rate-limit]"
                            .to_owned(),
                    );
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        let addr = addr.or(env_addr).unwrap_or_else(|| DEFAULT_ADDR.to_owned());
        let addr = addr
            .parse()
            .map_err(|e| format!("bad address {addr:?}: {e}"))?;
        Ok(Self {
            addr,
            preset,
            config_file,
            reuse_port,
            rate_limit,
        })
    }

    /// The configuration loader: the `--preset` (default `development`), then `--config FILE`,
    /// then `WSGUARD_` environment overrides.
    pub fn loader(&self) -> ConfigLoader {
        self.loader_from(Preset::Development.config())
    }

    /// As [`loader`](Self::loader), starting from `base` instead of the `development` preset
    /// when no `--preset` is given.
    pub fn loader_from(&self, base: StabilityConfig) -> ConfigLoader {
        let base = self.preset.map_or(base, Preset::config);
        let loader = ConfigLoader::new().base(base);
        match &self.config_file {
            Some(file) => loader.file(file),
            None => loader,
        }
    }

    /// A live configuration; with `--config FILE`, edits of the file are applied while the
    /// returned watcher lives (an invalid edit is refused and logged).
    pub fn config(&self) -> Result<(ConfigHandle, Option<FileWatcher>), String> {
        self.config_from(Preset::Development.config())
    }

    /// As [`config`](Self::config), starting from `base` instead of the `development` preset.
    pub fn config_from(
        &self,
        base: StabilityConfig,
    ) -> Result<(ConfigHandle, Option<FileWatcher>), String> {
        let loader = self.loader_from(base);
        let config = loader.load().map_err(describe)?;
        let handle = ConfigHandle::new(config).map_err(|e| e.to_string())?;
        let watcher = match &self.config_file {
            Some(file) => Some(
                handle
                    .watch_file(file, loader)
                    .map_err(|e| format!("cannot watch {}: {e}", file.display()))?,
            ),
            None => None,
        };
        Ok((handle, watcher))
    }
}

fn describe(err: LoadError) -> String {
    let problems = err.field_errors();
    if problems.is_empty() {
        return err.to_string();
    }
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The process's Prometheus recorder, installed as the `metrics` facade's global recorder on
/// first use (create it before any `MetricsRegistry`, whose handles bind to the recorder).
///
/// Latencies export as histograms with the default `metrics.latency_buckets` (`_bucket` series),
/// so that percentiles can be summed over nodes, as `dashboards/wsguard.json` does.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = wsguard_config::MetricsConfig::default().latency_buckets;
            let builder = PrometheusBuilder::new();
            // Only an empty bucket list is refused; the default has buckets.
            let builder = builder
                .set_buckets(&buckets)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed already; metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The `echo` example's server from the command line (`ServerArgs`): its config (watched when
/// it comes from a file), its open-file limit raised, then served until SIGTERM or Ctrl-C and
/// drained. The exit code says why it stopped: `2` bad arguments, `1` a refused config or a
/// server failure. Shared by `examples/echo.rs` and the test suite's `echo-node` binary.
pub async fn run_echo() -> std::process::ExitCode {
    use std::process::ExitCode;

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
    let options = echo::EchoOptions {
        rate_limit: args.rate_limit,
    };
    let app = echo::app_with(&config, Some(prometheus()), options);
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

/// Serves `app` on `addr` (peer addresses available to handlers) until Ctrl-C or SIGTERM, then
/// drains its WebSockets.
///
/// Uses [`wsguard::axum::serve`]'s defaults: a request head must arrive within 10 s, at most
/// 1,024 connections may wait for theirs, and shutdown waits at most 10 s for HTTP connections.
pub async fn serve(app: axum::Router, addr: SocketAddr) -> std::io::Result<()> {
    serve_on(app, listen(addr, false)?).await
}

/// As [`serve`], on a listener of [`listen`].
pub async fn serve_on(app: axum::Router, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "listening");
    wsguard::axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    Ok(())
}

/// A listener on `addr` whose connections send each write at once (`TCP_NODELAY`, which accepted
/// sockets inherit from the listener on Linux): a batch written after an unacknowledged one would
/// otherwise wait for the client's delayed ACK, up to 40 ms (a resume's replay did). With
/// `reuse_port`, other processes may listen on the same address (`SO_REUSEPORT`).
pub fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    if reuse_port {
        #[cfg(unix)]
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Connections the kernel queues before the server accepts them (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Ctrl-C (SIGINT) or SIGTERM (what a deploy sends): the server then drains its WebSockets
/// (each client gets `1001` with a reconnect delay) and stops.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down: draining websocket connections");
}

/// Raises this process's open-file limit (one descriptor per connection) as far as it may: the
/// hard limit up to the kernel's `fs.nr_open` when the process is allowed to (root), else the
/// soft limit up to the hard one. Logs the limit it ends with, and warns when it is below
/// `connections` plus a margin, naming what to raise. Returns the soft limit (`None` where
/// there are no such limits).
pub fn raise_fd_limit(connections: usize) -> Option<u64> {
    let limit = fd_limit::raise()?;
    let wanted = connections as u64 + 256;
    if limit < wanted {
        tracing::warn!(
            limit,
            wanted,
            may_raise_hard_limits = may_raise_hard_limits(),
            "open-file limit below max_connections: raise the hard limit (`ulimit -Hn` as a \
             process with CAP_SYS_RESOURCE, LimitNOFILE=, docker --ulimit nofile=)"
        );
    } else {
        tracing::info!(limit, "open-file limit");
    }
    Some(limit)
}

/// Whether this process may raise its hard limits (Linux: `CAP_SYS_RESOURCE` in its effective
/// capabilities); a container may withhold it even from root.
pub fn may_raise_hard_limits() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

#[cfg(unix)]
mod fd_limit {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

    pub(crate) fn raise() -> Option<u64> {
        let old = getrlimit(Resource::Nofile);
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let hard = match (old.maximum, nr_open) {
            (Some(hard), Some(ceiling)) if ceiling > hard => {
                let raised = Rlimit {
                    current: Some(ceiling),
                    maximum: Some(ceiling),
                };
                // Refused without CAP_SYS_RESOURCE: then the soft limit rises to the hard one.
                match setrlimit(Resource::Nofile, raised) {
                    Ok(()) => return Some(ceiling),
                    Err(_) => hard,
                }
            }
            (Some(hard), _) => hard,
            (None, _) => return old.current.or(Some(u64::MAX)),
        };
        if old.current.is_some_and(|soft| soft < hard) {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                return Some(hard);
            }
        }
        old.current.or(Some(u64::MAX))
    }
}

#[cfg(not(unix))]
mod fd_limit {
    pub(crate) fn raise() -> Option<u64> {
        None
    }
}

/// A route's `wsguard.v1` session figures as `/stats` shows them (`WsRoute::sessions().stats()`):
/// sessions held and detached now (`null` if the store cannot count), and totals since start.
pub fn sessions_json(stats: &SessionStats) -> serde_json::Value {
    serde_json::json!({
        "live": stats.sessions,
        "detached": stats.detached,
        "bytes": stats.bytes,
        "created": stats.created,
        "resumed": stats.resumed,
        "refused": {
            "unknown": stats.refused.unknown,
            "expired": stats.refused.expired,
            "gap": stats.refused.gap,
            "unavailable": stats.refused.unavailable,
        },
        "replayed": stats.replayed,
        "dropped": stats.dropped,
        "expired": stats.expired,
        "evicted": stats.evicted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: Option<&str>) -> Result<ServerArgs, String> {
        ServerArgs::parse(args.iter().map(|s| s.to_string()), env.map(str::to_owned))
    }

    #[test]
    fn address_comes_from_flag_then_env_then_default() {
        assert_eq!(
            parse(&[], None).unwrap().addr,
            DEFAULT_ADDR.parse().unwrap()
        );
        assert_eq!(
            parse(&[], Some("0.0.0.0:9")).unwrap().addr,
            "0.0.0.0:9".parse().unwrap()
        );
        assert_eq!(
            parse(&["--addr", "127.0.0.1:7"], Some("0.0.0.0:9"))
                .unwrap()
                .addr,
            "127.0.0.1:7".parse().unwrap()
        );
        assert_eq!(
            parse(&["--addr=127.0.0.1:8"], None).unwrap().addr,
            "127.0.0.1:8".parse().unwrap()
        );
        assert!(parse(&["--addr", "nope"], None).is_err());
        assert!(parse(&["--addr"], None).is_err());
        assert!(parse(&["--bogus"], None).is_err());
    }

    #[test]
    fn preset_flag_sets_the_base() {
        let args = parse(&["--preset", "production"], None).unwrap();
        assert_eq!(args.preset, Some(Preset::Production));
        let loaded = args.loader().without_env().load().unwrap();
        assert_eq!(loaded, wsguard_config::StabilityConfig::production());
        assert!(parse(&["--preset", "fast"], None).is_err());
        assert!(parse(&["--reuse-port"], None).unwrap().reuse_port);
        assert!(!parse(&[], None).unwrap().reuse_port);
        assert!(parse(&["--rate-limit"], None).unwrap().rate_limit);
        assert!(!parse(&[], None).unwrap().rate_limit);
    }

    #[test]
    fn config_is_the_file_or_the_development_preset() {
        let args = parse(&[], None).unwrap();
        assert_eq!(args.config_file, None);
        let loaded = args.loader().without_env().load().unwrap();
        assert_eq!(loaded, wsguard_config::StabilityConfig::development());

        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/wsguard.toml");
        let args = parse(&["--config", file], None).unwrap();
        assert_eq!(
            args.config_file.as_deref(),
            Some(std::path::Path::new(file))
        );
        assert!(args.loader().without_env().load().is_ok());
    }
}
