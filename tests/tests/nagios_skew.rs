//! Clock skew between a Nagios and the host changes nothing a consumer sees.
//!
//! A loopback replay serves what the test Nagios answered while late, back-dated passive
//! results drove one service (`plugins/nagios/tests/fixtures/nagios4-late`, captured by
//! `scripts/nagios/capture-late.sh`): raised, its severity changed by a result checked
//! 120 s earlier, cleared, raised again by a result checked 120 s earlier. Each answer is
//! served as if Nagios produced it at the moment of the request on a clock 1 h behind,
//! exact, or 1 h ahead of the host's: every timestamp in it is moved by the same amount
//! (statusjson.cgi's Unix milliseconds; status.cgi's `Last Check` column and its `Last
//! Updated` line, in the server's local time, UTC on the capture machine). The real .so,
//! on the real host, must report the same changes for every skew, and those changes must
//! be the source's: created, updated, deleted, created.

use synchronizer::{Action, Event, SubscribeOptions, Synchronizer};
use synchronizer_openstack::time::parse_timestamp;
use synchronizer_plugin_api::time::format_rfc3339_micros;
use synchronizer_test_kit::host::config;
use synchronizer_test_kit::http::{FixtureServer, Reply};
use synchronizer_test_kit::paths::root;

const SERVICES: &str = "/cgi-bin/nagios4/statusjson.cgi?query=servicelist&details=true";
const HOSTS: &str = "/cgi-bin/nagios4/statusjson.cgi?query=hostlist&details=true";
const STATUS: &str = "/cgi-bin/nagios4/status.cgi?host=all&limit=0";

/// The captured steps, in order (scripts/nagios/capture-late.sh).
const STEPS: [&str; 5] = [
    "0-ok",
    "1-raised",
    "2-backdated-critical",
    "3-cleared",
    "4-reraised-backdated",
];

const HOUR_MS: i64 = 3_600_000;

fn fixture(name: &str) -> Vec<u8> {
    let p = root()
        .join("plugins/nagios/tests/fixtures/nagios4-late")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(d.as_millis()).expect("fits")
}

/// Adds `delta_ms` to every timestamp of a statusjson.cgi answer: every integer outside
/// strings of at least 10^12 (milliseconds since 2001; Nagios' other numbers, attempts,
/// states, latencies, are small). `0` (never) stays 0. The rest of the bytes are kept.
fn shift_json(text: &[u8], delta_ms: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 64);
    let mut i = 0;
    let mut in_string = false;
    while i < text.len() {
        let c = text[i];
        if in_string {
            out.push(c);
            if c == b'\\' && i + 1 < text.len() {
                out.push(text[i + 1]);
                i += 1;
            } else if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            out.push(c);
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < text.len() && text[i].is_ascii_digit() {
                i += 1;
            }
            let digits = std::str::from_utf8(&text[start..i]).expect("ascii");
            let integer = !matches!(text.get(i), Some(b'.' | b'e' | b'E'));
            match digits.parse::<i64>() {
                Ok(ms) if integer && ms >= 1_000_000_000_000 => {
                    out.extend_from_slice((ms + delta_ms).to_string().as_bytes());
                }
                _ => out.extend_from_slice(digits.as_bytes()),
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// A statusjson.cgi answer as if queried now on a clock `skew_ms` off the host's.
fn rebase_json(text: &[u8], skew_ms: i64) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(text).expect("captured JSON");
    let queried = v["result"]["query_time"].as_i64().expect("query_time");
    shift_json(text, now_ms() + skew_ms - queried)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// Unix seconds of a UTC date and time (the calendar arithmetic is the project's own:
/// the OpenStack timestamp parser).
fn unix_seconds(y: &str, m: &str, d: &str, time: &str) -> Option<i64> {
    parse_timestamp(&format!("{y}-{m}-{d}T{time}Z")).map(|us| us.div_euclid(1_000_000))
}

/// `YYYY`, `MM`, `DD`, `HH:MM:SS` of Unix seconds, UTC (the plugin API's formatter).
fn civil(secs: i64) -> (String, String, String, String) {
    let t = format_rfc3339_micros(secs * 1_000_000);
    (
        t[0..4].to_owned(),
        t[5..7].to_owned(),
        t[8..10].to_owned(),
        t[11..19].to_owned(),
    )
}

/// `MM-DD-YYYY HH:MM:SS` (status.cgi with `date_format=us`) as Unix seconds, if it is one.
fn parse_us_date(s: &[u8]) -> Option<i64> {
    let shape = b"00-00-0000 00:00:00";
    let fits = s.len() == shape.len()
        && s.iter().zip(shape).all(|(c, p)| {
            if *p == b'0' {
                c.is_ascii_digit()
            } else {
                c == p
            }
        });
    let s = std::str::from_utf8(s).ok().filter(|_| fits)?;
    unix_seconds(&s[6..10], &s[0..2], &s[3..5], &s[11..19])
}

fn format_us_date(secs: i64) -> String {
    let (y, m, d, time) = civil(secs);
    format!("{m}-{d}-{y} {time}")
}

/// `Tue Dec 1 22:22:17 UTC 2026` (status.cgi's `Last Updated`) as Unix seconds.
fn parse_last_updated(s: &str) -> Option<i64> {
    let f: Vec<&str> = s.split_whitespace().collect();
    let [_, month, day, time, "UTC", year] = f.as_slice() else {
        return None;
    };
    let m = MONTHS.iter().position(|x| x == month)? + 1;
    let d: u32 = day.parse().ok()?;
    unix_seconds(year, &format!("{m:02}"), &format!("{d:02}"), time)
}

fn format_last_updated(secs: i64) -> String {
    let (y, m, d, time) = civil(secs);
    let weekday = WEEKDAYS[(secs.div_euclid(86_400) + 4).rem_euclid(7) as usize];
    let month = MONTHS[m.parse::<usize>().unwrap_or(1) - 1];
    let day = d.trim_start_matches('0');
    format!("{weekday} {month} {day} {time} UTC {y}")
}

const LAST_UPDATED: &str = "Last Updated: ";

/// A status.cgi page as if produced now on a clock `skew_ms` off the host's: its `Last
/// Updated` line and every `Last Check` time moved by the same whole seconds. Durations
/// are differences and stay as they are.
fn rebase_html(page: &[u8], skew_ms: i64) -> Vec<u8> {
    let text = std::str::from_utf8(page).expect("captured page is UTF-8");
    let at = text.find(LAST_UPDATED).expect("a Last Updated line") + LAST_UPDATED.len();
    let end = at + text[at..].find("<BR>").expect("the line ends");
    let produced = parse_last_updated(&text[at..end]).expect("a Last Updated time");
    let delta = (now_ms() + skew_ms).div_euclid(1000) - produced;
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..at]);
    out.push_str(&format_last_updated(produced + delta));
    let rest = &text[end..];
    let bytes = rest.as_bytes();
    let (mut i, mut copied, mut shifted) = (0, 0, 0);
    while i + 19 <= bytes.len() {
        match parse_us_date(&bytes[i..i + 19]) {
            Some(t) => {
                out.push_str(&rest[copied..i]);
                out.push_str(&format_us_date(t + delta));
                i += 19;
                copied = i;
                shifted += 1;
            }
            None => i += 1,
        }
    }
    out.push_str(&rest[copied..]);
    assert!(shifted > 0, "no Last Check time in the page");
    out.into_bytes()
}

type Seen = Vec<(Action, String, String)>;

/// Replays the steps to the nagios .so reading `source` (json or html) on a clock
/// `skew_ms` off the host's; the changes after each step's poll, twice per step (the
/// second poll of the same state must report nothing).
async fn replay(source: &str, skew_ms: i64) -> Vec<Seen> {
    let server = FixtureServer::start().await;
    let serve = |step: &str| {
        if source == "html" {
            let page = rebase_html(&fixture(&format!("{step}.status.html")), skew_ms);
            server.set(STATUS, Reply::ok("text/html", page));
        } else {
            for (path, kind) in [(SERVICES, "servicelist"), (HOSTS, "hostlist")] {
                let text = rebase_json(&fixture(&format!("{step}.{kind}.json")), skew_ms);
                server.set(path, Reply::ok("application/json", text));
            }
        }
    };
    serve(STEPS[0]);
    let c = config(&format!(
        r#"
[[instances]]
name = "skewed"
library = "libsynchronizer_nagios.so"
interval = "1h"
timeout = "5s"
[instances.config]
url = "{}/cgi-bin/nagios4"
source = "{source}"
"#,
        server.url()
    ));
    let sync = Synchronizer::start(c).await.expect("starts");
    let mut sub = sync.subscribe(&SubscribeOptions::types(&["nagios"]));
    let mut seen = Vec::new();
    for step in STEPS {
        for _ in 0..2 {
            serve(step);
            sync.get_all(&["nagios"])
                .await
                .unwrap_or_else(|e| panic!("{source}, skew {skew_ms} ms, {step}: {e}"));
            let mut changes = Vec::new();
            while let Some(e) = sub.try_recv() {
                if let Event::Change(c) = e {
                    changes.push((
                        c.action,
                        c.entity.id().to_owned(),
                        c.entity.state().unwrap_or("").to_owned(),
                    ));
                }
            }
            changes.sort();
            seen.push(changes);
        }
    }
    sync.shutdown().await;
    seen
}

fn expected() -> Vec<Seen> {
    let alarm = "skewed/replay-0;CPU load";
    let one = |a: Action, state: &str| vec![(a, alarm.to_owned(), state.to_owned())];
    vec![
        vec![],
        vec![],
        one(Action::Created, "WARNING"),
        vec![],
        one(Action::Updated, "CRITICAL"),
        vec![],
        one(Action::Deleted, "CRITICAL"),
        vec![],
        one(Action::Created, "WARNING"),
        vec![],
    ]
}

async fn same_changes_for_every_skew(source: &str) {
    let exact = replay(source, 0).await;
    let behind = replay(source, -HOUR_MS).await;
    let ahead = replay(source, HOUR_MS).await;
    assert_eq!(
        exact,
        expected(),
        "{source}, no skew: the source's changes (two polls per step: {STEPS:?})"
    );
    assert_eq!(
        behind, exact,
        "{source}: Nagios' clock 1 h behind the host's"
    );
    assert_eq!(
        ahead, exact,
        "{source}: Nagios' clock 1 h ahead of the host's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statusjson_with_a_skewed_clock_gives_the_changes_of_an_exact_one() {
    same_changes_for_every_skew("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_cgi_with_a_skewed_clock_gives_the_changes_of_an_exact_one() {
    same_changes_for_every_skew("html").await;
}

#[test]
fn the_replay_moves_every_time_and_nothing_else() {
    // JSON: the times, not the other numbers nor digits inside strings.
    let text = br#"{"a": 1796163736000, "b": 0, "c": 4, "d": "x 1796163736000", "e": 0.5}"#;
    assert_eq!(
        String::from_utf8(shift_json(text, -HOUR_MS)).unwrap(),
        r#"{"a": 1796160136000, "b": 0, "c": 4, "d": "x 1796163736000", "e": 0.5}"#
    );
    // Dates across a day and a year boundary.
    let t = parse_us_date(b"12-31-2026 23:30:00").unwrap();
    assert_eq!(format_us_date(t + 3600), "01-01-2027 00:30:00");
    assert_eq!(format_us_date(t), "12-31-2026 23:30:00");
    let u = parse_last_updated("Tue Dec 1 22:22:17 UTC 2026").unwrap();
    assert_eq!(u, 1_796_163_737);
    assert_eq!(
        format_last_updated(u - 86_400),
        "Mon Nov 30 22:22:17 UTC 2026"
    );
    // A captured page: every Last Check moved by the skew.
    let page = fixture("1-raised.status.html");
    let shifted = rebase_html(&page, HOUR_MS);
    let times = |p: &[u8]| -> Vec<i64> {
        (0..p.len().saturating_sub(19))
            .filter_map(|i| parse_us_date(&p[i..i + 19]))
            .collect()
    };
    let (before, after) = (times(&page), times(&shifted));
    assert_eq!(before.len(), after.len());
    let delta = after[0] - before[0];
    assert!((delta - (now_ms() / 1000 + 3600 - u)).abs() <= 5, "{delta}");
    assert!(before.iter().zip(&after).all(|(b, a)| a - b == delta));
}
