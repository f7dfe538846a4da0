//! Nagios status pages for the Nagios plugin's tests and benchmark: pages generated at
//! the shape of the real Nagios 4.4.6 captures in `plugins/nagios/tests/fixtures/nagios4/`
//! (the same markup per row of status.cgi, the same detail fields and formatting per
//! service of statusjson.cgi, only more of them), and edits of a captured page.

use std::fmt::Write as _;

/// Replaces the one occurrence of `from` in `page` (panics if it is not there exactly once).
pub fn replace_once(page: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = std::str::from_utf8(page).expect("fixture is UTF-8");
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} should occur exactly once in the fixture"
    );
    text.replacen(from, to, 1).into_bytes()
}

/// Replaces every occurrence of `from` (panics if there is none).
pub fn replace_all(page: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = std::str::from_utf8(page).expect("fixture is UTF-8");
    assert!(text.contains(from), "{from:?} should occur in the fixture");
    text.replace(from, to).into_bytes()
}

/// What a generated page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Number of hosts.
    pub hosts: usize,
    /// Services per host.
    pub services_per_host: usize,
}

impl Shape {
    /// 10,000 services: 500 hosts of 20 services.
    pub const TEN_THOUSAND: Shape = Shape {
        hosts: 500,
        services_per_host: 20,
    };

    /// Number of services.
    pub fn services(self) -> usize {
        self.hosts * self.services_per_host
    }
}

const SERVICE_NAMES: [&str; 20] = [
    "CPU load",
    "Disk usage",
    "Current Load",
    "Current Users",
    "HTTP",
    "PING",
    "Root Partition",
    "SSH",
    "Swap Usage",
    "Total Processes",
    "Memory",
    "Disk IO SUMMARY",
    "CPU utilization",
    "Interface eth0",
    "Interface eth1",
    "NTP",
    "Uptime",
    "TCP Connections",
    "nova-compute",
    "libvirtd",
];

/// The state of service `i` of host `h`: mostly OK, with 3% WARNING, 2% CRITICAL and
/// 1% UNKNOWN, spread over the hosts.
pub fn state_of(h: usize, i: usize) -> &'static str {
    match (h * 31 + i * 7) % 100 {
        0..=2 => "WARNING",
        3..=4 => "CRITICAL",
        5 => "UNKNOWN",
        _ => "OK",
    }
}

/// Whether host `h` is DOWN (one host in fifty).
pub fn host_down(h: usize) -> bool {
    h % 50 == 7
}

/// The name of host `h`: `compute-<h>`.
pub fn host_name(h: usize) -> String {
    format!("compute-{h}")
}

fn service_name(i: usize) -> String {
    let base = SERVICE_NAMES[i % SERVICE_NAMES.len()];
    if i < SERVICE_NAMES.len() {
        base.to_owned()
    } else {
        format!("{base} {}", i / SERVICE_NAMES.len())
    }
}

fn output_of(state: &str, i: usize) -> String {
    match state {
        "OK" => format!("OK - load average: 0.{i:02}, 0.10, 0.09"),
        "WARNING" => format!("WARNING - load average: 7.{i}, 6.2, 5.9 &amp; rising"),
        "CRITICAL" => {
            format!("CRITICAL - connect to address 127.0.0.1 and port {i}: Connection refused")
        }
        _ => "UNKNOWN - plugin timed out after 10 seconds".to_owned(),
    }
}

/// The expected number of alarms of a page of `shape`: services not OK, hosts DOWN.
pub fn expected_alarms(shape: Shape) -> usize {
    let mut n = 0;
    for h in 0..shape.hosts {
        if host_down(h) {
            n += 1;
        }
        n += (0..shape.services_per_host)
            .filter(|&i| state_of(h, i) != "OK")
            .count();
    }
    n
}

const HTML_HEAD: &str =
    include_str!("../../plugins/nagios/tests/fixtures/nagios4/status-host-all.html");

/// A `status.cgi?host=all&limit=0` page of `shape`, in the markup of the Nagios 4.4.6
/// capture: its header, its host and service cells, its separator rows, its footer.
pub fn status_html(shape: Shape) -> String {
    let header_end = HTML_HEAD
        .find("<th class='status'>Status Information</th>\n</tr>\n")
        .map(|i| i + "<th class='status'>Status Information</th>\n</tr>\n".len())
        .expect("header row in the capture");
    let mut page = String::with_capacity(shape.services() * 1100 + 8192);
    page.push_str(&HTML_HEAD[..header_end]);
    let mut odd = false;
    for h in 0..shape.hosts {
        let host = host_name(h);
        if h > 0 {
            page.push_str("<tr><td colspan='6'></td></tr>\n<tr><td colspan='6'></td></tr>\n");
        }
        for i in 0..shape.services_per_host {
            odd = !odd;
            let even_odd = if odd { "Even" } else { "Odd" };
            let state = state_of(h, i);
            let bg = match state {
                "OK" => even_odd.to_owned(),
                s => format!("BG{s}"),
            };
            let service = service_name(i);
            page.push_str("<tr>\n");
            if i == 0 {
                let host_class = if host_down(h) { "HOSTDOWN" } else { even_odd };
                let _ = write!(
                    page,
                    "<td class='status{host_class}'><table border=0 width='100%' cellpadding=0 cellspacing=0>\n<tr>\n<td align='left'>\n<table border=0 cellpadding=0 cellspacing=0>\n<tr>\n<td align=left valign=center class='status{host_class}'><a href='extinfo.cgi?type=1&host={host}' title='127.0.0.1'>{host}</a></td>\n</tr>\n</table>\n</td>\n<td align=right valign=center>\n<table border=0 cellpadding=0 cellspacing=0>\n<tr>\n</tr>\n</table>\n</td>\n</tr>\n</table>\n</td>\n"
                );
            } else {
                page.push_str("<td></td>\n");
            }
            let icons = if i % 10 == 4 {
                format!(
                    "<td ALIGN=center valign=center><a href='extinfo.cgi?type=2&host={host}&service={}'><IMG SRC='/nagios4/images/ndisabled.gif' border=0 WIDTH=20 HEIGHT=20 ALT='Notifications for this service have been disabled' TITLE='Notifications for this service have been disabled'></a></td>",
                    service.replace(' ', "+")
                )
            } else {
                String::new()
            };
            let (attempt, duration) = if state == "OK" {
                ("1/4", " 0d  0h  6m 10s+")
            } else {
                ("4/4", " 0d  0h  2m 10s")
            };
            let _ = write!(
                page,
                "<td class='status{bg}'><table border=0 WIDTH='100%' cellspacing=0 cellpadding=0><tr><td align='left'><table border=0 cellspacing=0 cellpadding=0>\n<tr>\n<td align='left' valign=center class='status{bg}'><a href='extinfo.cgi?type=2&host={host}&service={url}'>{service}</a></td></tr>\n</table>\n</td>\n<td ALIGN=RIGHT class='status{bg}'>\n<table border=0 cellspacing=0 cellpadding=0>\n<tr>\n{icons}</tr>\n</table>\n</td>\n</tr></table></td>\n<td class='status{state}'>{state}</td>\n<td class='status{bg}' nowrap>11-25-2026 02:43:10</td>\n<td class='status{bg}' nowrap>{duration}</td>\n<td class='status{bg}'>{attempt}</td>\n<td class='status{bg}' valign='center'>{output}&nbsp;</td>\n</tr>\n",
                url = service.replace(' ', "+"),
                output = output_of(state, i),
            );
        }
    }
    let n = shape.services();
    let _ = write!(
        page,
        "</table>\n<br /><div class='itemTotalsTitle'>Results 1 - {n} of {n} Matching Services</div>\n</div>\n\n<!-- Produced by Nagios (https://www.nagios.org).  Copyright (c) 1999-2007 Ethan Galstad. -->\n</body>\n</html>\n"
    );
    page
}

/// A `statusjson.cgi?query=servicelist&details=true` answer of `shape`, with every detail
/// field of the capture, in its formatting.
pub fn servicelist_json(shape: Shape) -> String {
    let mut body = String::with_capacity(shape.services() * 1700 + 1024);
    body.push_str("{\n  \"format_version\": 0,\n  \"result\": {\n    \"query_time\": 1795574600000,\n    \"cgi\": \"statusjson.cgi\",\n    \"user\": \"\",\n    \"query\": \"servicelist\",\n    \"query_status\": \"released\",\n    \"program_start\": 1795574230000,\n    \"last_data_update\": 1795574600000,\n    \"type_code\": 0,\n    \"type_text\": \"Success\",\n    \"message\": \"\"\n  },\n  \"data\": {\n    \"selectors\": {\n    },\n    \"servicelist\": {\n");
    for h in 0..shape.hosts {
        let host = host_name(h);
        let _ = writeln!(body, "      \"{host}\": {{");
        for i in 0..shape.services_per_host {
            let state = state_of(h, i);
            let (status, attempt, last_hard) = match state {
                "OK" => (2, 1, 0),
                "WARNING" => (4, 4, 1),
                "CRITICAL" => (16, 4, 2),
                _ => (8, 4, 3),
            };
            let output = output_of(state, i).replace("&amp;", "&");
            let service = service_name(i);
            let _ = write!(
                body,
                "        \"{service}\": {{\n          \"host_name\": \"{host}\",\n          \"description\": \"{service}\",\n          \"plugin_output\": \"{output}\",\n          \"long_plugin_output\": \"\",\n          \"perf_data\": \"\",\n          \"max_attempts\": 4,\n          \"current_attempt\": {attempt},\n          \"status\": {status},\n          \"last_update\": 1795574599000,\n          \"has_been_checked\": true,\n          \"should_be_scheduled\": true,\n          \"last_check\": 1795574590000,\n          \"check_options\": 0,\n          \"check_type\": 0,\n          \"checks_enabled\": true,\n          \"last_state_change\": 1795574470000,\n          \"last_hard_state_change\": 1795574470000,\n          \"last_hard_state\": {last_hard},\n          \"last_time_ok\": 1795574290000,\n          \"last_time_warning\": 1795574590000,\n          \"last_time_unknown\": 0,\n          \"last_time_critical\": 0,\n          \"state_type\": 1,\n          \"last_notification\": 1795574470000,\n          \"next_notification\": 1795578070000,\n          \"next_check\": 1795574650000,\n          \"no_more_notifications\": false,\n          \"notifications_enabled\": true,\n          \"problem_has_been_acknowledged\": false,\n          \"acknowledgement_type\": 0,\n          \"current_notification_number\": 1,\n          \"accept_passive_checks\": true,\n          \"event_handler_enabled\": true,\n          \"flap_detection_enabled\": true,\n          \"is_flapping\": false,\n          \"percent_state_change\": 5.99,\n          \"latency\": 0.00,\n          \"execution_time\": 0.00,\n          \"scheduled_downtime_depth\": 0,\n          \"process_performance_data\": true,\n          \"obsess\": true\n        }}{}\n",
                if i + 1 < shape.services_per_host {
                    ","
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(
            body,
            "      }}{}",
            if h + 1 < shape.hosts { "," } else { "" }
        );
    }
    body.push_str("    }\n  }\n}\n");
    body
}

/// A `statusjson.cgi?query=hostlist&details=true` answer for the hosts of `shape`.
pub fn hostlist_json(shape: Shape) -> String {
    let mut body = String::with_capacity(shape.hosts * 1700 + 1024);
    body.push_str("{\n  \"format_version\": 0,\n  \"result\": {\n    \"query_time\": 1795574605000,\n    \"cgi\": \"statusjson.cgi\",\n    \"user\": \"\",\n    \"query\": \"hostlist\",\n    \"query_status\": \"released\",\n    \"program_start\": 1795574230000,\n    \"last_data_update\": 1795574600000,\n    \"type_code\": 0,\n    \"type_text\": \"Success\",\n    \"message\": \"\"\n  },\n  \"data\": {\n    \"selectors\": {\n    },\n    \"hostlist\": {\n");
    for h in 0..shape.hosts {
        let host = host_name(h);
        let (status, output) = if host_down(h) {
            (4, "CRITICAL - Host Unreachable (127.0.0.1)")
        } else {
            (2, "PING OK - Packet loss = 0%, RTA = 0.05 ms")
        };
        let _ = write!(
            body,
            "      \"{host}\": {{\n        \"name\": \"{host}\",\n        \"plugin_output\": \"{output}\",\n        \"long_plugin_output\": \"\",\n        \"perf_data\": \"rta=0.055000ms;5000.000000;5000.000000;0.000000 pl=0%;100;100;0;\",\n        \"status\": {status},\n        \"last_update\": 1795574599000,\n        \"has_been_checked\": true,\n        \"should_be_scheduled\": true,\n        \"current_attempt\": 1,\n        \"max_attempts\": 10,\n        \"last_check\": 1795574590000,\n        \"next_check\": 1795574890000,\n        \"check_options\": 0,\n        \"check_type\": 0,\n        \"last_state_change\": 1795574230000,\n        \"last_hard_state_change\": 1795574230000,\n        \"last_hard_state\": 0,\n        \"last_time_up\": 1795574590000,\n        \"last_time_down\": 0,\n        \"last_time_unreachable\": 0,\n        \"state_type\": 1,\n        \"last_notification\": 0,\n        \"next_notification\": 0,\n        \"no_more_notifications\": false,\n        \"notifications_enabled\": true,\n        \"problem_has_been_acknowledged\": false,\n        \"acknowledgement_type\": 0,\n        \"current_notification_number\": 0,\n        \"accept_passive_checks\": true,\n        \"event_handler_enabled\": true,\n        \"checks_enabled\": true,\n        \"flap_detection_enabled\": true,\n        \"is_flapping\": false,\n        \"percent_state_change\": 0.00,\n        \"latency\": 0.00,\n        \"execution_time\": 0.00,\n        \"scheduled_downtime_depth\": 0,\n        \"process_performance_data\": true,\n        \"obsess\": true\n      }}{}\n",
            if h + 1 < shape.hosts { "," } else { "" }
        );
    }
    body.push_str("    }\n  }\n}\n");
    body
}
