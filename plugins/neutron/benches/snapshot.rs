//! A Neutron snapshot of 10,000 ports served in pages of 1,000 by a loopback server, end
//! to end through the plugin (Keystone token reused, eleven paginated GETs, entities
//! built), against merely downloading and JSON-parsing the same pages with the same HTTP
//! client: the test kit's listing benchmark (`synchronizer_test_kit::listing_bench`).
//!
//! The plugin parses each page on its task and builds the entities of the page on the
//! blocking pool while the next page downloads, so it may use a second core; the
//! baseline is one task.
//!
//! `cargo bench -p synchronizer-neutron --bench snapshot`

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use synchronizer_neutron::{Config, NeutronPlugin};
use synchronizer_test_kit::listing_bench::{self, Listing};

const PORTS: usize = 10_000;
const TOKEN: &str = include_str!("../tests/fixtures/keystone-auth-tokens.json");
const CAPTURED_PAGE: &str = include_str!("../tests/fixtures/ports-limit2.page1.json");

/// Ports made from a captured one (port-a1, compute:nova), each with its own id, name,
/// device, network, MAC, address and project.
fn ports() -> Vec<Value> {
    let template =
        serde_json::from_str::<Value>(CAPTURED_PAGE).expect("fixture")["ports"][0].clone();
    (0..PORTS)
        .map(|i| {
            let mut s = template.clone();
            s["id"] = json!(format!("{:08x}-0000-4000-8000-{:012x}", i, i));
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
        .collect()
}

fn bench(c: &mut Criterion) {
    let listing = Listing {
        group: "neutron_10k_ports",
        token: TOKEN,
        service: ("network", "/network"),
        path: "/v2.0/ports",
        key: "ports",
        items: ports(),
        page: 1_000,
    };
    let (_server_rt, server) = listing_bench::serve(&listing);
    let base = server.base().to_owned();
    let rt = listing_bench::client_runtime();
    let config: Config = listing_bench::plugin_config(&listing, &base);
    let plugin = NeutronPlugin::from_config(config, "bench").expect("plugin");
    let types = vec!["neutron.port".to_owned()];
    let client = plugin.session().http().clone();
    let collect = || {
        Box::pin(async {
            plugin
                .collect(&types)
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
