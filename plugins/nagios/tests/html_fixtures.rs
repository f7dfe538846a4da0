//! status.cgi pages from a real Nagios 4.4.6, from Vitrage's Nagios 3.5 mock and from the
//! test Nagios of scripts/nagios: the exact entries parsed, and the alarms mapped.

use synchronizer_nagios::{
    AlarmState::{self, *},
    Attempt, CheckTime, HostRules, HtmlError, ServiceStatus, parse_status_page,
};

/// A service row as status.cgi shows it.
fn html_row(
    host: &str,
    service: &str,
    state: AlarmState,
    last_check: &str,
    duration: &str,
    attempt: (u32, u32),
    output: &str,
) -> ServiceStatus {
    ServiceStatus {
        host: host.into(),
        service: Some(service.into()),
        state,
        output: output.into(),
        last_check: Some(CheckTime::Local(last_check.into())),
        duration: Some(duration.into()),
        last_state_change: None,
        attempt: Some(Attempt {
            current: attempt.0,
            max: attempt.1,
        }),
        state_type: None,
    }
}

const NAGIOS4: &[u8] = include_bytes!("fixtures/nagios4/status-host-all.html");
const VITRAGE_MOCK: &[u8] = include_bytes!("fixtures/vitrage/nagios-mock.html");
const LIVE: &[u8] = include_bytes!("fixtures/nagios4-live/status-host-all.html");
const LIVE_LIMIT4: &[u8] = include_bytes!("fixtures/nagios4-live/status-host-all-limit4.html");

#[test]
fn nagios4_capture_parses_to_its_eleven_services() {
    let t = "11-25-2026 02:43:10";
    let expected = vec![
        html_row(
            "compute-0",
            "CPU load",
            Warning,
            t,
            "0d  0h  2m 10s",
            (4, 4),
            "WARNING: load average 7.1",
        ),
        html_row(
            "compute-0",
            "Disk usage",
            Critical,
            t,
            "0d  0h  2m 10s",
            (4, 4),
            "CRITICAL: disk 97% full",
        ),
        html_row(
            "compute-1",
            "CPU load",
            Ok,
            t,
            "0d  0h  5m 10s",
            (1, 4),
            "OK: load average 0.2",
        ),
        html_row(
            "localhost",
            "Current Load",
            Ok,
            "11-25-2026 02:41:25",
            "0d  0h  6m 10s+",
            (1, 4),
            "LOAD OK - total load average: 0.02, 0.10, 0.09",
        ),
        html_row(
            "localhost",
            "Current Users",
            Ok,
            "11-25-2026 02:38:35",
            "0d  0h  6m 10s+",
            (1, 4),
            "USERS OK - 0 users currently logged in",
        ),
        html_row(
            "localhost",
            "HTTP",
            Ok,
            "11-25-2026 02:39:39",
            "0d  0h  6m 10s+",
            (1, 4),
            "HTTP OK: HTTP/1.1 200 OK - 10975 bytes in 0.002 second response time",
        ),
        html_row(
            "localhost",
            "PING",
            Ok,
            "11-25-2026 02:40:43",
            "0d  0h  6m 10s+",
            (1, 4),
            "PING OK - Packet loss = 0%, RTA = 0.05 ms",
        ),
        html_row(
            "localhost",
            "Root Partition",
            Ok,
            "11-25-2026 02:41:47",
            "0d  0h  6m 10s+",
            (1, 4),
            "DISK OK - free space: / 81052MiB (87% inode=97%):",
        ),
        html_row(
            "localhost",
            "SSH",
            Critical,
            "11-25-2026 02:41:56",
            "0d  0h  1m 24s",
            (4, 4),
            "connect to address 127.0.0.1 and port 22: Connection refused",
        ),
        html_row(
            "localhost",
            "Swap Usage",
            Critical,
            "11-25-2026 02:43:00",
            "0d  0h  0m 20s",
            (4, 4),
            "SWAP CRITICAL - 0% free (0MB out of 0MB) - Swap is either disabled, not present, or of zero size.",
        ),
        html_row(
            "localhost",
            "Total Processes",
            Ok,
            "11-25-2026 02:41:04",
            "0d  0h  6m 10s+",
            (1, 4),
            "PROCS OK: 0 processes with STATE = RSZDT",
        ),
    ];
    let parsed = parse_status_page(NAGIOS4).expect("the capture parses");
    assert_eq!(parsed, expected);
    // As the fixtures README says of Vitrage's parser: 3 on the compute hosts, 8 on localhost.
    assert_eq!(
        parsed
            .iter()
            .filter(|s| s.host.starts_with("compute-"))
            .count(),
        3
    );
    assert_eq!(parsed.iter().filter(|s| s.host == "localhost").count(), 8);
}

#[test]
fn vitrage_mock_parses_like_vitrage_does() {
    // Vitrage's test_nagios_parser expects, among others (its values keep the leading
    // space of the duration and the trailing U+00A0 of the output, trimmed here):
    //   compute-0-0.local / CPU load / WARNING / 2016-02-09 13:05:32 / " 8d  2h 16m 33s" / 1/1 / "high CPU load\xa0"
    //   compute-0-1.local / check_load / CRITICAL / 2016-02-16 14:27:06 / " 1d  0h 54m 59s" / 1/1 / "Critical Error\xa0"
    //   compute-0-0.local / Disk IO SUMMARY / OK / 2016-02-17 15:21:22 / "14d  1h 28m 34s" / 1/1 / "OK - 0.00 B/sec read, ..."
    let expected = vec![
        html_row(
            "compute-0-0.local",
            "CPU load",
            Warning,
            "2016-02-09 13:05:32",
            "8d  2h 16m 33s",
            (1, 1),
            "high CPU load",
        ),
        html_row(
            "compute-0-0.local",
            "CPU utilization",
            Ok,
            "2016-02-17 15:21:22",
            "14d  1h 29m 34s",
            (1, 1),
            "OK - user: 0.5%, system: 0.4%, wait: 2.4%, total: 3.3%",
        ),
        html_row(
            "compute-0-0.local",
            "Disk IO SUMMARY",
            Ok,
            "2016-02-17 15:21:22",
            "14d  1h 28m 34s",
            (1, 1),
            "OK - 0.00 B/sec read, 1.84 MB/sec write, IOs: 89.00/sec",
        ),
        html_row(
            "compute-0-1.local",
            "CPU load",
            Ok,
            "2016-02-17 15:21:22",
            "0d  1h 48m 43s",
            (1, 1),
            "OK - 15min load 1.27 at 24 CPUs",
        ),
        html_row(
            "compute-0-1.local",
            "CPU utilization",
            Ok,
            "2016-02-17 15:21:22",
            "14d  1h 29m 19s",
            (1, 1),
            "OK - user: 0.5%, system: 0.4%, wait: 2.2%, total: 3.1%",
        ),
        html_row(
            "compute-0-1.local",
            "check_load",
            Critical,
            "2016-02-16 14:27:06",
            "1d  0h 54m 59s",
            (1, 1),
            "Critical Error",
        ),
        html_row(
            "os-ceilometer-00.local",
            "CPU load",
            Ok,
            "2016-02-17 15:21:51",
            "14d  0h 48m  4s",
            (1, 1),
            "OK - 15min load 0.36 at 2 CPUs",
        ),
        html_row(
            "os-ceilometer-00.local",
            "CPU utilization",
            Ok,
            "2016-02-17 15:21:51",
            "14d  0h 48m  4s",
            (1, 1),
            "OK - user: 2.7%, system: 1.0%, wait: 0.1%, total: 3.8%",
        ),
        html_row(
            "os-ceilometer-01.local",
            "CPU load",
            Ok,
            "2016-02-17 15:21:51",
            "14d  0h 48m  2s",
            (1, 1),
            "OK - 15min load 0.44 at 2 CPUs",
        ),
        html_row(
            "os-ceilometer-01.local",
            "CPU utilization",
            Ok,
            "2016-02-17 15:21:51",
            "14d  0h 48m  2s",
            (1, 1),
            "OK - user: 2.7%, system: 1.1%, wait: 0.2%, total: 4.1%",
        ),
    ];
    assert_eq!(
        parse_status_page(VITRAGE_MOCK).expect("the mock parses"),
        expected
    );
}

#[test]
fn nagios4_capture_maps_to_four_alarms() {
    let parsed = parse_status_page(NAGIOS4).expect("parses");
    let alarms = HostRules::default().map_alarms(&parsed);
    let got: Vec<(&str, &str, AlarmState, &str)> = alarms
        .iter()
        .map(|a| {
            (
                a.native_id.as_str(),
                a.resource_key.as_str(),
                a.status.state,
                a.status.output.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "compute-0;CPU load",
                "nova.host:compute-0",
                Warning,
                "WARNING: load average 7.1"
            ),
            (
                "compute-0;Disk usage",
                "nova.host:compute-0",
                Critical,
                "CRITICAL: disk 97% full"
            ),
            (
                "localhost;SSH",
                "nova.host:localhost",
                Critical,
                "connect to address 127.0.0.1 and port 22: Connection refused"
            ),
            (
                "localhost;Swap Usage",
                "nova.host:localhost",
                Critical,
                "SWAP CRITICAL - 0% free (0MB out of 0MB) - Swap is either disabled, not present, or of zero size."
            ),
        ]
    );
}

/// (host, service, state, output) of each entry.
fn summary(entries: &[ServiceStatus]) -> Vec<(String, Option<String>, AlarmState, String)> {
    entries
        .iter()
        .map(|s| (s.host.clone(), s.service.clone(), s.state, s.output.clone()))
        .collect()
}

#[test]
fn live_capture_with_down_and_unreachable_hosts() {
    let parsed = parse_status_page(LIVE).expect("parses");
    let s = |h: &str, sv: Option<&str>, st: AlarmState, o: &str| {
        (h.to_owned(), sv.map(str::to_owned), st, o.to_owned())
    };
    assert_eq!(
        summary(&parsed),
        vec![
            s(
                "compute-0",
                Some("CPU load"),
                Warning,
                "WARNING: load average 7.1 & rising <fast> \"quoted\" 'single'"
            ),
            s(
                "compute-0",
                Some("Disk usage"),
                Critical,
                "CRITICAL: disk 97% full"
            ),
            s("compute-0", Some("Memory"), Ok, "OK: 10% used"),
            // status.cgi colours the host cell statusHOSTUNREACHABLE, without its output.
            s("compute-1", None, Unreachable, ""),
            s("compute-1", Some("CPU load"), Ok, "OK: load average 0.2"),
            s(
                "compute-1",
                Some("Disk usage"),
                Ok,
                "OK: température normale"
            ),
            s(
                "compute-1",
                Some("Memory"),
                Unknown,
                "UNKNOWN: cannot read /proc/meminfo"
            ),
            // An acknowledged DOWN host: statusHOSTDOWNACK.
            s("compute-2", None, Down, ""),
            s(
                "compute-2",
                Some("CPU load"),
                Critical,
                "CRITICAL: no answer from agent"
            ),
            s("compute-2", Some("Disk usage"), Ok, "OK: 40% full"),
            // The performance data after '|' is not part of the output.
            s("compute-2", Some("Memory"), Ok, "OK: 42% used"),
        ]
    );
    let host_entry = &parsed[3];
    assert_eq!(
        (
            host_entry.last_check.as_ref(),
            host_entry.duration.as_ref(),
            host_entry.attempt
        ),
        (None, None, None)
    );

    let alarms = HostRules::default().map_alarms(&parsed);
    let ids: Vec<&str> = alarms.iter().map(|a| a.native_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "compute-0;CPU load",
            "compute-0;Disk usage",
            "compute-1",
            "compute-1;Memory",
            "compute-2",
            "compute-2;CPU load"
        ]
    );
}

#[test]
fn live_capture_limited_to_four_results_is_refused() {
    assert_eq!(
        parse_status_page(LIVE_LIMIT4),
        Err(HtmlError::Paginated {
            first: 0,
            last: 4,
            total: 9
        })
    );
}
