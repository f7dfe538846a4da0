//! Helpers shared by the integration tests.
#![allow(dead_code)]

use synchronizer_nagios::{AlarmState, Attempt, CheckTime, ServiceStatus, StateType};

/// A service row as status.cgi shows it.
pub fn html_row(
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

/// A service (or, with `service` None, a host) as statusjson.cgi gives it: always hard
/// in these captures.
pub fn json_entry(
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

pub mod generate;
