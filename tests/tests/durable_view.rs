//! The view survives a restart: with `baseline_file`, 100,000 entities that only a push
//! ever reported (no collector lists them) are all there from the first second after a
//! restart, in `GET /v1/entities`, in get-all and in an SSE `snapshot=true`, not only
//! in the store's counts. In-process `Synchronizer` and the HTTP API on a loopback port.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use synchronizer::Synchronizer;
use synchronizer::hub::Origin;
use synchronizer_plugin_api::Entity;
use synchronizer_plugin_api::abi::{FfiPushed, PushAction};
use tokio_util::sync::CancellationToken;

const N: u64 = 100_000;
const TYPE: &str = "pushed.item";

fn entity(i: u64) -> Entity {
    Entity::resource(TYPE, &format!("item-{i:06}"))
        .with_name(format!("item {i}"))
        .with_state(if i.is_multiple_of(3) { "down" } else { "up" })
        .with_source_updated_micros(1_764_000_000_000_000 + i as i64)
        .with_properties(serde_json::json!({ "n": i }))
}

fn config(dir: &std::path::Path) -> synchronizer::Config {
    synchronizer_test_kit::host::config(&format!(
        "baseline_file = {:?}\n[http]\n",
        dir.join("baseline.redb").display().to_string()
    ))
}

async fn start(
    dir: &std::path::Path,
) -> (Arc<Synchronizer>, std::net::SocketAddr, CancellationToken) {
    let config = config(dir);
    let http = config.http.clone().expect("[http]");
    let sync = Arc::new(Synchronizer::start(config).await.expect("host starts"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(synchronizer::http::serve_on(
        listener,
        sync.clone(),
        http,
        stop.clone(),
    ));
    (sync, addr, stop)
}

/// Reads an SSE `snapshot=true` stream up to its `snapshot_end`; returns the snapshot's
/// entity ids and the count `snapshot_end` announced.
async fn sse_snapshot(addr: std::net::SocketAddr) -> (Vec<String>, u64) {
    let url = format!("http://{addr}/v1/changes?snapshot=true&types={TYPE}");
    let mut resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut buf = String::new();
    let mut ids = Vec::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), resp.chunk())
            .await
            .expect("the snapshot keeps coming")
            .unwrap()
            .expect("the stream goes on");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(at) = buf.find("\n\n") {
            let block: String = buf.drain(..at + 2).collect();
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let v: Value = serde_json::from_str(data).unwrap();
            match v["action"].as_str() {
                Some("snapshot") => ids.push(v["id"].as_str().unwrap().to_owned()),
                Some("snapshot_end") => return (ids, v["count"].as_u64().unwrap()),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_only_entities_are_all_in_every_view_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (sync, _, stop) = start(dir.path()).await;
    let origin = Origin {
        owner: 0,
        instance: Arc::from("pusher"),
    };
    let mut last = None;
    for start in (0..N).step_by(1000) {
        let batch = (start..start + 1000)
            .map(|i| FfiPushed {
                action: PushAction::Upsert,
                entity: entity(i),
            })
            .collect();
        last = sync.hub().apply_push(&origin, batch).last_seq.or(last);
    }
    // As a bus plugin would before it acknowledges: wait until the store committed it.
    let last = last.expect("changes");
    tokio::time::timeout(
        Duration::from_secs(60),
        sync.hub().deliveries().delivered(last),
    )
    .await
    .expect("committed within 60 s")
    .expect("committed");
    stop.cancel();
    sync.shutdown().await;
    drop(sync);

    let (sync, addr, stop) = start(dir.path()).await;
    // GET /v1/entities, at once.
    let body: Value = reqwest::get(format!("http://{addr}/v1/entities?types={TYPE}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = body
        .as_array()
        .or_else(|| body["entities"].as_array())
        .expect("a list of entities");
    assert_eq!(listed.len() as u64, N, "GET /v1/entities");
    let one = listed
        .iter()
        .find(|e| e["id"] == "item-000003")
        .expect("item 3 is there");
    assert_eq!(
        one["state"], "down",
        "the entity's content came back, not only its key"
    );
    assert_eq!(one["properties"]["n"], 3);
    // Get-all of a push-only type: the view.
    let all = sync
        .get_all(&[TYPE])
        .await
        .expect("get-all of a push-only type");
    assert_eq!(all.len() as u64, N, "get-all");
    assert_eq!(*all[3], entity(3), "the whole entity");
    // An SSE snapshot.
    let (ids, count) = sse_snapshot(addr).await;
    assert_eq!(count, N, "snapshot_end count");
    assert_eq!(ids.len() as u64, N, "snapshot lines");
    stop.cancel();
    sync.shutdown().await;
}
