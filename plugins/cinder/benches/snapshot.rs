//! A Cinder snapshot of 10,000 volumes served in pages of 1,000 by a loopback server, end
//! to end through the plugin (Keystone token reused, eleven paginated GETs with the
//! microversion header, entities built), against merely downloading and JSON-parsing the
//! same pages with the same HTTP client: the test kit's listing benchmark
//! (`synchronizer_test_kit::listing_bench`).
//!
//! `cargo bench -p synchronizer-cinder --bench snapshot`

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use synchronizer_cinder::{CinderPlugin, Config};
use synchronizer_test_kit::listing_bench::{self, Listing};

const VOLUMES: usize = 10_000;
const TOKEN: &str = include_str!("../tests/fixtures/keystone-auth-tokens.json");
const CAPTURED: &str = include_str!("../tests/fixtures/volumes-detail-all_tenants.mv3.71.json");

/// Volumes made from the captured ones (each keeps its shape: attached, available,
/// error), each with its own id, name and project; attached ones to a server of their own.
fn volumes() -> Vec<Value> {
    let captured = serde_json::from_str::<Value>(CAPTURED).expect("fixture")["volumes"]
        .as_array()
        .expect("volumes")
        .clone();
    (0..VOLUMES)
        .map(|i| {
            let mut v = captured[i % captured.len()].clone();
            let id = format!("{:08x}-0000-4000-8000-{:012x}", i, i);
            v["id"] = json!(id);
            v["name"] = json!(format!("vol-{i}"));
            v["os-vol-tenant-attr:tenant_id"] = json!(format!("project-{}", i % 50));
            if let Some(attachments) = v["attachments"].as_array_mut() {
                for a in attachments {
                    a["volume_id"] = json!(id);
                    a["server_id"] = json!(format!("{:08x}-1111-4000-8000-{:012x}", i, i));
                }
            }
            v
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let listing = Listing {
        group: "cinder_10k_volumes",
        token: TOKEN,
        service: ("volumev3", "/volume/v3/p1"),
        path: "/volumes/detail",
        key: "volumes",
        items: volumes(),
        page: 1_000,
    };
    let (_server_rt, server) = listing_bench::serve(&listing);
    let base = server.base().to_owned();
    let rt = listing_bench::client_runtime();
    let config: Config = listing_bench::plugin_config(&listing, &base);
    let plugin = CinderPlugin::from_config(config, "bench").expect("plugin");
    let client = plugin.session().http().clone();
    let collect = || {
        Box::pin(async {
            plugin
                .collect(&[])
                .await
                .expect("snapshot")
                .entities()
                .len()
        }) as _
    };
    listing_bench::compare(c, &listing, &rt, &client, &base, Box::new(collect));
}

criterion_group!(benches, bench);
criterion_main!(benches);
