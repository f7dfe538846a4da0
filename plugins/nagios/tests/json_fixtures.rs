//! statusjson.cgi answers from a real Nagios 4.4.6 and from the test Nagios of
//! scripts/nagios: the exact entries parsed, agreement with status.cgi, and what Nagios
//! makes of late, back-dated passive results.

use synchronizer_nagios::{
    AlarmState::{self, *},
    Attempt, CheckTime, HostRules, ServiceStatus, StateType, parse_hostlist, parse_servicelist,
    parse_status_page,
};

/// A service (or, with `service` None, a host) as statusjson.cgi gives it: always hard
/// in these captures.
fn json_entry(
    host: &str,
    service: Option<&str>,
    state: AlarmState,
    last_check_ms: i64,
    last_state_change_ms: Option<i64>,
    attempt: (u32, u32),
    output: &str,
) -> ServiceStatus {
    ServiceStatus {
        host: host.into(),
        service: service.map(Into::into),
        state,
        output: output.into(),
        last_check: Some(CheckTime::UnixMillis(last_check_ms)),
        duration: None,
        last_state_change: last_state_change_ms,
        attempt: Some(Attempt {
            current: attempt.0,
            max: attempt.1,
        }),
        state_type: Some(StateType::Hard),
    }
}

const SERVICELIST: &[u8] = include_bytes!("fixtures/nagios4/statusjson-servicelist.json");
const HOSTLIST: &[u8] = include_bytes!("fixtures/nagios4/statusjson-hostlist.json");
const STATUS_HTML: &[u8] = include_bytes!("fixtures/nagios4/status-host-all.html");
const LIVE_SERVICELIST: &[u8] = include_bytes!("fixtures/nagios4-live/statusjson-servicelist.json");
const LIVE_HOSTLIST: &[u8] = include_bytes!("fixtures/nagios4-live/statusjson-hostlist.json");
const LIVE_HTML: &[u8] = include_bytes!("fixtures/nagios4-live/status-host-all.html");

#[test]
fn servicelist_capture_parses_to_its_eleven_services() {
    let list = parse_servicelist(SERVICELIST).expect("parses");
    let lsc = 1_795_574_470_000;
    let expected = vec![
        json_entry(
            "compute-0",
            Some("CPU load"),
            Warning,
            1_795_574_590_000,
            Some(lsc),
            (4, 4),
            "WARNING: load average 7.1",
        ),
        json_entry(
            "compute-0",
            Some("Disk usage"),
            Critical,
            1_795_574_590_000,
            Some(lsc),
            (4, 4),
            "CRITICAL: disk 97% full",
        ),
        json_entry(
            "compute-1",
            Some("CPU load"),
            Ok,
            1_795_574_590_000,
            Some(1_795_574_290_000),
            (1, 4),
            "OK: load average 0.2",
        ),
        json_entry(
            "localhost",
            Some("Current Load"),
            Ok,
            1_795_574_485_000,
            None,
            (1, 4),
            "LOAD OK - total load average: 0.02, 0.10, 0.09",
        ),
        json_entry(
            "localhost",
            Some("Current Users"),
            Ok,
            1_795_574_315_000,
            None,
            (1, 4),
            "USERS OK - 0 users currently logged in",
        ),
        json_entry(
            "localhost",
            Some("HTTP"),
            Ok,
            1_795_574_379_000,
            None,
            (1, 4),
            "HTTP OK: HTTP/1.1 200 OK - 10975 bytes in 0.002 second response time",
        ),
        json_entry(
            "localhost",
            Some("PING"),
            Ok,
            1_795_574_443_000,
            None,
            (1, 4),
            "PING OK - Packet loss = 0%, RTA = 0.05 ms",
        ),
        json_entry(
            "localhost",
            Some("Root Partition"),
            Ok,
            1_795_574_507_000,
            None,
            (1, 4),
            "DISK OK - free space: / 81052MiB (87% inode=97%):",
        ),
        json_entry(
            "localhost",
            Some("SSH"),
            Critical,
            1_795_574_516_000,
            Some(1_795_574_516_000),
            (4, 4),
            "connect to address 127.0.0.1 and port 22: Connection refused",
        ),
        json_entry(
            "localhost",
            Some("Swap Usage"),
            Critical,
            1_795_574_580_000,
            Some(1_795_574_580_000),
            (4, 4),
            "SWAP CRITICAL - 0% free (0MB out of 0MB) - Swap is either disabled, not present, or of zero size.",
        ),
        json_entry(
            "localhost",
            Some("Total Processes"),
            Ok,
            1_795_574_464_000,
            None,
            (1, 4),
            "PROCS OK: 0 processes with STATE = RSZDT",
        ),
    ];
    assert_eq!(list.entries, expected);
    assert_eq!(list.query_time, Some(1_795_574_600_000));
    assert_eq!(list.last_data_update, Some(1_795_574_600_000));
}

#[test]
fn hostlist_capture_parses_to_three_up_hosts() {
    let list = parse_hostlist(HOSTLIST).expect("parses");
    let expected = vec![
        json_entry(
            "compute-0",
            None,
            Up,
            1_795_574_590_000,
            Some(1_795_574_230_000),
            (1, 10),
            "PING OK - Packet loss = 0%, RTA = 0.05 ms",
        ),
        json_entry(
            "compute-1",
            None,
            Up,
            1_795_574_590_000,
            Some(1_795_574_290_000),
            (1, 10),
            "PING OK - Packet loss = 0%, RTA = 0.11 ms",
        ),
        json_entry(
            "localhost",
            None,
            Up,
            1_795_574_400_000,
            Some(1_795_574_315_000),
            (1, 10),
            "PING OK - Packet loss = 0%, RTA = 0.03 ms",
        ),
    ];
    assert_eq!(list.entries, expected);
    assert_eq!(list.query_time, Some(1_795_574_605_000));
    assert!(HostRules::default().map_alarms(&list.entries).is_empty());
}

/// (host, service, state, output, attempt) of each entry.
fn essentials(
    entries: &[ServiceStatus],
) -> Vec<(String, Option<String>, AlarmState, String, String)> {
    entries
        .iter()
        .map(|s| {
            (
                s.host.clone(),
                s.service.clone(),
                s.state,
                s.output.clone(),
                s.attempt.map(|a| a.to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn html_and_json_captures_agree() {
    let html = parse_status_page(STATUS_HTML).expect("html parses");
    let json = parse_servicelist(SERVICELIST).expect("json parses").entries;
    assert_eq!(essentials(&html), essentials(&json));
    // The Nagios ran in UTC with date_format=us: the same instants.
    for (h, j) in html.iter().zip(&json) {
        let (Some(CheckTime::Local(local)), Some(unix)) = (&h.last_check, &j.last_check) else {
            panic!("both have a last check: {h:?} {j:?}");
        };
        let rfc = unix.to_string(); // 2026-11-25T02:43:10Z
        let us = format!(
            "{}-{}-{} {}",
            &rfc[5..7],
            &rfc[8..10],
            &rfc[0..4],
            &rfc[11..19]
        );
        assert_eq!(local, &us);
    }
}

#[test]
fn live_html_and_json_agree_but_for_non_ascii_output() {
    let html = parse_status_page(LIVE_HTML).expect("html parses");
    let services = parse_servicelist(LIVE_SERVICELIST)
        .expect("json parses")
        .entries;
    let hosts = parse_hostlist(LIVE_HOSTLIST)
        .expect("hostlist parses")
        .entries;

    // Nagios 4.4.6's statusjson.cgi blanks a plugin output that is not ASCII (status.cgi
    // shows it): a known limit of choosing the JSON source.
    let temp = services
        .iter()
        .find(|s| s.host == "compute-1" && s.service.as_deref() == Some("Disk usage"))
        .expect("compute-1 Disk usage");
    assert_eq!(temp.output, "");
    let html_services: Vec<ServiceStatus> = html
        .iter()
        .filter(|s| s.service.is_some())
        .cloned()
        .map(|mut s| {
            if s.output == "OK: température normale" {
                s.output.clear();
            }
            s
        })
        .collect();
    assert_eq!(essentials(&html_services), essentials(&services));

    // The hosts in alarm are the same; hostlist also has the output and the UP host.
    let html_hosts: Vec<(&str, AlarmState)> = html
        .iter()
        .filter(|s| s.is_host())
        .map(|s| (s.host.as_str(), s.state))
        .collect();
    let json_hosts: Vec<(&str, AlarmState, &str)> = hosts
        .iter()
        .map(|s| (s.host.as_str(), s.state, s.output.as_str()))
        .collect();
    assert_eq!(
        html_hosts,
        vec![("compute-1", Unreachable), ("compute-2", Down)]
    );
    assert_eq!(
        json_hosts,
        vec![
            ("compute-0", Up, "PING OK - Packet loss = 0%, RTA = 0.05 ms"),
            (
                "compute-1",
                Unreachable,
                "CRITICAL - Network Unreachable (127.0.0.1)"
            ),
            ("compute-2", Down, "CRITICAL - Host Unreachable (127.0.0.1)"),
        ]
    );
}

/// The captures of late, back-dated results (fixtures/nagios4-late): the step name and
/// its servicelist and status.cgi page.
const LATE: [(&str, &[u8], &[u8]); 5] = [
    (
        "0-ok",
        include_bytes!("fixtures/nagios4-late/0-ok.servicelist.json"),
        include_bytes!("fixtures/nagios4-late/0-ok.status.html"),
    ),
    (
        "1-raised",
        include_bytes!("fixtures/nagios4-late/1-raised.servicelist.json"),
        include_bytes!("fixtures/nagios4-late/1-raised.status.html"),
    ),
    (
        "2-backdated-critical",
        include_bytes!("fixtures/nagios4-late/2-backdated-critical.servicelist.json"),
        include_bytes!("fixtures/nagios4-late/2-backdated-critical.status.html"),
    ),
    (
        "3-cleared",
        include_bytes!("fixtures/nagios4-late/3-cleared.servicelist.json"),
        include_bytes!("fixtures/nagios4-late/3-cleared.status.html"),
    ),
    (
        "4-reraised-backdated",
        include_bytes!("fixtures/nagios4-late/4-reraised-backdated.servicelist.json"),
        include_bytes!("fixtures/nagios4-late/4-reraised-backdated.status.html"),
    ),
];

#[test]
fn a_late_result_becomes_the_state_and_moves_the_last_check_back() {
    let mut seen = Vec::new();
    for (step, json, html) in LATE {
        let services = parse_servicelist(json).expect(step).entries;
        let s = services
            .iter()
            .find(|s| s.host == "replay-0" && s.service.as_deref() == Some("CPU load"))
            .expect(step);
        let check = s.last_check.as_ref().and_then(CheckTime::unix_millis);
        seen.push((
            s.state,
            check.expect(step),
            s.last_state_change.expect(step),
        ));
        // Both CGIs show the same state at each step, and it is the only alarm.
        let page = parse_status_page(html).expect(step);
        let alarms = |l: &[ServiceStatus]| -> Vec<(String, AlarmState)> {
            l.iter()
                .filter(|s| s.is_alarm())
                .map(|s| (s.native_id(), s.state))
                .collect()
        };
        assert_eq!(alarms(&page), alarms(&services), "{step}");
        assert!(alarms(&services).len() <= 1, "{step}");
    }
    let states: Vec<AlarmState> = seen.iter().map(|s| s.0).collect();
    assert_eq!(states, vec![Ok, Warning, Critical, Ok, Warning]);
    // Steps 2 and 4 were checked 120 s before they were written: Nagios took them, and
    // moved the last check and the state change back, before the check they replaced.
    assert!(seen[2].1 < seen[1].1 - 100_000, "{seen:?}");
    assert!(seen[4].1 < seen[3].1 - 100_000, "{seen:?}");
    assert_eq!(seen[2].2, seen[2].1);
    assert_eq!(seen[4].2, seen[4].1);
}
