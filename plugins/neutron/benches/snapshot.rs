//! A Neutron snapshot of 10,000 ports served in pages of 1,000 by a loopback server, end
//! to end through the plugin (Keystone token reused, ten paginated GETs, entities built),
//! against merely downloading and JSON-parsing the same ten pages with the same HTTP
//! client. Both run in the same process, against the same server, in the same run: first
//! as two criterion benchmarks, then interleaved round by round (medians and their ratio
//! printed at the end), which is what to compare on a machine shared with other work.
//!
//! The plugin parses each page on its task and builds the entities of the page on the
//! blocking pool while the next page downloads, so it may use a second core; the
//! baseline is one task.
//!
//! `cargo bench -p synchronizer-neutron --bench snapshot`

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use synchronizer_neutron::{Config, NeutronPlugin};
use synchronizer_openstack::testing::{Reply, Request, Server, keystone_token_reply};

const SERVERS: usize = 10_000; // ports
const PAGE: usize = 1_000;
const TOKEN: &str = include_str!("../tests/fixtures/keystone-auth-tokens.json");
const CAPTURED_PAGE: &str = include_str!("../tests/fixtures/ports-limit2.page1.json");

/// Ten pages made from a captured port (port-a1, compute:nova), each port with its own
/// id, name, device, network, address and project; the links the way Neutron writes them.
fn pages() -> Vec<(Option<String>, Bytes)> {
    let template: Value = serde_json::from_str::<Value>(CAPTURED_PAGE).unwrap()["ports"][0].clone();
    let servers: Vec<Value> = (0..SERVERS)
        .map(|i| {
            let mut s = template.clone();
            let id = format!("{:08x}-0000-4000-8000-{:012x}", i, i);
            s["id"] = json!(id);
            s["name"] = json!(format!("port-{i}"));
            s["tenant_id"] = json!(format!("project-{}", i % 50));
            s["project_id"] = json!(format!("project-{}", i % 50));
            s["device_id"] = json!(format!("{:08x}-1111-4000-8000-{:012x}", i, i));
            s["network_id"] = json!(format!("{:08x}-2222-4000-8000-000000000000", i % 100));
            s["mac_address"] = json!(format!(
                "fa:16:3e:{:02x}:{:02x}:{:02x}",
                i >> 16 & 255,
                i >> 8 & 255,
                i & 255
            ));
            s["fixed_ips"][0]["ip_address"] =
                json!(format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255));
            s
        })
        .collect();
    servers
        .chunks(PAGE)
        .enumerate()
        .map(|(n, chunk)| {
            let marker = (n > 0).then(|| servers[n * PAGE - 1]["id"].as_str().unwrap().to_owned());
            let last = chunk.last().unwrap()["id"].as_str().unwrap();
            let body = json!({
                "ports": chunk,
                "ports_links": [
                    {"rel": "next", "href": format!("http://127.0.0.1:19696/v2.0/ports?limit={PAGE}&marker={last}")},
                    {"rel": "previous", "href": format!("http://127.0.0.1:19696/v2.0/ports?limit={PAGE}&marker={last}&page_reverse=True")}
                ],
            });
            (marker, Bytes::from(serde_json::to_vec(&body).unwrap()))
        })
        .chain(std::iter::once((
            Some(servers[SERVERS - 1]["id"].as_str().unwrap().to_owned()),
            Bytes::from_static(br#"{"ports": [], "ports_links": []}"#),
        )))
        .collect()
}

fn bench(c: &mut Criterion) {
    let pages = Arc::new(pages());
    let total_bytes: usize = pages.iter().map(|(_, b)| b.len()).sum();
    eprintln!(
        "{} pages, {} ports, {:.1} MB",
        pages.len(),
        SERVERS,
        total_bytes as f64 / 1e6
    );

    // The server runs on a runtime (and thread) of its own.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let served = pages.clone();
    let server = server_rt
        .block_on(Server::start(move |req: &Request, base: &str| {
            match req.path.as_str() {
                "/identity/v3/auth/tokens" => keystone_token_reply(
                    TOKEN,
                    base,
                    "tok-bench",
                    Duration::from_secs(3600),
                    &[("network", "/network")],
                ),
                "/network/v2.0/ports" => {
                    let marker = req.param("marker");
                    match served.iter().find(|(m, _)| *m == marker) {
                        Some((_, body)) => Reply::json(200, body.clone()),
                        None => Reply::not_found("marker"),
                    }
                }
                _ => Reply::not_found(&req.path),
            }
        }))
        .unwrap();
    let base = server.base().to_owned();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config: Config = serde_json::from_value(json!({
        "cloud": {"auth": {"auth_url": format!("{base}/identity"), "username": "admin", "password": "bench",
                           "project_name": "admin"}, "timeout": "60s"},
        "page_size": PAGE,
    }))
    .unwrap();
    let plugin = rt
        .block_on(async { NeutronPlugin::from_config(config, "bench") })
        .unwrap();
    let types = vec!["neutron.port".to_owned()];
    let n = rt
        .block_on(plugin.collect(&types))
        .unwrap()
        .entities()
        .len();
    assert_eq!(n, SERVERS);

    let client = plugin.session().http().clone();
    let mut headers = HeaderMap::new();
    headers.insert("x-auth-token", HeaderValue::from_static("tok-bench"));
    let download_and_parse = || {
        let (client, headers, base) = (&client, &headers, &base);
        async move {
            let mut marker: Option<String> = None;
            let mut count = 0;
            loop {
                let mut url = format!("{base}/network/v2.0/ports?limit={PAGE}");
                if let Some(m) = &marker {
                    url.push_str("&marker=");
                    url.push_str(m);
                }
                let body = client
                    .get(&url)
                    .headers(headers.clone())
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                let page: Value = serde_json::from_slice(&body).unwrap();
                let servers = page["ports"].as_array().unwrap();
                count += servers.len();
                match servers.last() {
                    Some(last) => marker = last["id"].as_str().map(str::to_owned),
                    None => break,
                }
            }
            count
        }
    };
    assert_eq!(rt.block_on(download_and_parse()), SERVERS);

    let mut group = c.benchmark_group("neutron_10k_ports");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(15))
        .warm_up_time(Duration::from_secs(3));
    group.bench_function("download_and_parse_json", |b| {
        b.to_async(&rt).iter(download_and_parse)
    });
    group.bench_function("plugin_snapshot", |b| {
        b.to_async(&rt)
            .iter(|| async { plugin.collect(&types).await.unwrap().entities().len() })
    });
    group.finish();

    // The same comparison, interleaved round by round, so that load from other processes
    // on the machine hits both sides alike: medians and their ratio.
    let rounds = 15;
    let (mut base_ms, mut plugin_ms) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = std::time::Instant::now();
        rt.block_on(download_and_parse());
        base_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = std::time::Instant::now();
        rt.block_on(plugin.collect(&types)).unwrap();
        plugin_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, p) = (median(&mut base_ms), median(&mut plugin_ms));
    eprintln!(
        "interleaved, {rounds} rounds: download_and_parse_json median {b:.1} ms, plugin_snapshot median {p:.1} ms, ratio {:.2}x",
        p / b
    );
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
