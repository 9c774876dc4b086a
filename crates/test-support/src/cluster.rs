use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::resp::{self, Reply};
use crate::{PORT_ATTEMPTS, binary, wait_answering};

/// How many masters a [`RedisCluster`] has.
const MASTERS: usize = 3;
/// How long a master may be silent before the others mark it failed (`cluster-node-timeout`).
const NODE_TIMEOUT: Duration = Duration::from_millis(2_000);
/// Longest wait for the cluster to agree.
const DEADLINE: Duration = Duration::from_secs(30);

/// A Redis Cluster of three masters (no replicas) on 127.0.0.1, started by the test and killed
/// on drop.
///
/// Each master is a `redis-server` child in cluster mode with its own directory in a temporary
/// directory (its `nodes.conf`, its log, no persistence of data), a client port and a cluster
/// bus port (`cluster-port`), both picked free. [`start`](Self::start) joins them with
/// `redis-cli --cluster create` (the 16,384 slots split evenly) and returns once every node says
/// `cluster_state:ok`.
///
/// [`stop`](Self::stop) kills one master as a crash would; with no replicas its slots have no
/// owner, and after `cluster-node-timeout` (2 s) the other masters answer `CLUSTERDOWN` too
/// (Redis's default `cluster-require-full-coverage yes`). [`restart`](Self::restart) starts it
/// again on the same ports with the same node id and slots, and waits until the cluster is ok.
/// Keys live in memory only, so a restarted master comes back empty.
///
/// ```no_run
/// use wsguard_test_support::RedisCluster;
///
/// let mut cluster = RedisCluster::start();
/// let seeds = cluster.seed_urls(); // for `cluster_nodes` in the config
/// // ... write keys through a cluster client ...
/// assert!(cluster.dbsizes().iter().filter(|&&n| n > 0).count() > 1);
/// cluster.stop(0);
/// cluster.restart(0);
/// ```
///
/// # Panics
///
/// Every method panics with what went wrong (and the tail of the node's log) rather than
/// returning an error: it is for tests. `redis-server` (7.0 or newer, for `cluster-port`) and
/// `redis-cli` must be installed: Debian's `redis-server` package brings both (`redis-cli` is in
/// `redis-tools`, which it depends on); `scripts/test.sh` installs it.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    // Dropped after the nodes (fields drop in order), so no server outlives its directory.
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Node {
    child: Option<Child>,
    port: u16,
    bus_port: u16,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts three masters, joins them into one cluster and waits until every node says
    /// `cluster_state:ok`.
    pub fn start() -> Self {
        let redis_cli = binary("redis-cli");
        let dir = tempfile::tempdir().expect("temporary directory for the Redis Cluster");
        let mut cluster = Self {
            nodes: Vec::with_capacity(MASTERS),
            _dir: dir,
        };
        for i in 0..MASTERS {
            let dir = cluster._dir.path().join(format!("node-{i}"));
            std::fs::create_dir(&dir).expect("node directory");
            cluster.nodes.push(Node::start_on_free_ports(dir));
        }
        let output = Command::new(&redis_cli)
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", redis_cli.display()));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        cluster.wait_ok();
        cluster
    }

    /// Every master's URL, `redis://127.0.0.1:PORT/`, in the order [`stop`](Self::stop) and
    /// [`restart`](Self::restart) number them, stopped ones included.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// The URLs of the masters running now: seed nodes for a cluster client (`cluster_nodes`
    /// in the config). The client discovers the rest of the cluster from whichever answers.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(Node::url)
            .collect()
    }

    /// Master `i`'s URL.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Kills master `i` (as a crash would). Its slots stay unserved until
    /// [`restart`](Self::restart).
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts master `i` again, after [`stop`](Self::stop), on the same ports and with the same
    /// node id and slots, and waits until every node says `cluster_state:ok`.
    pub fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "master {i} is running");
        if let Err(why) = node.spawn_and_wait() {
            panic!("master {i} did not restart: {why}");
        }
        self.wait_ok();
    }

    /// Starts every stopped master again (on its ports, with its node id and slots) and waits
    /// until every node says `cluster_state:ok`: for a cluster that was entirely down, where
    /// restarting one master at a time could never reach `ok`.
    pub fn restart_all(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.child.is_none()
                && let Err(why) = node.spawn_and_wait()
            {
                panic!("master {i} did not restart: {why}");
            }
        }
        self.wait_ok();
    }

    /// Waits until every running master says `cluster_state:ok` in `CLUSTER INFO` (30 s at
    /// most).
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + DEADLINE;
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            loop {
                let info = node.command(&["CLUSTER", "INFO"]);
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster is not ok on master {i} after {DEADLINE:?}:\n{info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// How many keys each master holds (`DBSIZE`), in [`urls`](Self::urls) order; 0 for a
    /// stopped one.
    pub fn dbsizes(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|node| {
                if node.child.is_none() {
                    return 0;
                }
                match resp::command(node.addr(), &["DBSIZE"]) {
                    Ok(Reply::Integer(n)) => n.try_into().unwrap_or(0),
                    other => panic!("unexpected DBSIZE answer from {}: {other:?}", node.url()),
                }
            })
            .collect()
    }

    /// The keys master `i` holds (`KEYS *`; test data only).
    pub fn keys(&self, i: usize) -> Vec<String> {
        let node = &self.nodes[i];
        match resp::command(node.addr(), &["KEYS", "*"]) {
            Ok(Reply::Array(keys)) => keys
                .iter()
                .map(|k| {
                    k.text()
                        .unwrap_or_else(|| panic!("unexpected key {k:?}"))
                        .to_owned()
                })
                .collect(),
            other => panic!("unexpected KEYS answer from {}: {other:?}", node.url()),
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }
}

impl Node {
    /// Picks a client port and a bus port the system says are free and starts the node on them;
    /// if another process takes one before the server binds it, tries again on new ones.
    fn start_on_free_ports(dir: PathBuf) -> Self {
        let mut why = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let (port, bus_port) = two_free_ports();
            let mut node = Node {
                child: None,
                port,
                bus_port,
                dir: dir.clone(),
            };
            match node.spawn_and_wait() {
                Ok(()) => return node,
                Err(e) => why = e,
            }
            // A failed start leaves a nodes.conf naming the ports it could not use.
            let _ = std::fs::remove_file(dir.join("nodes.conf"));
        }
        panic!("no Redis Cluster master started in {PORT_ATTEMPTS} attempts; last: {why}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the server and waits until it is the one answering on its port; on failure the
    /// server is stopped and the reason returned.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let mut child = spawn(self.port, self.bus_port, &self.dir);
        let result = wait_answering(&mut child, self.port, &self.dir);
        self.child = Some(child);
        if result.is_err() {
            self.stop();
        }
        result
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn command(&self, args: &[&str]) -> String {
        match resp::command(self.addr(), args) {
            Ok(Reply::Text(text)) => text,
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("no answer: {e}"),
        }
    }
}

/// Two distinct ports free at the time of asking: both listeners are held at once, so the system
/// cannot hand out the same port twice.
fn two_free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().expect("local address").port();
    (port(&a), port(&b))
}

fn spawn(port: u16, bus_port: u16, dir: &Path) -> Child {
    Command::new(binary("redis-server"))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .args(["--cluster-port", &bus_port.to_string()])
        .args([
            "--cluster-node-timeout",
            &NODE_TIMEOUT.as_millis().to_string(),
        ])
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
