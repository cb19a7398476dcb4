//! Test harness: spawns the real `superfone-bridge` binary against the real
//! broker and registry named by the environment (scripts/test sets it up), and
//! reads topics back through Confluent's Python client (tests/py/consume.py).
//!
//! Every bridge gets its own topic prefix, so tests never read each other's records.
#![allow(dead_code, unreachable_pub)]

pub mod faults;
pub mod source;
pub mod store;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SECRET: &str = "test-secret-current";

pub struct Stack {
    pub brokers: String,
    pub registry_url: String,
    pub python: String,
}

pub fn stack() -> Stack {
    let var = |name: &str| {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} is not set: run the tests with scripts/test"))
    };
    Stack {
        brokers: var("SUPERFONE_TEST_BROKERS"),
        registry_url: var("SUPERFONE_TEST_REGISTRY_URL"),
        python: std::env::var("SUPERFONE_TEST_PYTHON").unwrap_or_else(|_| "python3".into()),
    }
}

pub fn fixture(event: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/{}.json", event.to_lowercase()));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

pub fn unique_prefix() -> String {
    // The tail of a v7 UUID is random; its head is the clock.
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("t{}.superfone.", &id[id.len() - 12..])
}

/// Options for one bridge process.
pub struct BridgeOptions {
    pub prefix: String,
    /// Environment for the process: secrets, and `SUPERFONE_BRIDGE_*` config overrides.
    pub env: Vec<(String, String)>,
    /// Spool directory; a fresh temporary one unless set (to restart on a spool).
    pub spool_dir: Option<PathBuf>,
    /// Broker address; the shared test broker unless set.
    pub brokers: Option<String>,
    /// Schema registry URL; the shared test registry unless set.
    pub registry_url: Option<String>,
    /// The subcommand: `serve` unless set (e.g. `recordings run`).
    pub command: Vec<String>,
    /// Name the config file by `SUPERFONE_BRIDGE_CONFIG`, as a container
    /// would, instead of by `--config`.
    pub config_in_env: bool,
    /// `start` returns once the start-up checks are done (they run behind
    /// the open listener), so the first events find the topics and schema
    /// ids. Off for tests of a start with its dependencies down.
    pub wait_for_checks: bool,
}

impl Default for BridgeOptions {
    fn default() -> Self {
        BridgeOptions {
            prefix: unique_prefix(),
            env: vec![("SUPERFONE_AUTH_SECRETS".into(), SECRET.into())],
            spool_dir: None,
            brokers: None,
            registry_url: None,
            command: vec!["serve".into()],
            config_in_env: false,
            wait_for_checks: true,
        }
    }
}

impl BridgeOptions {
    /// Adds a `SUPERFONE_BRIDGE_*` override, e.g. `with("SERVER__MAX_BODY_BYTES", "2048")`.
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.env
            .push((format!("SUPERFONE_BRIDGE_{key}"), value.to_string()));
        self
    }

    /// `start` returns as soon as the listener is open.
    pub fn without_waiting_for_checks(mut self) -> Self {
        self.wait_for_checks = false;
        self
    }
}

pub struct Bridge {
    child: Child,
    pub addr: String,
    pub admin_addr: String,
    pub prefix: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// Waits (at most 30 s) for the bridge's "start-up checks done" line, or
/// its exit (a refusal, which the test then sees).
fn wait_for_start_up_checks(child: &mut Child, logs: &Logs) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let done = logs
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains("start-up checks done"));
        if done || child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A bridge that refused to start.
pub struct StartFailure {
    pub status: ExitStatus,
    pub logs: String,
}

/// Log lines collected from the bridge's stderr.
type Logs = Arc<Mutex<Vec<String>>>;
/// The ingest and admin addresses from the bridge's "ready" line.
type ReadyAddrs = std::sync::mpsc::Receiver<(String, String)>;

fn spawn(options: &BridgeOptions, dir: &Path) -> (Child, Logs, ReadyAddrs) {
    let stack = stack();
    let config = dir.join("bridge.toml");
    let mut file = std::fs::File::create(&config).unwrap();
    write!(
        file,
        "[server]\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"{}\"\n[registry]\nurl = \"{}\"\n[topics]\nprefix = \"{}\"\n[spool]\ndir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\nfilter = \"info\"\n",
        options.brokers.as_deref().unwrap_or(&stack.brokers),
        options.registry_url.as_deref().unwrap_or(&stack.registry_url),
        options.prefix,
        options.spool_dir.clone().unwrap_or_else(|| dir.join("spool")).display()
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_superfone-bridge"));
    if options.config_in_env {
        command.env("SUPERFONE_BRIDGE_CONFIG", &config);
    } else {
        command
            .args(["--config", config.to_str().unwrap()])
            .env_remove("SUPERFONE_BRIDGE_CONFIG");
    }
    command
        .args(&options.command)
        .env_remove("RUST_LOG")
        .env_remove("SUPERFONE_AUTH_SECRETS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in &options.env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn superfone-bridge");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&logs);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(json) = serde_json::from_str::<Value>(&line) {
                if json["fields"]["message"] == "ready" {
                    let field =
                        |name: &str| json["fields"][name].as_str().unwrap_or_default().to_owned();
                    let _ = ready_tx.send((field("ingest_addr"), field("admin_addr")));
                }
            }
            sink.lock().unwrap().push(line);
        }
    });
    (child, logs, ready_rx)
}

impl Bridge {
    pub fn start(options: BridgeOptions) -> Bridge {
        match Bridge::try_start(options) {
            Ok(bridge) => bridge,
            Err(failure) => panic!(
                "bridge failed to start ({}):\n{}",
                failure.status, failure.logs
            ),
        }
    }

    pub fn try_start(options: BridgeOptions) -> Result<Bridge, StartFailure> {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, logs, ready) = spawn(&options, dir.path());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((addr, admin_addr)) = ready.recv_timeout(Duration::from_millis(50)) {
                if options.wait_for_checks {
                    wait_for_start_up_checks(&mut child, &logs);
                }
                return Ok(Bridge {
                    child,
                    addr,
                    admin_addr,
                    prefix: options.prefix,
                    logs,
                    _dir: dir,
                });
            }
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let logs = logs.lock().unwrap().join("\n");
                return Err(StartFailure { status, logs });
            }
            assert!(Instant::now() < deadline, "bridge not ready within 60 s");
        }
    }

    /// Starts a bridge that must stop by itself (a refusal its start-up
    /// checks find once the listeners are open), and waits for its exit.
    pub fn run_until_it_stops(options: BridgeOptions) -> StartFailure {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, logs, _ready) = spawn(&options, dir.path());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let logs = logs.lock().unwrap().join("\n");
                return StartFailure { status, logs };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the bridge still runs after 60 s:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    pub fn ingest_url(&self) -> String {
        self.url("/superfone/events")
    }

    pub fn topic(&self, event: &str) -> String {
        format!("{}{}", self.prefix, event.to_lowercase())
    }

    pub fn dead_letter_topic(&self) -> String {
        format!("{}dead_letter", self.prefix)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, as Kubernetes does.
    pub fn terminate(&self) {
        signal(self.pid(), "-TERM");
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The log so far, once it holds `needle`, or after 10 s: the bridge's
    /// log lines are written by a thread of their own, a moment after the
    /// answer that followed them.
    pub fn log_text_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.log_text();
            if text.contains(needle) || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts a JSON value (or raw bytes) with the current secret.
pub async fn post(
    client: &reqwest::Client,
    bridge: &Bridge,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    post_with(
        client,
        &bridge.ingest_url(),
        body,
        Some(&format!("Bearer {SECRET}")),
        &[],
    )
    .await
}

pub async fn post_with(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    authorization: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request reaches the bridge");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The bridge's (any process's) peak resident memory so far, from VmHWM.
pub fn peak_rss_mib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:") / 1024
}

/// The bridge's (any process's) resident memory now, from VmRSS.
pub fn rss_mib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:") / 1024
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap()
}

/// Reads a topic of the shared test broker from the beginning through
/// Confluent's Python client. `raw` skips Avro decoding (dead letters).
pub fn consume(topic: &str, expect: usize, raw: bool) -> Vec<Value> {
    let stack = stack();
    let values = if raw { Values::Raw } else { Values::Decoded };
    read_topic(
        &stack.brokers,
        &stack.registry_url,
        topic,
        expect,
        values,
        "1.0",
        "60",
    )
}

/// Reads a topic from `brokers` (a test's own broker), patient enough for replays.
pub fn consume_from(brokers: &str, topic: &str, expect: usize) -> Vec<Value> {
    read_topic(
        brokers,
        &stack().registry_url,
        topic,
        expect,
        Values::Decoded,
        "2.0",
        "180",
    )
}

/// Like `consume_from`, decoding with the schemas of `registry` (a test's own).
pub fn consume_with(brokers: &str, registry: &str, topic: &str, expect: usize) -> Vec<Value> {
    read_topic(
        brokers,
        registry,
        topic,
        expect,
        Values::Decoded,
        "2.0",
        "180",
    )
}

/// Counts a topic's records (keys and headers only, values not decoded).
pub fn count_records(brokers: &str, topic: &str, expect: usize) -> usize {
    read_topic(brokers, "", topic, expect, Values::Skipped, "2.0", "300").len()
}

/// How read_topic prints record values.
enum Values {
    /// Decoded by Confluent's AvroDeserializer.
    Decoded,
    /// As text (dead letters).
    Raw,
    /// Not at all (counting large records).
    Skipped,
}

/// Runs tests/py/consume.py: stops after `expect` records and `idle` seconds
/// without more, or at `timeout`; returns the records as JSON.
fn read_topic(
    brokers: &str,
    registry: &str,
    topic: &str,
    expect: usize,
    values: Values,
    idle: &str,
    timeout: &str,
) -> Vec<Value> {
    let stack = stack();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/consume.py");
    let mut command = Command::new(&stack.python);
    command
        .arg(script)
        .args([
            "--brokers",
            brokers,
            "--registry",
            registry,
            "--topic",
            topic,
        ])
        .args([
            "--expect",
            &expect.to_string(),
            "--idle",
            idle,
            "--timeout",
            timeout,
        ]);
    match values {
        Values::Decoded => {}
        Values::Raw => {
            command.arg("--raw");
        }
        Values::Skipped => {
            command.arg("--no-value");
        }
    }
    stdout_of(&mut command)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Runs a command to completion; asserts it succeeded (showing its stderr
/// otherwise) and returns its stdout.
pub fn stdout_of(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Sends a signal by pid (`signal(123, "-STOP")`), without unsafe code
/// and without procps's `kill` binary (a minimal Debian has none).
pub fn signal(pid: u32, signal: &str) {
    use rustix::process::{kill_process, Pid, Signal};
    let number = match signal {
        "-TERM" => Signal::TERM,
        "-KILL" => Signal::KILL,
        "-STOP" => Signal::STOP,
        "-CONT" => Signal::CONT,
        "-INT" => Signal::INT,
        other => panic!("unknown signal {other}"),
    };
    let pid = Pid::from_raw(pid as i32).expect("a process id is positive");
    kill_process(pid, number).unwrap_or_else(|error| panic!("kill {signal} {pid:?}: {error}"));
}

/// A tansu broker owned by one test (memory storage: a restart starts empty).
pub struct Broker {
    child: Child,
    pub port: u16,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    pub fn start(port: u16) -> Broker {
        Broker::start_advertising(port, port)
    }

    /// A broker on `port` that tells clients to connect to `advertised`
    /// (a `store::Gate` in front of it, that can cut the connections).
    pub fn start_advertising(port: u16, advertised: u16) -> Broker {
        let tansu = std::env::var("TANSU_BIN")
            .expect("TANSU_BIN is not set: run the tests with scripts/test");
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised}");
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tansu");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { child, port }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes the process (SIGSTOP): connections hang, nothing is answered.
    pub fn freeze(&self) {
        signal(self.pid(), "-STOP");
    }

    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The project's test schema registry owned by one test (in memory: it
/// starts empty), built next to the bridge by scripts/test.
pub struct Registry {
    child: Child,
    pub port: u16,
}

impl Registry {
    pub fn start(port: u16) -> Registry {
        let binary = Path::new(env!("CARGO_BIN_EXE_superfone-bridge"))
            .with_file_name("superfone-test-schema-registry");
        let child = Command::new(&binary)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {}: {error}", binary.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Freezes the process (SIGSTOP): connections hang, nothing is answered.
    pub fn freeze(&self) {
        signal(self.child.id(), "-STOP");
    }

    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs an admin endpoint (`/readyz`, `/status`): status and JSON body.
pub async fn admin_get(client: &reqwest::Client, bridge: &Bridge, path: &str) -> (u16, Value) {
    let response = client.get(bridge.admin_url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The bridge's Prometheus exposition (`/metrics` on the admin listener).
pub async fn metrics_text(client: &reqwest::Client, bridge: &Bridge) -> String {
    let response = client
        .get(bridge.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    response.text().await.unwrap()
}

/// Polls an admin endpoint until `done` holds for its answer (60 s at most).
pub async fn wait_for_admin(
    client: &reqwest::Client,
    bridge: &Bridge,
    path: &str,
    what: &str,
    done: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = admin_get(client, bridge, path).await;
        if done(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never showed {what}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a load run saw for one event.
#[derive(Debug, Clone)]
pub struct Answer {
    pub contact: i64,
    pub sequence: i64,
    /// HTTP status, or `None` when no response came (connection refused/reset).
    pub status: Option<u16>,
    pub body: Value,
    pub connect_error: bool,
    pub latency: Duration,
}

impl Answer {
    pub fn accepted(&self) -> bool {
        matches!(self.status, Some(200 | 202))
    }
}

/// A TASK_CHANGE event unique to (contact, sequence), keyed by contact.
pub fn sequenced_event(contact: i64, sequence: i64) -> Value {
    let mut event = fixture("TASK_CHANGE");
    event["contact_id"] = serde_json::json!(contact);
    event["task_id"] = serde_json::json!(100_000 + contact);
    event["updated_value"] = serde_json::json!(sequence);
    event
}

/// Posts `per_contact` events for each of `contacts` contacts, one contact's
/// events in sequence (as Superfone sends them), `workers` contacts at a time.
/// `on_progress` is called with the number of events answered so far.
pub async fn stream_events(
    url: String,
    contacts: std::ops::Range<i64>,
    per_contact: i64,
    workers: usize,
    on_progress: Arc<dyn Fn(usize) + Send + Sync>,
) -> Vec<Answer> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(workers)
        .build()
        .unwrap();
    let queue = Arc::new(Mutex::new(contacts.collect::<Vec<_>>()));
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, url, queue, answered, on_progress) = (
            client.clone(),
            url.clone(),
            queue.clone(),
            answered.clone(),
            on_progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            loop {
                let Some(contact) = queue.lock().unwrap().pop() else {
                    break;
                };
                for sequence in 0..per_contact {
                    let started = Instant::now();
                    let result = client
                        .post(&url)
                        .header("authorization", format!("Bearer {SECRET}"))
                        .header("content-type", "application/json")
                        .body(sequenced_event(contact, sequence).to_string())
                        .send()
                        .await;
                    let (status, body, connect_error) = match result {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let body = response.json::<Value>().await.unwrap_or(Value::Null);
                            (Some(status), body, false)
                        }
                        Err(error) => (None, Value::String(error.to_string()), error.is_connect()),
                    };
                    answers.push(Answer {
                        contact,
                        sequence,
                        status,
                        body,
                        connect_error,
                        latency: started.elapsed(),
                    });
                    on_progress(answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
                }
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.unwrap());
    }
    answers
}

/// A real OTLP receiver (rotel, from PyPI) printing every span it receives.
pub struct Collector {
    child: Child,
    pub grpc_port: u16,
    pub http_port: u16,
    output: Arc<Mutex<String>>,
}

/// One span as the collector printed it.
#[derive(Debug, Clone, Default)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub parent_id: String,
    pub span_id: String,
    pub name: String,
    pub kind: String,
    pub attributes: std::collections::HashMap<String, String>,
}

impl Collector {
    pub fn start() -> Collector {
        let python = stack().python;
        let agent = stdout_of(Command::new(&python).args([
            "-c",
            "import rotel,pathlib;print(pathlib.Path(rotel.__file__).parent/'rotel-agent')",
        ]))
        .trim()
        .to_owned();
        let (grpc_port, http_port) = (free_port(), free_port());
        let mut child = Command::new(agent)
            .args(["start", "--exporter", "blackhole", "--debug-log", "traces"])
            .args(["--debug-log-verbosity", "detailed"])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rotel-agent");
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::new(Mutex::new(String::new()));
        let writer = Arc::clone(&sink);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut text = writer.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err() {
            assert!(Instant::now() < deadline, "rotel did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Collector {
            child,
            grpc_port,
            http_port,
            output: sink,
        }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let text = self.output.lock().unwrap().clone();
        let mut spans = Vec::new();
        let mut current: Option<ReceivedSpan> = None;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("Span #") {
                spans.extend(current.take());
                current = Some(ReceivedSpan::default());
                continue;
            }
            if line.starts_with("ResourceSpans #") || line.starts_with("ScopeSpans #") {
                spans.extend(current.take());
                continue;
            }
            let Some(span) = current.as_mut() else {
                continue;
            };
            let value = |line: &str| {
                line.split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
                    .unwrap_or_default()
            };
            if line.starts_with("Trace ID") {
                span.trace_id = value(line);
            } else if line.starts_with("Parent ID") {
                span.parent_id = value(line);
            } else if line.starts_with("ID ") {
                span.span_id = value(line);
            } else if line.starts_with("Name ") {
                span.name = value(line);
            } else if line.starts_with("Kind ") {
                span.kind = value(line);
            } else if let Some(attribute) = line.strip_prefix("-> ") {
                if let Some((key, typed)) = attribute.split_once(": ") {
                    // Str(x), Int(5), Bool(true)
                    let inner = typed
                        .split_once('(')
                        .map(|(_, v)| v.trim_end_matches(')'))
                        .unwrap_or(typed);
                    span.attributes.insert(key.to_owned(), inner.to_owned());
                }
            }
        }
        spans.extend(current);
        spans
    }

    /// Everything the collector printed: every span and attribute received.
    pub fn text(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until a span matching `predicate` has arrived.
    pub fn wait_for(&self, what: &str, predicate: impl Fn(&ReceivedSpan) -> bool) -> ReceivedSpan {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(span) = self.spans().into_iter().find(|s| predicate(s)) {
                return span;
            }
            assert!(
                Instant::now() < deadline,
                "no span {what} arrived; got {:?}",
                self.spans()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
