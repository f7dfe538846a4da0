//! Against a real Nova 30.3 on loopback (noauth2, two fake computes in az1 / az2), started
//! by `scripts/openstack/nova.sh` (run `scripts/openstack/test-real.sh`, which starts it and
//! sets the environment). Marked `#[ignore]` so that a plain `cargo test` reports it as
//! ignored, never as passed; `scripts/test.sh` runs it with `--ignored` once the services
//! are up, and it fails when `SYNCHRONIZER_REAL_NOVA` is not set.

use serde_json::{Value, json};
use synchronizer::{Action, SubscribeOptions, Synchronizer};
use synchronizer_nova::{Config, NovaPlugin};
use synchronizer_test_kit::host::queued as drain;
use synchronizer_test_kit::nova::lab::{Api, poll};
use synchronizer_test_kit::paths::plugin_library;

const TYPES: [&str; 3] = ["nova.instance", "nova.host", "nova.zone"];

fn config(nova: &str, token: &str) -> Value {
    json!({
        "cloud": {"auth": {"token": token}, "endpoint_override": nova, "timeout": "30s"},
        "page_size": 1
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real services: scripts/test.sh starts them and runs it with --ignored"]
async fn a_real_nova() {
    let api = Api::from_env();
    let nova = api.nova.clone();
    let all: Vec<String> = TYPES.iter().map(|t| (*t).to_owned()).collect();

    // A user without the admin role: Nova's policy refuses all_tenants.
    let user = NovaPlugin::from_config(
        serde_json::from_value::<Config>(config(&nova, "alice:projA")).unwrap(),
        "real",
    )
    .unwrap();
    let err = user
        .collect(&["nova.instance".to_owned()])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("HTTP 403 Forbidden"), "{err}");
    assert!(
        err.contains("os_compute_api:servers:detail:get_all_tenants"),
        "{err}"
    );
    assert!(
        err.contains("the account lacks the role or policy"),
        "{err}"
    );

    // Start from the state nova.sh leaves: an earlier run may have stopped here.
    for name in ["vm-a1", "vm-a2", "vm-b1"] {
        let id = api.id_of(name).await;
        if api.server(&id).await.unwrap()["status"] == "SHUTOFF" {
            api.act_until(&id, json!({"os-start": null}), "ACTIVE")
                .await;
        }
    }

    // The admin: every server (one per page), both hosts in their zones, no `internal`.
    let admin = NovaPlugin::from_config(
        serde_json::from_value::<Config>(config(&nova, "admin:admin")).unwrap(),
        "real",
    )
    .unwrap();
    let s = admin.collect(&all).await.unwrap();
    let find = |key: &str| s.entities().iter().find(|e| e.key() == key).cloned();
    let zones: Vec<String> = s
        .entities()
        .iter()
        .filter(|e| e.entity_type() == "nova.zone")
        .map(|e| e.key())
        .collect();
    assert!(
        zones.contains(&"nova.zone:az1".to_owned()) && zones.contains(&"nova.zone:az2".to_owned()),
        "{zones:?}"
    );
    assert!(!zones.iter().any(|z| z.ends_with(":internal")), "{zones:?}");
    for (host, zone, ip) in [
        ("compute1", "az1", "127.0.0.1"),
        ("compute2", "az2", "127.0.0.2"),
    ] {
        let h = find(&format!("nova.host:{host}")).unwrap_or_else(|| panic!("{host} missing"));
        assert_eq!(h.state(), Some("up"));
        assert_eq!(h.relations()[0].other(), format!("nova.zone:{zone}"));
        // The hypervisor's host_ip: the compute's my_ip (scripts/openstack/nova.sh).
        assert_eq!(h.properties()["host_ip"], ip, "{host}");
    }
    let mut domains = Vec::new();
    for name in ["vm-a1", "vm-a2", "vm-b1"] {
        let id = api.id_of(name).await;
        let e = find(&format!("nova.instance:{id}")).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(e.name(), name);
        assert_eq!(e.state(), Some("ACTIVE"));
        assert_eq!(e.properties()["vm_state"], "active");
        let host = e.properties()["host"].as_str().unwrap().to_owned();
        assert_eq!(e.relations()[0].other(), format!("nova.host:{host}"));
        // The libvirt domain name, `instance-%08x` of the cell's database id.
        let domain = e.properties()["instance_name"].as_str().unwrap().to_owned();
        assert!(
            domain.len() == 17 && domain.starts_with("instance-"),
            "{name}: {domain}"
        );
        domains.push(domain);
        assert_eq!(
            e.project(),
            Some(if name.starts_with("vm-a") {
                "projA"
            } else {
                "projB"
            })
        );
    }
    domains.sort();
    domains.dedup();
    assert_eq!(
        domains.len(),
        3,
        "one domain per scheduled server: {domains:?}"
    );

    // Through the host: stop vm-a2 (updated), start it again (updated), boot a server
    // (created) and delete it (deleted), each between two polls.
    let toml = format!(
        r#"
types = ["nova.instance", "nova.host", "nova.zone"]
[[instances]]
name = "nova-real"
library = "{}"
interval = "1h"
jitter = "0s"
timeout = "60s"
[instances.config]
page_size = 2
[instances.config.cloud]
endpoint_override = "{nova}"
[instances.config.cloud.auth]
token = "admin:admin"
"#,
        plugin_library("synchronizer_nova").display()
    );
    let sync = Synchronizer::start(synchronizer::Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    poll(&sync, &TYPES).await;
    let mut sub = sync.subscribe(&SubscribeOptions::types(&TYPES));
    let a2 = api.id_of("vm-a2").await;
    let key = format!("nova.instance:{a2}");

    api.act_until(&a2, json!({"os-stop": null}), "SHUTOFF")
        .await;
    poll(&sync, &TYPES).await;
    assert_eq!(
        drain(&mut sub),
        vec![(Action::Updated, key.clone(), Some("SHUTOFF".into()))]
    );

    api.act_until(&a2, json!({"os-start": null}), "ACTIVE")
        .await;
    poll(&sync, &TYPES).await;
    assert_eq!(
        drain(&mut sub),
        vec![(Action::Updated, key.clone(), Some("ACTIVE".into()))]
    );

    // The image of vm-a2 (Nova's own image proxy is gone since microversion 2.36).
    let image = api.server(&a2).await.unwrap()["image"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let probe = api
        .boot(&format!("probe-{}", std::process::id()), &image)
        .await;
    poll(&sync, &TYPES).await;
    assert_eq!(
        drain(&mut sub),
        vec![(
            Action::Created,
            format!("nova.instance:{probe}"),
            Some("ACTIVE".into())
        )]
    );

    api.delete(&probe).await;
    poll(&sync, &TYPES).await;
    assert_eq!(
        drain(&mut sub),
        vec![(
            Action::Deleted,
            format!("nova.instance:{probe}"),
            Some("ACTIVE".into())
        )]
    );
    sync.shutdown().await;
}
