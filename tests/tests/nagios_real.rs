//! The nagios plugin against a real Nagios 4 on loopback (Debian's nagios4, started by
//! `scripts/nagios/setup.sh`, which the README's test command runs). The tests drive
//! services and hosts through passive check results on the external command file and
//! assert the alarms the host reports: created, updated, deleted, through statusjson.cgi
//! and through status.cgi behind basic auth; a result checked 120 s ago (as NSCA or NRDP
//! deliver a buffered one) that changes an alarm or raises a cleared one again; two
//! instances reading the same Nagios, two entities per alarm that never flap.
//!
//! Each test drives hosts of its own (`scripts/nagios/nagios-test.cfg`) and looks only
//! at their alarms, so the tests run side by side on the one Nagios. Every state is
//! awaited through Nagios' own status (set-state.sh polls statusjson.cgi until it shows
//! the result with its check time), never by sleeping.

use std::process::Command;

use synchronizer::{Action, Event, SubscribeOptions, Synchronizer};
use synchronizer_test_kit::host::config;
use synchronizer_test_kit::paths::root;

/// Sets a state with a result checked now.
fn set_state(host: &str, service: &str, state: &str, output: &str) {
    set_state_checked(host, service, state, output, None);
}

/// Sets a state with a result checked at `check_time` (Unix seconds; `None`: now), and
/// waits until Nagios shows it.
fn set_state_checked(
    host: &str,
    service: &str,
    state: &str,
    output: &str,
    check_time: Option<u64>,
) {
    let script = root().join("scripts/nagios/set-state.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).args([host, service, state, output]);
    if let Some(t) = check_time {
        cmd.env("NAGIOS_CHECK_TIME", t.to_string());
    }
    let out = cmd.output().expect("runs set-state.sh");
    assert!(
        out.status.success(),
        "set-state.sh {host} {service} {state} failed (is the test Nagios running? scripts/nagios/setup.sh starts it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unix seconds, `ago` seconds before now.
fn seconds_ago(ago: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    now.as_secs() - ago
}

/// The Nagios host of an alarm id `<scope>/<host>;<service>` or `<scope>/<host>`.
fn host_of(id: &str) -> &str {
    let local = id.split_once('/').map_or(id, |(_, local)| local);
    local.split_once(';').map_or(local, |(host, _)| host)
}

/// The changes so far to alarms of the Nagios hosts `hosts`, sorted.
fn drain(sub: &mut synchronizer::Subscription, hosts: &[&str]) -> Changes {
    let mut out = Vec::new();
    while let Some(e) = sub.try_recv() {
        if let Event::Change(c) = e {
            if !hosts.contains(&host_of(c.entity.id())) {
                continue;
            }
            out.push((
                c.instance.to_string(),
                c.action,
                c.entity.id().to_owned(),
                c.entity.state().unwrap_or("").to_owned(),
            ));
        }
    }
    out.sort();
    out
}

const JSON: &str = r#"url = "http://127.0.0.1/cgi-bin/nagios4""#;
const HTML: &str = r#"url = "http://127.0.0.1/cgi-bin/nagios4-auth"
source = "html"
username = "nagiostest"
password = "nagiostest""#;

/// A host with the instances `(name, config table)`, polled only on request.
async fn start(instances: &[(&str, &str)]) -> Synchronizer {
    let mut toml = "[defaults]\ninterval = \"1h\"\ntimeout = \"10s\"\n".to_owned();
    for (name, table) in instances {
        toml.push_str(&format!(
            "\n[[instances]]\nname = \"{name}\"\nlibrary = \"libsynchronizer_nagios.so\"\n[instances.config]\n{table}\n"
        ));
    }
    Synchronizer::start(config(&toml)).await.expect("starts")
}

async fn poll(sync: &Synchronizer) {
    sync.get_all(&["nagios"]).await.expect("collects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_nagios_drives_alarms_through_the_host() {
    scenario("nagios-json", JSON).await;
    scenario("nagios-html", HTML).await;
}

async fn scenario(instance: &str, instance_config: &str) {
    const HOSTS: &[&str] = &["compute-0", "compute-1", "compute-2"];
    let both = |action: Action, id: &str, state: &str| {
        vec![(
            instance.to_owned(),
            action,
            format!("{instance}/{id}"),
            state.to_owned(),
        )]
    };
    // A known start: everything OK / UP.
    for host in ["compute-0", "compute-1", "compute-2"] {
        set_state(host, "-", "UP", "PING OK");
        for service in ["CPU load", "Disk usage", "Memory"] {
            set_state(host, service, "OK", "OK: fine");
        }
    }
    let sync = start(&[(instance, instance_config)]).await;
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["nagios"]));
    let poll = || poll(&sync);
    poll().await;
    assert_eq!(
        drain(&mut sub, HOSTS),
        vec![],
        "no alarms while everything is OK"
    );

    set_state("compute-1", "CPU load", "WARNING", "WARNING: load 7.5");
    poll().await;
    assert_eq!(
        drain(&mut sub, HOSTS),
        both(Action::Created, "compute-1;CPU load", "WARNING")
    );
    let alarm = sync
        .current(&["nagios"])
        .into_iter()
        .find(|e| e.id() == format!("{instance}/compute-1;CPU load"))
        .expect("alarm");
    assert_eq!(alarm.relations()[0].other(), "nova.host:compute-1");
    assert_eq!(alarm.properties()["output"], "WARNING: load 7.5");

    set_state("compute-1", "CPU load", "CRITICAL", "CRITICAL: load 42");
    set_state("compute-2", "-", "DOWN", "CRITICAL - Host Unreachable");
    poll().await;
    let mut want = both(Action::Updated, "compute-1;CPU load", "CRITICAL");
    want.extend(both(Action::Created, "compute-2", "DOWN"));
    want.sort();
    assert_eq!(drain(&mut sub, HOSTS), want);

    // A poll with nothing changed reports nothing.
    poll().await;
    assert_eq!(drain(&mut sub, HOSTS), vec![]);

    set_state("compute-1", "CPU load", "OK", "OK: load 0.5");
    set_state("compute-2", "-", "UP", "PING OK");
    poll().await;
    let mut want = both(Action::Deleted, "compute-1;CPU load", "CRITICAL");
    want.extend(both(Action::Deleted, "compute-2", "DOWN"));
    want.sort();
    assert_eq!(drain(&mut sub, HOSTS), want);
    sync.shutdown().await;
}

type Changes = Vec<(String, Action, String, String)>;

/// One instance watching one service of the test Nagios.
struct Watch {
    sync: Synchronizer,
    sub: synchronizer::Subscription,
    instance: &'static str,
    host: &'static str,
    service: &'static str,
}

impl Watch {
    /// Puts the service in OK, starts the instance and checks that it reports nothing.
    async fn start(
        instance: &'static str,
        table: &str,
        host: &'static str,
        service: &'static str,
    ) -> Watch {
        set_state(host, service, "OK", "OK: fine");
        let sync = start(&[(instance, table)]).await;
        let sub = sync.subscribe(&SubscribeOptions::types(&["nagios"]));
        let mut w = Watch {
            sync,
            sub,
            instance,
            host,
            service,
        };
        assert_eq!(w.step("OK", "OK: fine", 0).await, vec![], "{instance}");
        w
    }

    /// Sets the service's state with a result checked `ago` seconds ago, polls once, and
    /// returns the changes to the service's alarm.
    async fn step(&mut self, state: &str, output: &str, ago: u64) -> Changes {
        let at = (ago > 0).then(|| seconds_ago(ago));
        set_state_checked(self.host, self.service, state, output, at);
        poll(&self.sync).await;
        drain(&mut self.sub, &[self.host])
    }

    /// The alarm's id.
    fn id(&self) -> String {
        format!("{}/{};{}", self.instance, self.host, self.service)
    }

    /// One change to the alarm.
    fn change(&self, action: Action, state: &str) -> Changes {
        vec![(
            self.instance.to_owned(),
            action,
            self.id(),
            state.to_owned(),
        )]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_checked_120_s_ago_changes_the_alarm() {
    for (instance, table) in [("late-json", JSON), ("late-html", HTML)] {
        let mut w = Watch::start(instance, table, "late-0", "CPU load").await;
        let warning = w.step("WARNING", "WARNING: load 7.5", 0).await;
        assert_eq!(warning, w.change(Action::Created, "WARNING"));

        // A result that ran 120 s before the one Nagios holds, delivered late: Nagios
        // makes it the current state (and moves its last check back); so must we.
        let critical = w.step("CRITICAL", "CRITICAL: load 42", 120).await;
        assert_eq!(
            critical,
            w.change(Action::Updated, "CRITICAL"),
            "{instance}: the back-dated CRITICAL is what Nagios shows"
        );
        let current = w.sync.current(&["nagios"]);
        let e = current
            .iter()
            .find(|e| e.id() == w.id())
            .expect("the alarm");
        assert_eq!(e.state(), Some("CRITICAL"));
        assert_eq!(e.properties()["output"], "CRITICAL: load 42");

        let ok = w.step("OK", "OK: load 0.5", 0).await;
        assert_eq!(ok, w.change(Action::Deleted, "CRITICAL"));
        w.sync.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_cleared_and_raised_again_by_a_late_result_is_created_at_the_next_poll() {
    for (instance, table) in [("again-json", JSON), ("again-html", HTML)] {
        let mut w = Watch::start(instance, table, "late-1", "Disk usage").await;
        let warning = w.step("WARNING", "WARNING: 91% full", 0).await;
        assert_eq!(warning, w.change(Action::Created, "WARNING"));
        let ok = w.step("OK", "OK: 60% full", 0).await;
        assert_eq!(ok, w.change(Action::Deleted, "WARNING"));

        // Raised again by a result checked 120 s ago, before the clearing one: the next
        // complete snapshot shows the alarm, so it exists again.
        let again = w.step("CRITICAL", "CRITICAL: 99% full", 120).await;
        assert_eq!(
            again,
            w.change(Action::Created, "CRITICAL"),
            "{instance}: the alarm Nagios shows again is not re-created"
        );

        let ok = w.step("OK", "OK: 40% full", 0).await;
        assert_eq!(ok, w.change(Action::Deleted, "CRITICAL"));
        w.sync.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_reading_one_nagios_give_two_entities_per_alarm_that_never_flap() {
    const HOST: &[&str] = &["twin-0"];
    set_state("twin-0", "CPU load", "WARNING", "WARNING: load 7.5");
    set_state("twin-0", "Disk usage", "CRITICAL", "CRITICAL: 99% full");
    set_state("twin-0", "-", "DOWN", "CRITICAL - Host Unreachable");
    // statusjson.cgi and status.cgi, so the two report different content for one alarm
    // (status.cgi has no soft/hard, no host output): under one key they would take turns.
    // The second names its scope, the first's is its instance name.
    let html_scoped = format!("{HTML}\nscope = \"twin-html\"");
    let sync = start(&[("twin-json", JSON), ("twin-b", &html_scoped)]).await;
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["nagios"]));
    poll(&sync).await;
    let mut want = Vec::new();
    for (instance, scope) in [("twin-json", "twin-json"), ("twin-b", "twin-html")] {
        for (local, state) in [
            ("twin-0", "DOWN"),
            ("twin-0;CPU load", "WARNING"),
            ("twin-0;Disk usage", "CRITICAL"),
        ] {
            want.push((
                instance.to_owned(),
                Action::Created,
                format!("{scope}/{local}"),
                state.to_owned(),
            ));
        }
    }
    want.sort();
    assert_eq!(drain(&mut sub, HOST), want, "two entities per alarm");
    let current = sync.current(&["nagios"]);
    let twins: Vec<_> = current
        .iter()
        .filter(|e| host_of(e.id()) == "twin-0")
        .collect();
    assert_eq!(twins.len(), 6);
    assert!(
        twins
            .iter()
            .all(|e| e.relations()[0].other() == "nova.host:twin-0"),
        "both are on the one resource"
    );
    let props = |id: &str| {
        twins
            .iter()
            .find(|e| e.id() == id)
            .map(|e| e.properties())
            .unwrap_or_else(|| panic!("{id}"))
    };
    // Both sources now carry the same fields where the page has them (state type,
    // attempt, check time): the entities agree, and each instance still owns its own.
    assert_eq!(
        props("twin-json/twin-0;CPU load"),
        props("twin-html/twin-0;CPU load"),
        "the HTML and JSON sources give the same properties"
    );

    let mut later = Vec::new();
    for _ in 0..5 {
        poll(&sync).await;
        later.extend(drain(&mut sub, HOST));
    }
    assert_eq!(later, vec![], "changes after the first snapshot (5 polls)");

    set_state("twin-0", "CPU load", "OK", "OK: load 0.5");
    set_state("twin-0", "Disk usage", "OK", "OK: 40% full");
    set_state("twin-0", "-", "UP", "PING OK");
    poll(&sync).await;
    let gone = drain(&mut sub, HOST);
    assert_eq!(gone.len(), 6, "{gone:?}");
    assert!(gone.iter().all(|c| c.1 == Action::Deleted), "{gone:?}");
    sync.shutdown().await;
}
