//! The change stream under back-pressure, in-process: a `Synchronizer` and the HTTP API
//! on a loopback port, changes pushed straight into the hub, one SSE client that stops
//! reading and one that keeps up. The host never waits for the slow client; the slow
//! client gets a resync marker and a snapshot and ends up with exactly the host's view;
//! the fast one gets every change, in order, without a resync.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use synchronizer::Synchronizer;
use synchronizer::hub::Origin;
use synchronizer_plugin_api::Entity;
use synchronizer_plugin_api::abi::{FfiPushed, PushAction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const CHANGES: u64 = 20_000;
const BATCH: u64 = 100;
const IDS: u64 = 100;

fn entity(i: u64, n: u64) -> Entity {
    Entity::resource("lag.item", &format!("item-{i}"))
        .with_state(if n & 1 == 0 { "up" } else { "down" })
        .with_source_updated_micros(1_700_000_000_000_000 + n as i64)
        .with_properties(serde_json::json!({ "n": n }))
}

/// A raw HTTP/1.1 client with a small receive buffer, so that not reading soon pushes
/// back on the server. Decodes the chunked body into SSE events itself.
struct RawSse {
    conn: tokio::net::TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
}

impl RawSse {
    async fn open(addr: std::net::SocketAddr) -> RawSse {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(8 * 1024).unwrap();
        let mut conn = socket.connect(addr).await.unwrap();
        conn.write_all(
            b"GET /v1/changes HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
        let mut s = RawSse {
            conn,
            raw: Vec::new(),
            body: Vec::new(),
        };
        // The head.
        while !s.raw.windows(4).any(|w| w == b"\r\n\r\n") {
            s.fill().await;
        }
        let at = s.raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&s.raw[..at]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        s.raw.drain(..at + 4);
        s
    }

    async fn fill(&mut self) {
        let mut buf = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(10), self.conn.read(&mut buf))
            .await
            .expect("data within 10 s")
            .unwrap();
        assert!(n > 0, "the server closed the stream");
        self.raw.extend_from_slice(&buf[..n]);
    }

    /// Moves complete chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&self.raw[..eol]).unwrap(), 16)
                .expect("chunk size");
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            self.body
                .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }

    /// The next event's data.
    async fn next(&mut self) -> Value {
        loop {
            self.dechunk();
            if let Some(at) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.body.drain(..at + 2).collect()).unwrap();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            self.fill().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_resynced_and_never_holds_the_host_back() {
    let config = synchronizer_test_kit::host::config("[http]\n");
    let http = config.http.clone().unwrap();
    let sync = Arc::new(Synchronizer::start(config).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(synchronizer::http::serve_on(
        listener,
        sync.clone(),
        http,
        stop.clone(),
    ));

    let mut slow = RawSse::open(addr).await;

    // The fast client reads everything, and checks order.
    let url = format!("http://{addr}/v1/changes");
    let mut fast = reqwest::get(&url).await.unwrap();
    assert_eq!(fast.status(), 200);
    let fast_task = tokio::spawn(async move {
        let mut buf = String::new();
        let mut seqs = Vec::new();
        let mut other = Vec::new();
        while (seqs.len() as u64) < CHANGES {
            let chunk = tokio::time::timeout(Duration::from_secs(20), fast.chunk())
                .await
                .expect("the fast client keeps receiving")
                .unwrap()
                .expect("the stream goes on");
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(at) = buf.find("\n\n") {
                let block: String = buf.drain(..at + 2).collect();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    let v: Value = serde_json::from_str(data).unwrap();
                    match v["seq"].as_u64() {
                        Some(s) => seqs.push(s),
                        None => {
                            other.push(v);
                            return (seqs, other);
                        }
                    }
                }
            }
        }
        (seqs, other)
    });

    // Push at 10,000 changes/s; no push may wait for a client.
    let origin = Origin {
        owner: 0,
        instance: Arc::from("pusher"),
    };
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for b in 0..CHANGES / BATCH {
        tick.tick().await;
        let batch = (0..BATCH)
            .map(|k| {
                let n = b * BATCH + k;
                FfiPushed {
                    action: PushAction::Upsert,
                    entity: entity(n % IDS, n),
                }
            })
            .collect();
        let t = Instant::now();
        sync.hub().apply_push(&origin, batch);
        slowest = slowest.max(t.elapsed());
    }
    let pushing = started.elapsed();
    assert!(
        slowest < Duration::from_millis(250),
        "a push took {slowest:?}: the host waited"
    );
    assert!(
        pushing < Duration::from_secs(15),
        "pushing took {pushing:?}"
    );

    let (seqs, other) = fast_task.await.unwrap();
    assert!(
        other.is_empty(),
        "the fast client was resynced: {:?}",
        other.first()
    );
    assert_eq!(seqs.len() as u64, CHANGES);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the fast client's seqs are not consecutive"
    );
    assert!(
        sync.hub().lagged_total() >= 1,
        "the slow client never fell behind"
    );

    // The slow client now reads: a resync and a snapshot came, and what it ends up with
    // is the host's view.
    let mut view: BTreeMap<String, u64> = BTreeMap::new();
    let mut resyncs = 0;
    let mut in_snapshot = false;
    let last_seq = sync.hub().last_seq();
    loop {
        let v = slow.next().await;
        match v["action"].as_str().unwrap() {
            "resync" => {
                assert_eq!(v["reason"], "lagged");
                resyncs += 1;
                view.clear();
                in_snapshot = true;
            }
            "snapshot" => {
                assert!(in_snapshot);
                view.insert(
                    v["key"].as_str().unwrap().to_owned(),
                    v["properties"]["n"].as_u64().unwrap(),
                );
            }
            "snapshot_end" => {
                in_snapshot = false;
                assert_eq!(v["count"].as_u64().unwrap() as usize, view.len());
                // A snapshot taken after the last push ends the stream's news.
                if view.values().any(|n| *n == CHANGES - 1) {
                    break;
                }
            }
            "created" | "updated" => {
                view.insert(
                    v["key"].as_str().unwrap().to_owned(),
                    v["properties"]["n"].as_u64().unwrap(),
                );
                if v["seq"].as_u64() == Some(last_seq) {
                    break;
                }
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(resyncs >= 1, "the slow client got no resync");
    let host_view: BTreeMap<String, u64> = sync
        .current(&["lag.item"])
        .iter()
        .map(|e| {
            let p: Value = serde_json::from_str(e.properties_json()).unwrap();
            (e.key(), p["n"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(view.len() as u64, IDS);
    assert_eq!(view, host_view);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    sync.shutdown().await;
}
