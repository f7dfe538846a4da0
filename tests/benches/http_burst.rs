//! The host's resident memory around a burst of HTTP connections: the real binary
//! (`synchronizer run`, the static plugin, the HTTP API), VmRSS read from
//! `/proc/<pid>/status` idle, at the burst's peak (every connection open, each has asked
//! `GET /v1/entities` and read the answer), and over the 60 s after the clients dropped
//! them all. Target: within 2× the idle RSS a minute after the burst.
//!
//! Run twice in one go, with `release_memory = true` (the default: glibc `malloc_trim`
//! once the burst is over) and `false`, so that the two can be compared.
//!
//! Run: `cargo build --release -p synchronizer -p synchronizer-static && cargo bench -p
//! synchronizer-tests --bench http_burst`. Knobs: `BURST_CONNS` (default 10000),
//! `BURST_AFTER_S` (how long to watch after the burst, default 60), `BURST_BINARY` (the
//! binary; its directory is the plugins directory; default the release build).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use synchronizer_test_kit::sys::{env_or, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RACK: &str = "entities:\n  - type: rack\n    id: r1\n    name: rack one\n    state: available\n  - type: switch\n    id: s1\n    state: available\n";

/// `VmRSS` and `VmHWM` of `pid`, in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> (u64, u64) {
    synchronizer_test_kit::sys::rss_kib(pid).unwrap_or((0, 0))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn raise_fd_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a valid rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = want.min(lim.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// One connection that asked `/v1/entities` and read its answer, kept open.
async fn ask(addr: std::net::SocketAddr) -> Option<TcpStream> {
    let mut c = TcpStream::connect(addr).await.ok()?;
    c.write_all(b"GET /v1/entities HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = c.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match len {
                Some(len) => buf.len() >= end + 4 + len,
                // Chunked: the last chunk.
                None => buf.ends_with(b"\r\n0\r\n\r\n"),
            };
            if done {
                return head.starts_with("http/1.1 200").then_some(c);
            }
        }
    }
}

struct Run {
    idle: u64,
    peak: u64,
    hwm: u64,
    after: Vec<(u64, u64)>,
    opened: usize,
}

fn run(binary: &PathBuf, conns: usize, after_s: u64, release_memory: bool) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("data")).expect("data dir");
    std::fs::write(dir.path().join("data/rack.yaml"), RACK).expect("yaml");
    let port = free_port();
    let plugins = binary.parent().map(PathBuf::from).unwrap_or_default();
    let config = format!(
        "plugins_dir = {:?}\n\n[http]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = {}\nheader_timeout = \"120s\"\nidle_timeout = \"120s\"\nrelease_memory = {release_memory}\n\n\
         [[instances]]\nname = \"static\"\nlibrary = \"libsynchronizer_static.so\"\n[instances.config]\ndirectory = {:?}\n",
        plugins.display().to_string(),
        conns + 100,
        dir.path().join("data").display().to_string(),
    );
    let file = dir.path().join("sync.toml");
    std::fs::write(&file, &config).expect("config");
    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns");
    let pid = child.id();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        let end = Instant::now() + Duration::from_secs(20);
        while ask(addr).await.is_none() {
            assert!(Instant::now() < end, "the host never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle = rss_kib(pid).0;
        // The burst: `conns` connections, 500 at a time, every one kept open.
        let mut held = Vec::with_capacity(conns);
        while held.len() < conns {
            let wave = (conns - held.len()).min(500);
            let asks = (0..wave).map(|_| ask(addr));
            let got: Vec<_> = futures::future::join_all(asks).await;
            let before = held.len();
            held.extend(got.into_iter().flatten());
            if held.len() == before {
                break;
            }
        }
        let opened = held.len();
        let (peak, hwm) = rss_kib(pid);
        drop(held);
        let dropped = Instant::now();
        let mut after = Vec::new();
        for at in [1, 5, 10, 30, 60, after_s] {
            if at > after_s || after.iter().any(|(s, _)| *s == at) {
                continue;
            }
            let wait = Duration::from_secs(at).saturating_sub(dropped.elapsed());
            tokio::time::sleep(wait).await;
            after.push((at, rss_kib(pid).0));
        }
        Run {
            idle,
            peak,
            hwm,
            after,
            opened,
        }
    });
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    result
}

fn main() {
    let binary = std::env::var_os("BURST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| synchronizer_test_kit::paths::release("synchronizer"));
    let conns = env_or("BURST_CONNS", 10_000) as usize;
    let after_s = env_or("BURST_AFTER_S", 60);
    let limit = raise_fd_limit(conns as u64 * 2 + 1024);
    assert!(
        limit >= conns as u64 + 256,
        "the open-file limit ({limit}) is too low for {conns} connections"
    );
    println!("binary {}, {conns} connections", binary.display());
    let mut missed = false;
    for release_memory in [true, false] {
        let r = run(&binary, conns, after_s, release_memory);
        let after: Vec<String> = r
            .after
            .iter()
            .map(|(s, kib)| format!("{s} s {:.1}", mib(*kib)))
            .collect();
        let last = r.after.last().map_or(0, |a| a.1);
        let met = last <= 2 * r.idle;
        println!(
            "release_memory = {release_memory}: {} connections; VmRSS MiB idle {:.1}, peak {:.1} (VmHWM {:.1}), after the drop: {}; within 2x idle: {}",
            r.opened,
            mib(r.idle),
            mib(r.peak),
            mib(r.hwm),
            after.join(", "),
            if met { "met" } else { "NOT met" }
        );
        if release_memory {
            missed |= !met || r.opened < conns;
        }
    }
    if missed {
        std::process::exit(1);
    }
}
