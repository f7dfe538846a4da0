//! The collector against the project's real Nagios 4 (scripts/nagios/setup.sh, objects of
//! nagios-test.cfg and nagios-fidelity.cfg): `pending-0;Never checked` has never had a
//! result, so Nagios shows it PENDING; both sources report it as Vitrage does (or not,
//! with `pending = "skip"`), and give every alarm the same fields and check time.

use synchronizer_nagios::plugin::{Config, Nagios};
use synchronizer_plugin_api::{Context, Entity, Plugin};

async fn snapshot(extra: serde_json::Value) -> Vec<Entity> {
    let mut config = serde_json::json!({"url": "http://127.0.0.1/cgi-bin/nagios4"});
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    let config: Config = serde_json::from_value(config).unwrap();
    let n = Nagios::new(
        config,
        &Context {
            instance: "real".into(),
        },
    )
    .unwrap();
    n.snapshot(&[])
        .await
        .expect("the test Nagios answers (run scripts/nagios/setup.sh as root)")
        .entities()
        .to_vec()
}

fn find<'a>(entities: &'a [Entity], id: &str) -> Option<&'a Entity> {
    entities.iter().find(|e| e.id() == id)
}

#[tokio::test]
async fn a_never_checked_service_is_a_pending_alarm_in_both_sources() {
    for source in ["json", "html"] {
        let all = snapshot(serde_json::json!({"source": source})).await;
        let e = find(&all, "real/pending-0;Never checked")
            .unwrap_or_else(|| panic!("{source}: the PENDING service is an alarm"));
        assert_eq!(e.state(), Some("PENDING"), "{source}");
        assert_eq!(e.relations()[0].other(), "nova.host:pending-0");
        assert_eq!(e.source_updated_micros(), None, "{source}: never checked");
        let skipped = snapshot(serde_json::json!({"source": source, "pending": "skip"})).await;
        assert!(
            find(&skipped, "real/pending-0;Never checked").is_none(),
            "{source}: skip"
        );
    }
}

#[tokio::test]
async fn html_and_json_alarms_carry_the_same_fields() {
    let json = snapshot(serde_json::json!({"source": "json"})).await;
    let html = snapshot(serde_json::json!({"source": "html"})).await;
    let mut compared = 0;
    for h in &html {
        let props = h.properties();
        if props["service"].is_null() {
            continue; // status.cgi shows no host output nor attempt
        }
        let j = find(&json, h.id()).unwrap_or_else(|| panic!("{} in json", h.id()));
        let jp = j.properties();
        for field in ["state_type", "attempt", "host", "service"] {
            assert_eq!(props[field], jp[field], "{}: {field}", h.id());
        }
        assert!(!props["attempt"].is_null(), "{}: attempt", h.id());
        assert_eq!(
            h.source_updated_micros(),
            j.source_updated_micros(),
            "{}: the same check time from both pages",
            h.id()
        );
        compared += 1;
    }
    assert!(
        compared > 0,
        "the test Nagios has alarms: at least pending-0's"
    );
}
