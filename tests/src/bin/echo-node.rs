//! The `echo` example's server as a binary of this crate, so that the multi-node tests
//! (`tests/tests/rolling_restart.rs`) can start, stop and restart real server processes:
//! `echo-node --addr HOST:PORT --config FILE [--preset NAME]`. On SIGTERM or Ctrl-C it drains its
//! WebSockets (503 to new upgrades, `1001` with a reconnect delay to each client) and exits.

use std::process::ExitCode;

use wsguard_examples::{ServerArgs, echo, init_tracing, prometheus, serve};

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
    let app = echo::app(&config, Some(prometheus()));
    match serve(app.router, args.addr).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("server failed: {err}");
            ExitCode::from(1)
        }
    }
}
