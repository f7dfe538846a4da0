//! The real `synchronizer` binary ([`crate::paths::binary`]) running `run` with an
//! `[http]` section on a free loopback port, its configuration and data in a temporary
//! directory, its log collected; and the ways the tests talk to it: a real HTTP client
//! (reqwest) and raw TCP (for what a client library would hide: one connection per
//! request, `Connection: close`, so that no idle pooled connection stays open).
//!
//! Used by `tests/tests/http.rs` (the HTTP API) and `tests/tests/http_limits.rs` (its
//! connection limits).

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::paths::{binary, plugins_dir};
use crate::sys::free_port;

/// What a host runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Setup<'a> {
    /// `[[instances]]` tables, with `{data}` standing for the data directory (quoted).
    pub instances: &'a str,
    /// The text of `data/rack.yaml`, written before the host starts.
    pub data: &'a str,
    /// Extra lines of the `[http]` table.
    pub http: &'a str,
    /// Extra environment (`RUST_LOG` is unset unless given here).
    pub env: &'a [(&'a str, &'a str)],
    /// Extra arguments before `run`.
    pub args: &'a [&'a str],
}

/// A running `synchronizer run` with the HTTP API; killed when dropped (unless
/// [`Host::stop`]ped).
pub struct Host {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    stderr: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl Host {
    /// Writes the config (`plugins_dir` the build's) and the data, and starts the binary;
    /// does not wait for it ([`Host::alive`], [`Host::ready`]).
    pub fn start(setup: Setup<'_>) -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        std::fs::write(data.join("rack.yaml"), setup.data).expect("write yaml");
        let port = free_port();
        let instances = setup
            .instances
            .replace("{data}", &format!("{:?}", data.display().to_string()));
        let config = format!(
            "plugins_dir = {:?}\n\n{instances}\n[http]\nlisten = \"127.0.0.1:{port}\"\n{}\n",
            plugins_dir().display().to_string(),
            setup.http,
        );
        let file = dir.path().join("sync.toml");
        std::fs::write(&file, config).expect("write config");
        let mut cmd = Command::new(binary());
        cmd.args(setup.args)
            .args(["run", "--config"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        for (k, v) in setup.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn synchronizer");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Host {
            child: Some(child),
            dir,
            port,
            stderr,
            http: reqwest::Client::new(),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The API's address.
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The URL of `path` (with its query).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// The HTTP client of this host's tests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The temporary directory: `sync.toml`, `data/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// The log so far (stderr).
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (20 s at most) until `/healthz` answers, which must be a 200.
    pub async fn alive(&self) {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(answer) = self.get("/healthz").await
                && !answer.is_empty()
            {
                assert!(
                    answer.starts_with("HTTP/1.1 200"),
                    "/healthz: {answer}\nlog:\n{}",
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < end,
                "the HTTP API never answered; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `/readyz` says ready.
    pub async fn ready(&self) {
        self.alive().await;
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.http.get(self.url("/readyz")).send().await.unwrap();
            if r.status() == 200 {
                return;
            }
            assert!(Instant::now() < end, "never ready; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `GET path` with the HTTP client: the status and the JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.expect("a JSON body"))
    }

    /// Replaces `data/rack.yaml` atomically (the plugin never reads half a file).
    pub fn write_yaml(&self, text: &str) {
        let tmp = self.dir().join("rack.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir().join("data/rack.yaml")).unwrap();
    }

    /// Waits until the current view shows `key` with `state` (`None`: absent).
    pub async fn view_shows(&self, key: &str, state: Option<&str>) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, v) = self.get_json("/v1/entities").await;
            let found = v
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["key"] == key)
                .map(|e| e["state"].as_str().unwrap_or("").to_owned());
            if found.as_deref() == state {
                return;
            }
            assert!(Instant::now() < end, "{key} never became {state:?}: {v}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The server's open file descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// One request on a new TCP connection (`Connection: close`): the whole answer.
    pub async fn get(&self, path: &str) -> std::io::Result<String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        self.raw(request.as_bytes()).await
    }

    /// `bytes` on a new TCP connection; everything read until the server closes (within
    /// 5 s).
    pub async fn raw(&self, bytes: &[u8]) -> std::io::Result<String> {
        let mut conn = TcpStream::connect(self.addr()).await?;
        conn.write_all(bytes).await?;
        let mut out = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await {
            Ok(r) => r.map(|_| String::from_utf8_lossy(&out).into_owned()),
            Err(_) => Err(std::io::Error::other("no end within 5 s")),
        }
    }

    /// [`Host::get`], retried (bounded) while the connection is refused: the answer and
    /// how many tries were refused.
    pub async fn get_retry(&self, path: &str) -> (String, usize) {
        let end = Instant::now() + Duration::from_secs(2);
        let mut refused = 0;
        loop {
            match self.get(path).await {
                Ok(a) if !a.is_empty() => return (a, refused),
                r => assert!(Instant::now() < end, "{path}: {r:?}"),
            }
            refused += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A metric's value, asked on a new TCP connection; retried (bounded) while the
    /// answer is not a 200 (a slot still taken).
    pub async fn metric(&self, name: &str) -> f64 {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(text) = self.get("/metrics").await
                && text.starts_with("HTTP/1.1 200")
            {
                let value = text
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name} ")))
                    .and_then(|v| v.trim().parse().ok());
                match value {
                    Some(v) => return v,
                    None => panic!("{name} is not in the metrics:\n{text}"),
                }
            }
            assert!(Instant::now() < end, "/metrics never answered 200");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, wait (it must exit successfully within 15 s), and the whole log.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "exit after SIGTERM: {status:?}");
                break;
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!("did not stop within 15 s of SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the stderr reader reach the end.
        std::thread::sleep(Duration::from_millis(100));
        self.log()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
