//! Against a real Neutron 25.2 on loopback (ML2 without agents, sqlite, behind the lab
//! Keystone), started by `scripts/openstack/neutron.sh` after `keystone-heat.sh` and
//! `nova.sh` (run `scripts/openstack/test-real.sh`, which starts them and sets the
//! environment). Marked `#[ignore]` so that a plain `cargo test` reports them as ignored,
//! never as passed; `scripts/test.sh` runs them with `--ignored` once the services are up,
//! and they fail when `SYNCHRONIZER_REAL_NEUTRON` is not set.
//!
//! - `a_real_neutron`: the plugin's snapshot against Neutron's own listings (exact ids,
//!   states, projects, both relations), what a member sees, and network / port create,
//!   rename and delete through the real API (as a member of demo-b), each seen through the
//!   host (the built `.so` on the real loader, polled every 2 s) as exactly one change
//!   within two intervals, and nothing after it.
//! - `real_neutron_notifications_through_the_bus`: the collector and the bus `.so` in one
//!   host, the bus consuming this Neutron's notifications (exchange `neutron`): each
//!   change comes from the bus, once, and a poll after it emits nothing — for objects a
//!   member made, whose notifications lack the admin-only attributes.
//! - `the_combined_graph`: one host with the Nova, Cinder and Neutron collectors and the
//!   bus: every relation of a port and of a volume names an entity in the view
//!   (instance ← port → network, volume → instance).
//!
//! The bus and combined tests need the other plugins' `.so` files (`cargo build -p
//! synchronizer-bus -p synchronizer-nova -p synchronizer-cinder`, which scripts/test.sh and
//! test-real.sh do first).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use synchronizer::{Action, SubscribeOptions, Synchronizer};
use synchronizer_neutron::{Config, NeutronPlugin};
use synchronizer_test_kit::lab::{
    Keystone, Scoped, Seen, bus_host, bus_instance, changes_until, delete_queues, env, record,
    vhost,
};
use synchronizer_test_kit::nova::lab::Api as Nova;
use synchronizer_test_kit::paths::plugin_library;
use synchronizer_test_kit::sys::unique;

/// The tests of this file share one lab: each sees what the others create, so they run
/// one at a time (cargo runs a file's tests in parallel).
static LAB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TYPES: [&str; 2] = ["neutron.network", "neutron.port"];
/// The host's polling interval in the host test.
const INTERVAL: Duration = Duration::from_secs(2);

/// Neutron's networking API (`SYNCHRONIZER_REAL_NEUTRON`, `http://127.0.0.1:19696`).
struct Neutron {
    http: reqwest::Client,
    base: String,
}

impl Neutron {
    fn from_env() -> Neutron {
        Neutron {
            http: reqwest::Client::new(),
            base: env("SYNCHRONIZER_REAL_NEUTRON", "neutron.sh"),
        }
    }

    async fn call(
        &self,
        who: &Scoped,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/v2.0{path}", self.base))
            .header("x-auth-token", &who.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("Neutron answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Every object of `collection` (`networks`, `ports`) `who` may see.
    async fn list(&self, who: &Scoped, collection: &str) -> Vec<Value> {
        let (status, body) = self
            .call(who, reqwest::Method::GET, &format!("/{collection}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body[collection].as_array().cloned().unwrap_or_default()
    }

    /// Creates `{kind: body}` in `/<kind>s` as `who`; its id.
    async fn create(&self, who: &Scoped, kind: &str, body: Value) -> String {
        let (status, answer) = self
            .call(
                who,
                reqwest::Method::POST,
                &format!("/{kind}s"),
                Some(json!({ kind: body })),
            )
            .await;
        assert_eq!(status, 201, "{answer}");
        answer[kind]["id"].as_str().expect("an id").to_owned()
    }

    async fn rename(&self, who: &Scoped, kind: &str, id: &str, name: &str) {
        let (status, answer) = self
            .call(
                who,
                reqwest::Method::PUT,
                &format!("/{kind}s/{id}"),
                Some(json!({ kind: {"name": name} })),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }

    async fn delete(&self, who: &Scoped, kind: &str, id: &str) {
        let (status, answer) = self
            .call(
                who,
                reqwest::Method::DELETE,
                &format!("/{kind}s/{id}"),
                None,
            )
            .await;
        assert!(status == 204 || status == 404, "{status} {answer}");
    }

    /// Deletes the ports, then the networks, named `<prefix>...` (an earlier run's).
    async fn delete_named(&self, admin: &Scoped, prefix: &str) {
        for kind in ["port", "network"] {
            for o in self.list(admin, &format!("{kind}s")).await {
                if o["name"].as_str().is_some_and(|n| n.starts_with(prefix)) {
                    self.delete(admin, kind, o["id"].as_str().expect("an id"))
                        .await;
                }
            }
        }
    }
}

fn config(ks: &Keystone, user: &str, password: &str, project: &str) -> Config {
    serde_json::from_value(json!({"cloud": ks.cloud(user, password, project), "page_size": 1}))
        .expect("config")
}

type View = BTreeMap<String, (String, Option<String>, Option<String>, Vec<String>)>;

/// What Neutron's own listings say each entity must be: name, state, project, relations
/// (`kind direction other`).
fn expected(networks: &[Value], ports: &[Value]) -> View {
    let mut view = View::new();
    for n in networks {
        view.insert(
            format!("neutron.network:{}", n["id"].as_str().expect("an id")),
            (
                n["name"].as_str().unwrap_or_default().to_owned(),
                n["status"].as_str().map(str::to_owned),
                n["project_id"].as_str().map(str::to_owned),
                vec![],
            ),
        );
    }
    for p in ports {
        let mut relations = vec![format!(
            "contains in neutron.network:{}",
            p["network_id"].as_str().expect("a network")
        )];
        if p["device_owner"]
            .as_str()
            .is_some_and(|o| o.starts_with("compute:"))
        {
            relations.push(format!(
                "attached out nova.instance:{}",
                p["device_id"].as_str().expect("a device")
            ));
        }
        relations.sort();
        view.insert(
            format!("neutron.port:{}", p["id"].as_str().expect("an id")),
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["status"].as_str().map(str::to_owned),
                p["project_id"].as_str().map(str::to_owned),
                relations,
            ),
        );
    }
    view
}

fn view_of<'a>(entities: impl IntoIterator<Item = &'a synchronizer_plugin_api::Entity>) -> View {
    entities
        .into_iter()
        .map(|e| {
            let mut relations: Vec<String> = e
                .relations()
                .iter()
                .map(|r| format!("{} {} {}", r.kind(), r.direction().as_str(), r.other()))
                .collect();
            relations.sort();
            (
                e.key(),
                (
                    e.name().to_owned(),
                    e.state().map(str::to_owned),
                    e.project().map(str::to_owned),
                    relations,
                ),
            )
        })
        .collect()
}

/// `seen` is exactly one change: `action` of `key` in state `state`.
fn exactly(seen: &[Seen], action: Action, key: &str, state: &str) {
    let got: Vec<(Action, &str, Option<&str>)> = seen
        .iter()
        .map(|s| (s.0, s.1.as_str(), s.2.as_deref()))
        .collect();
    assert_eq!(got, vec![(action, key, Some(state))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real services: scripts/test.sh starts them and runs it with --ignored"]
async fn a_real_neutron() {
    let _lab = LAB.lock().await;
    let neutron = Neutron::from_env();
    let ks = Keystone::from_env();
    let nova = Nova::from_env();
    let admin = ks.admin().await;
    let demo_a = ks.demo("demo-a").await;
    let demo_b = ks.demo("demo-b").await;
    neutron.delete_named(&admin, "real-neutron-").await;
    let vm_a1 = nova.id_of("vm-a1").await;
    let vm_b1 = nova.id_of("vm-b1").await;

    // The seed of neutron.sh, as Neutron lists it.
    let networks = neutron.list(&admin, "networks").await;
    let ports = neutron.list(&admin, "ports").await;
    let named = |list: &[Value], name: &str| {
        list.iter()
            .find(|o| o["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing: {list:?}"))
    };
    let net_a = named(&networks, "net-a");
    assert_eq!(net_a["project_id"], demo_a.project_id.as_str());
    assert_eq!(
        named(&networks, "net-b")["project_id"],
        demo_b.project_id.as_str()
    );
    let port_a1 = named(&ports, "port-a1");
    assert_eq!(port_a1["device_owner"], "compute:nova");
    assert_eq!(port_a1["device_id"], vm_a1.as_str());
    assert_eq!(port_a1["network_id"], net_a["id"]);
    assert_eq!(
        named(&ports, "port-b1")["project_id"],
        demo_b.project_id.as_str()
    );

    // The admin's snapshot (one object per page) is exactly Neutron's listings.
    let plugin =
        NeutronPlugin::from_config(config(&ks, "admin", &ks.admin_password, "admin"), "real")
            .expect("plugin");
    let snapshot = plugin.collect(&[]).await.expect("a snapshot");
    assert_eq!(
        view_of(snapshot.entities()),
        expected(&networks, &ports),
        "the snapshot is Neutron's listings"
    );
    let a1 = snapshot
        .entities()
        .iter()
        .find(|e| e.name() == "port-a1")
        .expect("port-a1");
    assert_eq!(a1.state(), Some("DOWN"), "no L2 agent: ports stay DOWN");

    // A member sees its project's objects only (Neutron has no all_tenants): a snapshot
    // that looks complete.
    let member =
        NeutronPlugin::from_config(config(&ks, "demo", &ks.demo_password, "demo-a"), "real")
            .expect("plugin");
    let own = member.collect(&[]).await.expect("a member's snapshot");
    let own_keys: BTreeSet<String> = own.entities().iter().map(|e| e.key()).collect();
    let mine: BTreeSet<String> = expected(
        &neutron.list(&demo_a, "networks").await,
        &neutron.list(&demo_a, "ports").await,
    )
    .into_keys()
    .collect();
    assert_eq!(own_keys, mine);
    assert!(
        own.entities()
            .iter()
            .all(|e| e.project() == Some(demo_a.project_id.as_str())),
        "{own_keys:?}"
    );

    // Through the host, polled every 2 s; the changes made by a member of demo-b.
    let sync = ks
        .polling_host("synchronizer_neutron", "neutron-real", &TYPES)
        .await;
    let mut sub = sync.subscribe(&SubscribeOptions::types(&TYPES));
    let within = 2 * INTERVAL + Duration::from_secs(2);
    let quiet = INTERVAL + Duration::from_millis(500);
    let tag = unique("real-neutron");

    let net = neutron
        .create(&demo_b, "network", json!({"name": format!("{tag}-net")}))
        .await;
    let net_key = format!("neutron.network:{net}");
    let seen = changes_until(&mut sub, within, quiet, "network created", |s| {
        s.1 == net_key
    })
    .await;
    exactly(&seen, Action::Created, &net_key, "ACTIVE");

    let port = neutron
        .create(
            &demo_b,
            "port",
            json!({"name": format!("{tag}-port"), "network_id": net,
                   "device_owner": "compute:nova", "device_id": vm_b1}),
        )
        .await;
    let port_key = format!("neutron.port:{port}");
    let seen = changes_until(&mut sub, within, quiet, "port created", |s| s.1 == port_key).await;
    exactly(&seen, Action::Created, &port_key, "DOWN");
    let e = sync
        .current(&TYPES)
        .into_iter()
        .find(|e| e.key() == port_key)
        .expect("in the view");
    let relations: BTreeSet<String> = e
        .relations()
        .iter()
        .map(|r| format!("{} {} {}", r.kind(), r.direction().as_str(), r.other()))
        .collect();
    assert_eq!(
        relations,
        BTreeSet::from([
            format!("contains in {net_key}"),
            format!("attached out nova.instance:{vm_b1}")
        ])
    );

    neutron
        .rename(&demo_b, "port", &port, &format!("{tag}-port-renamed"))
        .await;
    let seen = changes_until(&mut sub, within, quiet, "port renamed", |s| s.1 == port_key).await;
    exactly(&seen, Action::Updated, &port_key, "DOWN");

    neutron.delete(&demo_b, "port", &port).await;
    let seen = changes_until(&mut sub, within, quiet, "port deleted", |s| s.1 == port_key).await;
    exactly(&seen, Action::Deleted, &port_key, "DOWN");

    neutron.delete(&demo_b, "network", &net).await;
    let seen = changes_until(&mut sub, within, quiet, "network deleted", |s| {
        s.1 == net_key
    })
    .await;
    exactly(&seen, Action::Deleted, &net_key, "ACTIVE");
    sync.shutdown().await;
}

/// A poll through the host: what it changed (nothing, when the bus already said it all).
async fn poll(sync: &Synchronizer, sub: &mut synchronizer::Subscription) -> Vec<Seen> {
    sync.get_all(&TYPES).await.expect("a poll");
    let mut seen = Vec::new();
    record(sub, &mut seen);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real services: scripts/test.sh starts them and runs it with --ignored"]
async fn real_neutron_notifications_through_the_bus() {
    let _lab = LAB.lock().await;
    let neutron = Neutron::from_env();
    let ks = Keystone::from_env();
    let nova = Nova::from_env();
    let amqp = env("SYNCHRONIZER_REAL_NEUTRON_AMQP", "neutron.sh");
    let vhost = vhost(&amqp);
    let admin = ks.admin().await;
    let demo_b = ks.demo("demo-b").await;
    neutron.delete_named(&admin, "real-neutron-bus-").await;
    delete_queues(&vhost, "real-neutron-bus-");
    let vm_b1 = nova.id_of("vm-b1").await;
    let tag = unique("real-neutron-bus");

    let toml = format!(
        r#"
plugin_log_level = "warn"
types = ["neutron.network", "neutron.port"]
[[instances]]
name = "neutron"
library = "{}"
interval = "1h"
jitter = "0s"
timeout = "30s"
{}
{}"#,
        plugin_library("synchronizer_neutron").display(),
        ks.admin_cloud_toml(),
        bus_instance(
            &plugin_library("synchronizer_bus").display().to_string(),
            &amqp,
            &tag,
            "neutron",
            "neutron",
            "vitrage_notifications"
        )
    );
    let sync = bus_host(&toml, &vhost, &tag).await;
    let mut sub = sync.subscribe(&SubscribeOptions::types(&TYPES));
    let within = Duration::from_secs(60);
    let quiet = Duration::from_secs(1);
    let from_bus = |seen: &[Seen]| {
        assert!(
            seen.iter().all(|s| s.3 == "bus"),
            "every change came from the bus: {seen:?}"
        );
    };

    // Each step, by a member of demo-b: one change from the bus, then a poll agrees.
    let net = neutron
        .create(&demo_b, "network", json!({"name": format!("{tag}-net")}))
        .await;
    let net_key = format!("neutron.network:{net}");
    let seen = changes_until(&mut sub, within, quiet, "network.create.end", |s| {
        s.1 == net_key
    })
    .await;
    from_bus(&seen);
    exactly(&seen, Action::Created, &net_key, "ACTIVE");
    assert_eq!(poll(&sync, &mut sub).await, vec![], "the poll agrees");

    let port = neutron
        .create(
            &demo_b,
            "port",
            json!({"name": format!("{tag}-port"), "network_id": net,
                   "device_owner": "compute:nova", "device_id": vm_b1}),
        )
        .await;
    let port_key = format!("neutron.port:{port}");
    let seen = changes_until(&mut sub, within, quiet, "port.create.end", |s| {
        s.1 == port_key
    })
    .await;
    from_bus(&seen);
    exactly(&seen, Action::Created, &port_key, "DOWN");
    assert_eq!(poll(&sync, &mut sub).await, vec![], "the poll agrees");

    neutron
        .rename(&demo_b, "port", &port, &format!("{tag}-port-renamed"))
        .await;
    let seen = changes_until(&mut sub, within, quiet, "port.update.end", |s| {
        s.1 == port_key
    })
    .await;
    from_bus(&seen);
    exactly(&seen, Action::Updated, &port_key, "DOWN");
    assert_eq!(poll(&sync, &mut sub).await, vec![], "the poll agrees");

    neutron.delete(&demo_b, "port", &port).await;
    let seen = changes_until(&mut sub, within, quiet, "port.delete.end", |s| {
        s.1 == port_key
    })
    .await;
    from_bus(&seen);
    assert_eq!(
        seen.iter().map(|s| (s.0, s.1.as_str())).collect::<Vec<_>>(),
        vec![(Action::Deleted, port_key.as_str())]
    );
    assert_eq!(poll(&sync, &mut sub).await, vec![], "the poll agrees");

    neutron.delete(&demo_b, "network", &net).await;
    let seen = changes_until(&mut sub, within, quiet, "network.delete.end", |s| {
        s.1 == net_key
    })
    .await;
    from_bus(&seen);
    assert_eq!(
        seen.iter().map(|s| (s.0, s.1.as_str())).collect::<Vec<_>>(),
        vec![(Action::Deleted, net_key.as_str())]
    );
    assert_eq!(poll(&sync, &mut sub).await, vec![], "the poll agrees");

    sync.shutdown().await;
    delete_queues(&vhost, &tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real services: scripts/test.sh starts them and runs it with --ignored"]
async fn the_combined_graph() {
    let _lab = LAB.lock().await;
    let ks = Keystone::from_env();
    let nova = Nova::from_env();
    let neutron_amqp = env("SYNCHRONIZER_REAL_NEUTRON_AMQP", "neutron.sh");
    env("SYNCHRONIZER_REAL_CINDER", "cinder.sh");
    let tag = unique("real-graph");
    let vhost = vhost(&neutron_amqp);
    delete_queues(&vhost, "real-graph-");
    let cloud = ks.admin_cloud_toml();
    let toml = format!(
        r#"
plugin_log_level = "warn"
[[instances]]
name = "nova"
library = "{nova_so}"
interval = "1h"
timeout = "60s"
[instances.config.cloud]
endpoint_override = "{nova_api}"
timeout = "30s"
[instances.config.cloud.auth]
token = "admin:admin"

[[instances]]
name = "cinder"
library = "{cinder_so}"
interval = "1h"
timeout = "60s"
{cloud}
[[instances]]
name = "neutron"
library = "{neutron_so}"
interval = "1h"
timeout = "60s"
{cloud}
{bus}"#,
        nova_so = plugin_library("synchronizer_nova").display(),
        nova_api = nova.nova,
        cinder_so = plugin_library("synchronizer_cinder").display(),
        neutron_so = plugin_library("synchronizer_neutron").display(),
        bus = bus_instance(
            &plugin_library("synchronizer_bus").display().to_string(),
            &neutron_amqp,
            &tag,
            "neutron",
            "neutron",
            "vitrage_notifications"
        ),
    );
    let sync = Synchronizer::start(synchronizer::Config::from_toml(&toml).expect("host config"))
        .await
        .expect("the host starts with four plugins");
    synchronizer_test_kit::host::ready_within(&sync, Duration::from_secs(90)).await;
    let view = sync.current::<&str>(&[]);
    let keys: BTreeSet<String> = view.iter().map(|e| e.key()).collect();
    let vm_a1 = format!("nova.instance:{}", nova.id_of("vm-a1").await);
    let mut resolved = BTreeMap::<(String, String), usize>::new();
    for e in &view {
        let t = e.entity_type().to_owned();
        if !(t.starts_with("cinder.") || t.starts_with("neutron.")) {
            continue;
        }
        for r in e.relations() {
            assert!(
                keys.contains(r.other()),
                "{} {} {}: no such entity in the view",
                e.key(),
                r.kind(),
                r.other()
            );
            let other_type = r.other().split(':').next().unwrap_or_default().to_owned();
            *resolved.entry((t.clone(), other_type)).or_default() += 1;
        }
    }
    // vm-a1 ← port-a1 → net-a, and vol-a1 → vm-a1 (cinder.sh, neutron.sh).
    let port_a1 = view
        .iter()
        .find(|e| e.entity_type() == "neutron.port" && e.name() == "port-a1")
        .expect("port-a1");
    assert!(
        port_a1
            .relations()
            .iter()
            .any(|r| r.kind() == "attached" && r.other() == vm_a1),
        "{port_a1:?}"
    );
    let vol_a1 = view
        .iter()
        .find(|e| e.entity_type() == "cinder.volume" && e.name() == "vol-a1")
        .expect("vol-a1");
    assert_eq!(
        vol_a1
            .relations()
            .iter()
            .map(|r| (r.kind(), r.other()))
            .collect::<Vec<_>>(),
        vec![("attached", vm_a1.as_str())]
    );
    for pair in [
        ("neutron.port", "neutron.network"),
        ("neutron.port", "nova.instance"),
        ("cinder.volume", "nova.instance"),
    ] {
        assert!(
            resolved.contains_key(&(pair.0.to_owned(), pair.1.to_owned())),
            "{pair:?} resolved: {resolved:?}"
        );
    }
    sync.shutdown().await;
    delete_queues(&vhost, &tag);
}
