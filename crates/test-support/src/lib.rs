//! What wsguard's tests share: real Redis servers started by the test on free loopback ports and
//! killed when the test ends. Not published.
//!
//! - [`RedisServer`]: one `redis-server`, with stop and restart for outage tests.
//! - [`RedisCluster`]: a Redis Cluster of three masters (`redis-server` in cluster mode joined by
//!   `redis-cli --cluster create`), with stop and restart of one master.
//!
//! Both need Debian's `redis-server` package (7.0 or newer), which `scripts/test.sh` installs.

#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

mod cluster;
mod resp;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use self::cluster::RedisCluster;
use self::resp::Reply;

/// A `redis-server` child process on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port (no persistence) and waits until it answers.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not installed (`scripts/test.sh` installs it) or does not start.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        let mut why = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let mut child = spawn(port, dir.path());
            match wait_answering(&mut child, port, dir.path()) {
                Ok(()) => {
                    return Self {
                        child: Some(child),
                        port,
                        dir,
                    };
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    why = e;
                }
            }
        }
        panic!("redis-server did not start in {PORT_ATTEMPTS} attempts; last: {why}");
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server again on the same port, after [`stop`](Self::stop), and waits until it
    /// answers.
    pub fn restart(&mut self) {
        let mut child = spawn(self.port, self.dir.path());
        let result = wait_answering(&mut child, self.port, self.dir.path());
        self.child = Some(child);
        if let Err(why) = result {
            self.stop();
            panic!("redis-server did not restart: {why}");
        }
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP), keeping its connections and data: commands get no answer
    /// until [`thaw`](Self::thaw), as with a server stuck on a slow disk or a partitioned network.
    ///
    /// # Panics
    ///
    /// If the server is stopped, or the signal cannot be sent (`kill` missing).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server run again (SIGCONT); it answers the commands that waited.
    ///
    /// # Panics
    ///
    /// As [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill {signal} failed");
    }

    /// How many keys the server holds (`DBSIZE`).
    pub fn dbsize(&self) -> u64 {
        match resp::command(self.addr(), &["DBSIZE"]) {
            Ok(Reply::Integer(n)) => n.try_into().unwrap_or(0),
            other => panic!("unexpected DBSIZE answer: {other:?}"),
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(port: u16, dir: &Path) -> Child {
    Command::new(binary("redis-server"))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--logfile", "redis.log"])
        .arg("--dir")
        .arg(dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server")
}

/// Attempts at starting a server on a fresh port when another process took it meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// Waits until `child`, started with `--logfile redis.log` in `dir`, answers on `port` (10 s at
/// most). The answer must come from `child` itself (`INFO`'s `process_id`): a port picked free
/// can be taken by another process before the server binds it, and the server then exits.
fn wait_answering(child: &mut Child, port: u16, dir: &Path) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ours = format!("process_id:{}", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server for port {port} exited ({status}):\n{}",
                log_tail(&dir.join("redis.log"))
            ));
        }
        if let Ok(Reply::Text(info)) = resp::command(addr, &["INFO", "server"])
            && info.lines().any(|l| l == ours)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "redis-server did not answer on port {port} within 10 s:\n{}",
                log_tail(&dir.join("redis.log"))
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The path of a Redis program (`redis-server`, `redis-cli`) on `PATH` or in the usual places.
fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path.into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: the Redis tests start real Redis servers. Install it with \
                 `apt-get install redis-server` (which brings redis-cli through redis-tools; \
                 scripts/test.sh does this)"
            )
        })
}

/// The last lines of a server's log, for a failure message.
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(log) => {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_lost_its_port_to_another_is_not_taken_for_it() {
        let first = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        // The port answers, but from the first server: the second cannot bind it and exits.
        let mut second = spawn(first.port, dir.path());
        let why = wait_answering(&mut second, first.port, dir.path()).unwrap_err();
        assert!(why.contains("exited"), "{why}");
        assert_eq!(first.dbsize(), 0);
    }
}
