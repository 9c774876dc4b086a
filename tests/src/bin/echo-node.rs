//! The `echo` example's server as a binary of this crate, so that the multi-node tests
//! (`tests/tests/rolling_restart.rs`) can start, stop and restart real server processes:
//! `echo-node --addr HOST:PORT --config FILE [--preset NAME]`. On SIGTERM or Ctrl-C it drains its
//! WebSockets (503 to new upgrades, `1001` with a reconnect delay to each client) and exits.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    wsguard_examples::run_echo().await
}
