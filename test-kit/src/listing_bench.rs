//! A paginated OpenStack listing benchmarked through a collector plugin against merely
//! downloading and JSON-parsing the same pages with the same HTTP client (the "≤ 1.5×"
//! benchmarks of the cinder and neutron plugins). Both run in one process, against one
//! loopback server, in one run: first as two criterion benchmarks, then interleaved round
//! by round (medians and their ratio printed at the end), which is what to compare on a
//! machine shared with other work.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use criterion::Criterion;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use synchronizer_openstack::testing::{Reply, Request, Server, keystone_token_reply};

/// What is listed and how it is served.
pub struct Listing {
    /// The criterion group's name (`neutron_10k_ports`).
    pub group: &'static str,
    /// A captured Keystone token body (its catalog is replaced).
    pub token: &'static str,
    /// The catalog's service type and the path prefix its endpoint gets
    /// (`("network", "/network")`).
    pub service: (&'static str, &'static str),
    /// The collection's path from the endpoint (`/v2.0/ports`).
    pub path: &'static str,
    /// The page's key of the items (`ports`) and of the links (`ports_links`).
    pub key: &'static str,
    /// The items, served `page` at a time after `marker`, with `next` links while a page
    /// is full and an empty last page after a full one, as Nova, Cinder and Neutron do.
    pub items: Vec<Value>,
    /// Items per page.
    pub page: usize,
}

/// The plugin's snapshot, counted.
pub type Collect<'a> = Box<dyn Fn() -> Pin<Box<dyn Future<Output = usize> + 'a>> + 'a>;

/// The pages of `l`, each with the marker that asks for it.
fn pages(l: &Listing) -> Vec<(Option<String>, Vec<u8>)> {
    let id = |v: &Value| v["id"].as_str().expect("an id").to_owned();
    let mut pages: Vec<(Option<String>, Vec<u8>)> = l
        .items
        .chunks(l.page)
        .enumerate()
        .map(|(n, chunk)| {
            let marker = (n > 0).then(|| id(&l.items[n * l.page - 1]));
            let last = id(chunk.last().expect("a page"));
            let mut body = json!({ l.key: chunk });
            if chunk.len() == l.page {
                body[format!("{}_links", l.key)] = json!([{"rel": "next",
                    "href": format!("http://127.0.0.1:19696{}?limit={}&marker={last}", l.path, l.page)}]);
            }
            (marker, serde_json::to_vec(&body).expect("json"))
        })
        .collect();
    if l.items.len() % l.page == 0 {
        let last = l.items.last().map(id);
        pages.push((
            last,
            serde_json::to_vec(&json!({ l.key: [] })).expect("json"),
        ));
    }
    pages
}

/// A loopback Keystone + service serving `l`, on a runtime of its own; its base URL.
pub fn serve(l: &Listing) -> (tokio::runtime::Runtime, Server) {
    let served = pages(l);
    let bytes: usize = served.iter().map(|(_, b)| b.len()).sum();
    eprintln!(
        "{} pages, {} items, {:.1} MB",
        served.len(),
        l.items.len(),
        bytes as f64 / 1e6
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("the server's runtime");
    let (token, (service, prefix)) = (l.token, l.service);
    let listing = format!("{prefix}{}", l.path);
    let server = rt
        .block_on(Server::start(move |req: &Request, base: &str| {
            if req.path == "/identity/v3/auth/tokens" {
                return keystone_token_reply(
                    token,
                    base,
                    "tok-bench",
                    Duration::from_secs(3600),
                    &[(service, prefix)],
                );
            }
            if req.path != listing {
                return Reply::not_found(&req.path);
            }
            let marker = req.param("marker");
            match served.iter().find(|(m, _)| *m == marker) {
                Some((_, body)) => Reply::json(200, body.clone()),
                None => Reply::not_found("marker"),
            }
        }))
        .expect("the loopback server");
    (rt, server)
}

/// The runtime the plugin's client runs on in the benchmarks: one worker thread.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The plugin configuration for the listing served at `base`: password auth through its
/// Keystone, pages of the listing's size.
pub fn plugin_config<C: serde::de::DeserializeOwned>(l: &Listing, base: &str) -> C {
    serde_json::from_value(serde_json::json!({
        "cloud": {"auth": {"auth_url": format!("{base}/identity"), "username": "admin", "password": "bench",
                           "project_name": "admin"}, "timeout": "60s"},
        "page_size": l.page,
    }))
    .expect("config")
}

/// Compares `collect` (the plugin's snapshot of `l` served at `base`) with downloading
/// and parsing the same pages with `client` on `rt`; both must count every item.
pub fn compare(
    c: &mut Criterion,
    l: &Listing,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    base: &str,
    collect: Collect<'_>,
) {
    let mut headers = HeaderMap::new();
    headers.insert("x-auth-token", HeaderValue::from_static("tok-bench"));
    let url = format!("{base}{}{}", l.service.1, l.path);
    let download_and_parse = || {
        let (client, headers, url) = (client, &headers, &url);
        async move {
            let mut marker: Option<String> = None;
            let mut count = 0;
            loop {
                let mut page_url = format!("{url}?limit={}", l.page);
                if let Some(m) = &marker {
                    page_url.push_str("&marker=");
                    page_url.push_str(m);
                }
                let body = client
                    .get(&page_url)
                    .headers(headers.clone())
                    .send()
                    .await
                    .expect("a page")
                    .bytes()
                    .await
                    .expect("its body");
                let page: Value = serde_json::from_slice(&body).expect("JSON");
                let items = page[l.key].as_array().expect("items");
                count += items.len();
                match items.last() {
                    Some(last) => marker = last["id"].as_str().map(str::to_owned),
                    None => break,
                }
            }
            count
        }
    };
    let n = l.items.len();
    assert_eq!(rt.block_on(download_and_parse()), n);
    assert_eq!(rt.block_on(collect()), n, "the plugin lists every item");

    let mut group = c.benchmark_group(l.group);
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(15))
        .warm_up_time(Duration::from_secs(3));
    group.bench_function("download_and_parse_json", |b| {
        b.to_async(rt).iter(download_and_parse)
    });
    group.bench_function("plugin_snapshot", |b| b.to_async(rt).iter(&collect));
    group.finish();

    // Interleaved round by round, so that load from other processes on the machine hits
    // both sides alike: medians and their ratio.
    let rounds = 15;
    let (mut base_ms, mut plugin_ms) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        rt.block_on(download_and_parse());
        base_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        rt.block_on(collect());
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
}
