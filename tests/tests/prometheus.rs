//! Observability across nodes: a real Prometheus (Debian's `prometheus`, started here with a
//! config written here) scrapes two wsguard nodes, and its sum over nodes of the message counter
//! is exactly what the load sent. The Grafana dashboard (`dashboards/wsguard.json`) names only
//! metrics a node exports, and Prometheus accepts each of its queries and finds series for them.
//!
//! Each node is a `wsguard-node` process (this crate's binary: the `echo` example's app). The
//! `metrics` facade has one global recorder per process, so two nodes in one process would
//! share their series.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::{Instant, sleep};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsguard_client::{Client, ClientOptions, Event, Message};
use wsguard_tests::{WAIT, connect, http_get, next_text};

/// How often the test's Prometheus scrapes each node.
const SCRAPE_INTERVAL: &str = "500ms";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sums_the_message_counter_over_two_nodes() {
    let (a, b) = (Node::start(), Node::start());
    let prometheus = Prometheus::start(&[a.addr, b.addr]).await;

    // Uneven on purpose: a node scraped twice, or missed, would not add up.
    let (sent_a, sent_b) = tokio::join!(load(a.addr, "a", 3, 20, 3), load(b.addr, "b", 2, 7, 2));
    let load_done = unix_now();
    prometheus.wait_for_scrapes_after(load_done, 1).await;

    let total = sent_a.messages + sent_b.messages;
    assert_eq!(
        prometheus
            .scalar(r#"sum(wsguard_calls_total{direction="in"})"#)
            .await,
        total as f64,
        "the sum over nodes of the message counter is what the load sent"
    );
    assert_eq!(
        prometheus
            .scalar(r#"sum(wsguard_calls_total{direction="in", outcome="duplicate"})"#)
            .await,
        (sent_a.duplicates + sent_b.duplicates) as f64
    );
    // The nodes time every call (`sample_rate = 1` in the testing preset): the histograms summed
    // over nodes, which the dashboard's percentiles read, count every message too.
    assert_eq!(
        prometheus
            .scalar(r#"sum(wsguard_call_duration_seconds_count{direction="in"})"#)
            .await,
        total as f64
    );
    let per_node = prometheus
        .by_instance(r#"sum by (instance) (wsguard_calls_total{direction="in"})"#)
        .await;
    let expected = BTreeMap::from([
        (a.addr.to_string(), sent_a.messages as f64),
        (b.addr.to_string(), sent_b.messages as f64),
    ]);
    assert_eq!(per_node, expected, "each node's own count");
    let up = prometheus.by_instance(r#"up{job="wsguard"}"#).await;
    let both_up = BTreeMap::from([(a.addr.to_string(), 1.0), (b.addr.to_string(), 1.0)]);
    assert_eq!(up, both_up, "both targets up");
    assert_eq!(
        prometheus.scalar("sum(wsguard_connections_total)").await,
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_names_only_metrics_a_node_exports() {
    let node = Node::start();
    exercise_every_layer(node.addr).await;
    let (status, text) = http_get(node.addr, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    let exported = exported_names(&text);

    let queries = dashboard_queries(&dashboard()).unwrap();
    let problems = unexported_metrics(&queries, &exported);
    assert!(
        problems.is_empty(),
        "the dashboard names metrics the node does not export:\n{}\nexported: {exported:?}",
        problems.join("\n")
    );
    // Not vacuous: the dashboard reads each family of figures.
    let named: BTreeSet<String> = queries
        .iter()
        .flat_map(|q| metric_names(&q.expr).unwrap())
        .collect();
    for family in [
        "wsguard_calls_total",
        "wsguard_call_duration_seconds_bucket",
        "wsguard_send_dropped_total",
        "wsguard_connections_active",
        "wsguard_sessions_live",
        "wsguard_sessions_refused_total",
    ] {
        assert!(named.contains(family), "the dashboard never reads {family}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_accepts_every_dashboard_query_and_finds_series() {
    let node = Node::start();
    let prometheus = Prometheus::start(&[node.addr]).await;
    exercise_every_layer(node.addr).await;

    let queries: Vec<(Query, String)> = dashboard_queries(&dashboard())
        .unwrap()
        .into_iter()
        .map(|q| {
            let promql = substitute_variables(&q.expr).unwrap_or_else(|e| panic!("{q}: {e}"));
            (q, promql)
        })
        .collect();
    // Rates need two samples in their window: poll until every query finds a series.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut empty = Vec::new();
        for (query, promql) in &queries {
            match prometheus.query(promql).await {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => empty.push(format!("{query}\n    as {promql}")),
                Err(e) => panic!("Prometheus refuses {query}\n    as {promql}: {e}"),
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queries that found no series:\n{}",
            empty.join("\n")
        );
        sleep(Duration::from_millis(250)).await;
    }
}

/// A child process, killed (and reaped) on drop: at the end of a test and when it panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `wsguard-node` process on a free loopback port, killed on drop.
struct Node {
    _process: KillOnDrop,
    addr: SocketAddr,
}

impl Node {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsguard-node"))
            .stdin(Stdio::piped()) // the node exits when this closes
            .stdout(Stdio::piped())
            .spawn()
            .expect("start wsguard-node");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let process = KillOnDrop(child);
        let line = rx.recv_timeout(WAIT).expect("wsguard-node starts in time");
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("wsguard-node said {line:?}, not `listening ADDR`"));
        Self {
            _process: process,
            addr,
        }
    }
}

/// What a load sent to one node.
#[derive(Debug, Clone, Copy)]
struct Sent {
    messages: u64,
    duplicates: u64,
}

/// Sends `unique` distinct texts on each of `connections` concurrent connections, the first
/// `duplicates` of them twice (the dedup window drops the second); returns once every call has
/// finished.
async fn load(
    addr: SocketAddr,
    node: &str,
    connections: u64,
    unique: u64,
    duplicates: u64,
) -> Sent {
    // The last message is unique, so its echo says every earlier call has finished (a connection
    // handles one message at a time).
    assert!(duplicates < unique);
    let runs = (0..connections).map(|c| async move {
        let mut client = connect(addr, "/ws").await;
        for i in 0..unique {
            let text = format!("{node}-{c}-{i}");
            client.send(WsMessage::text(text.clone())).await.unwrap();
            assert_eq!(next_text(&mut client).await, text);
            if i < duplicates {
                client.send(WsMessage::text(text)).await.unwrap();
            }
        }
        client.close(None).await.unwrap();
    });
    futures_util::future::join_all(runs).await;
    Sent {
        messages: connections * (unique + duplicates),
        duplicates: connections * duplicates,
    }
}

/// Messages with a duplicate through metrics, dedup and the breaker, and a `wsguard.v1` session:
/// every series the node registers is then exported.
async fn exercise_every_layer(addr: SocketAddr) {
    load(addr, "plain", 1, 3, 1).await;
    let (client, mut events) = Client::connect(format!("ws://{addr}/ws"), ClientOptions::default())
        .await
        .expect("session opened");
    client.send("in a session").await.expect("sent");
    loop {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("echo in time")
            .expect("events open");
        if let Event::Message { message, .. } = event {
            assert_eq!(message, Message::Text("in a session".into()));
            break;
        }
    }
    client.close().await;
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The metric names in Prometheus text exposition (histograms as `_bucket`, `_sum`, `_count`).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// A `prometheus` child process scraping the given nodes, with its data in a temporary directory;
/// killed on drop.
struct Prometheus {
    process: KillOnDrop,
    addr: SocketAddr,
    targets: usize,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port and waits until it is ready.
    async fn start(targets: &[SocketAddr]) -> Self {
        let mut dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, scrape_config(targets)).expect("write prometheus.yml");
        let binary = std::env::var_os("PROMETHEUS").unwrap_or_else(|| "prometheus".into());
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Another process may take the port between this probe and Prometheus's bind: retry.
            let addr = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free loopback port");
            let log = File::create(dir.path().join("prometheus.log")).expect("log file");
            let child = Command::new(&binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {binary:?} ({e}): install Debian's `prometheus` package \
                         (scripts/test.sh does), or set PROMETHEUS to its path"
                    )
                });
            let mut prometheus = Self {
                process: KillOnDrop(child),
                addr,
                targets: targets.len(),
                dir,
            };
            match prometheus.wait_ready().await {
                Ok(()) => return prometheus,
                Err(e) if attempt < 3 && prometheus.log().contains("address already in use") => {
                    eprintln!("prometheus: {e}; retrying on another port");
                    drop(prometheus.process);
                    dir = prometheus.dir;
                }
                Err(e) => panic!("{e}\nprometheus.log:\n{}", prometheus.log()),
            }
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.process.0.try_wait() {
                return Err(format!("prometheus exited at start ({status})"));
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && http_get(self.addr, "/-/ready").await.0 == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("prometheus not ready in time".to_owned());
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Waits until Prometheus has scraped every target `scrapes` times after `after` (Unix
    /// seconds): each scrape's samples are stamped with its start, so they count all that
    /// happened before `after`.
    async fn wait_for_scrapes_after(&self, after: f64, scrapes: usize) {
        let deadline = Instant::now() + WAIT;
        let latest = r#"timestamp(up{job="wsguard"})"#;
        let mut seen: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        loop {
            let result = self.query(latest).await.unwrap_or_else(|e| panic!("{e}"));
            for sample in &result {
                let at = sample_value(sample);
                let times = seen.entry(instance(sample)).or_default();
                if at > after && !times.contains(&at) {
                    times.push(at);
                }
            }
            if seen.len() == self.targets && seen.values().all(|times| times.len() >= scrapes) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not scrape every node {scrapes} time(s) after the load: {seen:?}\n\
                 prometheus.log:\n{}",
                self.log()
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// The result vector of an instant query, or what Prometheus answered instead.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = http_get(self.addr, &path).await;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if status != 200 || answer["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        match answer["data"]["result"].as_array() {
            Some(result) => Ok(result.clone()),
            None => Err(format!("not a vector: {body}")),
        }
    }

    /// The value of a query that yields one series.
    async fn scalar(&self, promql: &str) -> f64 {
        let result = self
            .query(promql)
            .await
            .unwrap_or_else(|e| panic!("{promql}: {e}"));
        assert_eq!(result.len(), 1, "{promql}: {result:?}");
        sample_value(&result[0])
    }

    /// The values of a query by `instance` label.
    async fn by_instance(&self, promql: &str) -> BTreeMap<String, f64> {
        let result = self
            .query(promql)
            .await
            .unwrap_or_else(|e| panic!("{promql}: {e}"));
        result
            .iter()
            .map(|sample| (instance(sample), sample_value(sample)))
            .collect()
    }
}

fn scrape_config(targets: &[SocketAddr]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  scrape_timeout: {SCRAPE_INTERVAL}\n\
         scrape_configs:\n  - job_name: wsguard\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    )
}

fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {sample}"))
}

fn instance(sample: &Value) -> String {
    sample["metric"]["instance"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `application/x-www-form-urlencoded` value encoding: everything but unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/wsguard.json")
}

fn dashboard() -> Value {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// One PromQL query of the dashboard and where it is.
#[derive(Debug, Clone, PartialEq)]
struct Query {
    place: String,
    expr: String,
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.place, self.expr)
    }
}

/// Every query of a Grafana dashboard: each panel's targets (panels inside rows included) and
/// each query variable (`label_values(SELECTOR, LABEL)` checked as `SELECTOR`).
fn dashboard_queries(dashboard: &Value) -> Result<Vec<Query>, String> {
    let mut queries = Vec::new();
    let panels = dashboard["panels"]
        .as_array()
        .ok_or("the dashboard has no `panels`")?;
    collect_panel_queries(panels, &mut queries)?;
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or("?");
        let query = match &variable["query"] {
            Value::String(q) => q.as_str(),
            q => q["query"].as_str().unwrap_or_default(),
        };
        let selector = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|args| args.rsplit_once(','))
            .map(|(selector, _label)| selector.trim())
            .ok_or_else(|| {
                format!("variable {name}: expected label_values(SELECTOR, LABEL), got {query:?}")
            })?;
        queries.push(Query {
            place: format!("variable {name}"),
            expr: selector.to_owned(),
        });
    }
    Ok(queries)
}

fn collect_panel_queries(panels: &[Value], queries: &mut Vec<Query>) -> Result<(), String> {
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        if panel["type"] == "row" {
            // A collapsed row keeps its panels inside.
            let inner = panel["panels"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            collect_panel_queries(inner, queries)?;
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("panel {title:?} has no queries"))?;
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .ok_or_else(|| format!("panel {title:?} has a target without `expr`"))?;
            queries.push(Query {
                place: format!("panel {title:?}"),
                expr: expr.to_owned(),
            });
        }
    }
    Ok(())
}

/// The queries' metric names that are not in `exported`, and expressions that cannot be read.
fn unexported_metrics(queries: &[Query], exported: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for query in queries {
        match metric_names(&query.expr) {
            Ok(names) => problems.extend(
                names
                    .into_iter()
                    .filter(|name| !exported.contains(name))
                    .map(|name| format!("{query}\n    names `{name}`")),
            ),
            Err(e) => problems.push(format!("{query}\n    cannot be read: {e}")),
        }
    }
    problems
}

/// The dashboard's variables as a query over every node and route would have them.
fn substitute_variables(expr: &str) -> Result<String, String> {
    const VALUES: [(&str, &str); 5] = [
        ("__rate_interval", "2s"),
        ("__interval", "1s"),
        ("__range", "1m"),
        ("instance", ".*"),
        ("route", ".*"),
    ];
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => braced
                .split_once('}')
                .ok_or_else(|| format!("unclosed ${{ in {expr:?}"))?,
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                after.split_at(end)
            }
        };
        let value = VALUES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("unknown variable ${name} in {expr:?}"))?;
        out.push_str(value);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

/// PromQL words that are never metric names (compared in lower case).
const KEYWORDS: [&str; 8] = [
    "and", "or", "unless", "atan2", "offset", "bool", "inf", "nan",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names `expr` selects: identifiers that are not functions or aggregations (followed
/// by `(`, or by `by`/`without`), keywords, label names (in `{...}` and in label lists) or parts
/// of strings, numbers, durations, ranges and Grafana variables. `{__name__="m"}` names `m`.
fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut in_braces = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i)?;
        } else if c == '{' {
            if in_braces {
                return Err(format!("`{{` inside a selector at {i}"));
            }
            in_braces = true;
            i += 1;
        } else if c == '}' {
            if !in_braces {
                return Err(format!("unbalanced `}}` at {i}"));
            }
            in_braces = false;
            i += 1;
        } else if c == '[' {
            // A range or subquery: durations and variables only.
            i = skip_past(&chars, i, ']')?;
        } else if c == ']' || (c == ')' && in_braces) {
            return Err(format!("unbalanced `{c}` at {i}"));
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_past(&chars, i, '}')?;
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers (1e3, 0x1f, .5) and durations (5m, 1h30m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if in_braces {
                if word == "__name__" {
                    let (name, next) = name_matcher(&chars, i)?;
                    names.insert(name);
                    i = next;
                }
                continue;
            }
            let next = skip_whitespace(&chars, i);
            let lower = word.to_ascii_lowercase();
            if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = skip_past(&chars, next, ')')?;
                }
            } else if KEYWORDS.contains(&lower.as_str()) || chars.get(next) == Some(&'(') {
                // A keyword, or a function or aggregation called here.
            } else if next_word(&chars, next).is_some_and(|w| w == "by" || w == "without") {
                // An aggregation with its grouping first: `sum by (le) (...)`.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    if in_braces {
        return Err("unclosed `{`".to_owned());
    }
    Ok(names)
}

/// Past the string opening at `start`.
fn skip_string(chars: &[char], start: usize) -> Result<usize, String> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(format!("unterminated string at {start}"))
}

/// Past the first `close` after `start`.
fn skip_past(chars: &[char], start: usize, close: char) -> Result<usize, String> {
    chars[start..]
        .iter()
        .position(|&c| c == close)
        .map(|offset| start + offset + 1)
        .ok_or_else(|| format!("`{}` at {start} is not closed by `{close}`", chars[start]))
}

fn skip_whitespace(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

fn next_word(chars: &[char], start: usize) -> Option<String> {
    let word: String = chars[start.min(chars.len())..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
        .collect();
    (!word.is_empty()).then(|| word.to_ascii_lowercase())
}

/// After `__name__` in a selector: `= "name"` gives the name; other operators cannot be checked.
fn name_matcher(chars: &[char], after: usize) -> Result<(String, usize), String> {
    let i = skip_whitespace(chars, after);
    let op_end = chars[i..]
        .iter()
        .position(|c| !matches!(c, '=' | '!' | '~'))
        .map_or(chars.len(), |offset| i + offset);
    let op: String = chars[i..op_end].iter().collect();
    if op != "=" {
        return Err(format!(
            "`__name__{op}` matches names by pattern: cannot be checked"
        ));
    }
    let start = skip_whitespace(chars, op_end);
    if !matches!(chars.get(start), Some('"' | '\'' | '`')) {
        return Err("`__name__=` without a string".to_owned());
    }
    let end = skip_string(chars, start)?;
    Ok((chars[start + 1..end - 1].iter().collect(), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .into_iter()
            .collect()
    }

    #[test]
    fn metric_names_skip_functions_aggregations_labels_and_variables() {
        assert_eq!(
            names(
                r#"histogram_quantile(0.99, sum by (le, route) (rate(wsguard_call_duration_seconds_bucket{instance=~"$instance", route=~"$route"}[$__rate_interval])))"#
            ),
            ["wsguard_call_duration_seconds_bucket"]
        );
        assert_eq!(
            names("sum without (outcome) (rate(a_total[5m])) / on (route) group_left sum(b_total)"),
            ["a_total", "b_total"]
        );
        assert_eq!(
            names("x * on(instance) group_left(route) y offset 5m"),
            ["x", "y"]
        );
        assert_eq!(
            names(r#"sum by(le)(rate(m[1m])) + sum(n) by (le) + count_values("le", o)"#),
            ["m", "n", "o"]
        );
        assert_eq!(
            names(r#"label_replace(up{job="sum"}, "dst", "$1", "src", "(rate(x).*)")"#),
            ["up"]
        );
        assert_eq!(
            names(r#"{__name__="wsguard_calls_total", route="/ws"} or {route='by'}"#),
            ["wsguard_calls_total"]
        );
        assert_eq!(
            names("max_over_time(p[10m:30s]) > bool 1e3 and q or -Inf unless NaN * 0x1F + .5"),
            ["p", "q"]
        );
        assert_eq!(
            names("topk(5, m) @ end() # rate(commented_out[1m])\n + job:wsguard_calls:rate5m"),
            ["job:wsguard_calls:rate5m", "m"]
        );
        assert_eq!(names(r#"sum (m{a="}{\"x"}) AND BY"#), ["m"]);
        assert_eq!(names("vector(1) + time()"), Vec::<String>::new());
        assert_eq!(names("a atan2 b"), ["a", "b"]);
    }

    #[test]
    fn unreadable_expressions_are_errors_not_guesses() {
        for bad in [
            r#"m{route="x""#,
            "rate(m[5m)",
            r#"m{a="b"}}"#,
            r#"{__name__=~"wsguard_.*"}"#,
            r#""unterminated"#,
        ] {
            assert!(
                metric_names(bad).is_err(),
                "{bad} read as {:?}",
                metric_names(bad)
            );
        }
    }

    #[test]
    fn checker_reports_a_metric_the_node_does_not_export() {
        let exported = exported_names(
            "# TYPE wsguard_calls_total counter\n\
             wsguard_calls_total{route=\"/ws\",direction=\"in\",outcome=\"ok\"} 3\n\
             wsguard_call_duration_seconds_bucket{le=\"0.1\"} 1\n\
             wsguard_connections_active 0\n",
        );
        let query = |expr: &str| Query {
            place: "panel \"test\"".to_owned(),
            expr: expr.to_owned(),
        };
        let good = [
            query(r#"sum by (route) (rate(wsguard_calls_total{outcome="ok"}[$__rate_interval]))"#),
            query("histogram_quantile(0.5, rate(wsguard_call_duration_seconds_bucket[1m]))"),
        ];
        assert_eq!(unexported_metrics(&good, &exported), Vec::<String>::new());

        let bad = [
            query("sum(rate(wsguard_calls_totl[1m]))"),
            query("wsguard_call_duration_seconds"), // a histogram's base name is not a series
            query("wsguard_connections_active{"),
        ];
        let problems = unexported_metrics(&bad, &exported);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0].contains("`wsguard_calls_totl`"),
            "{problems:#?}"
        );
        assert!(
            problems[1].contains("`wsguard_call_duration_seconds`"),
            "{problems:#?}"
        );
        assert!(problems[2].contains("cannot be read"), "{problems:#?}");
    }

    #[test]
    fn dashboard_queries_include_rows_and_variables_and_refuse_empty_panels() {
        let dashboard = serde_json::json!({
            "panels": [
                { "type": "timeseries", "title": "A", "targets": [{ "expr": "a" }] },
                { "type": "row", "title": "R", "panels": [
                    { "type": "stat", "title": "B", "targets": [{ "expr": "b" }, { "expr": "c" }] }
                ] }
            ],
            "templating": { "list": [
                { "type": "datasource", "name": "datasource", "query": "prometheus" },
                { "type": "query", "name": "route", "query": { "query": "label_values(d{x=\"1\"}, route)" } }
            ] }
        });
        let exprs: Vec<String> = dashboard_queries(&dashboard)
            .unwrap()
            .into_iter()
            .map(|q| q.expr)
            .collect();
        assert_eq!(exprs, ["a", "b", "c", r#"d{x="1"}"#]);

        let empty = serde_json::json!({ "panels": [{ "type": "timeseries", "title": "E" }] });
        assert!(dashboard_queries(&empty).is_err());
    }

    #[test]
    fn variables_are_substituted_and_unknown_ones_refused() {
        assert_eq!(
            substitute_variables(
                r#"rate(m{instance=~"$instance",route=~"${route}"}[$__rate_interval])"#
            )
            .unwrap(),
            r#"rate(m{instance=~".*",route=~".*"}[2s])"#
        );
        assert!(substitute_variables("rate(m[$window])").is_err());
    }
}
