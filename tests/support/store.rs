//! Object stores for the recording copier's tests: moto's S3 server (the
//! real S3 REST API, from PyPI) read back through boto3 (tests/py/s3.py),
//! and a `Gate` in front of any TCP service that can be shut to play an
//! outage and opened again.

use super::{free_port, stack, stdout_of};
use serde_json::Value;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A moto S3 server owned by one test, with one bucket.
pub struct S3 {
    child: Child,
    pub port: u16,
    pub bucket: String,
}

impl S3 {
    /// Starts `moto_server` (installed next to the tests' Python) on a free
    /// port and creates `bucket`.
    pub fn start(bucket: &str) -> S3 {
        let python = PathBuf::from(stack().python);
        let server = python.with_file_name("moto_server");
        let port = free_port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {}: {error}", server.display()));
        wait_for_port(port, "moto_server");
        let s3 = S3 {
            child,
            port,
            bucket: bucket.to_owned(),
        };
        s3.boto3(&["create-bucket"]);
        s3
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment that points the bridge's S3 client (object_store's
    /// `AmazonS3Builder::from_env`) at `endpoint`, with moto's test keys.
    pub fn bridge_env(endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", endpoint),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
    }

    /// Every key in the bucket.
    pub fn keys(&self) -> Vec<String> {
        serde_json::from_value(self.boto3(&["keys"])).unwrap()
    }

    /// An object's size and SHA-256, read back through boto3.
    pub fn object(&self, key: &str) -> (u64, String) {
        let object = self.boto3(&["object", "--key", key]);
        (
            object["bytes"].as_u64().unwrap(),
            object["sha256"].as_str().unwrap().to_owned(),
        )
    }

    fn boto3(&self, args: &[&str]) -> Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/s3.py");
        let out = stdout_of(
            Command::new(stack().python)
                .arg(script)
                .args(["--endpoint", &self.endpoint(), "--bucket", &self.bucket])
                .args(args),
        );
        serde_json::from_str(&out).unwrap()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{name} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP forwarder to `target` that can be shut: shut, it cuts every open
/// connection and closes each new one at once, as a store that is down.
pub struct Gate {
    pub port: u16,
    open: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    /// Milliseconds each chunk waits before it is passed on, each way.
    delay_ms: Arc<AtomicU64>,
}

impl Gate {
    pub fn start(target: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let gate = Gate {
            port,
            open: Arc::new(AtomicBool::new(true)),
            live: Arc::new(Mutex::new(Vec::new())),
            delay_ms: Arc::new(AtomicU64::new(0)),
        };
        let (open, live) = (Arc::clone(&gate.open), Arc::clone(&gate.live));
        let delay = Arc::clone(&gate.delay_ms);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if !open.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut live = live.lock().unwrap();
                live.push(client.try_clone().unwrap());
                live.push(server.try_clone().unwrap());
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Arc::clone(&delay),
                );
                pipe(server, client, Arc::clone(&delay));
            }
        });
        gate
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection through the gate and refuses new ones.
    pub fn shut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for stream in self.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Holds every chunk `delay` before passing it on, each way: a slow
    /// network or an overloaded server.
    pub fn slow_down(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, delay_ms: Arc<AtomicU64>) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read) = from.read(&mut buffer) {
            if read == 0 {
                break;
            }
            let delay = delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
            if to.write_all(&buffer[..read]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
