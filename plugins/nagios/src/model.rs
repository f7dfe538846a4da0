//! Plain types for what Nagios reports: one [`ServiceStatus`] per service, or per host
//! for a host's own state, whichever page it was read from.
//!
//! Both parsers ([`crate::html`] for `status.cgi`, [`crate::json`] for `statusjson.cgi`)
//! produce these; the two sources do not carry the same details, and the fields say which
//! one fills what:
//!
//! | field | status.cgi (HTML) | statusjson.cgi |
//! |---|---|---|
//! | `last_check` | [`CheckTime::Local`]: the text shown, in the Nagios server's local time and `date_format` | [`CheckTime::UnixMillis`] |
//! | `duration` | the text shown (`0d  0h  2m 10s`) | `None` |
//! | `last_state_change` | `None` | Unix milliseconds |
//! | `attempt` | parsed from `4/4` | `current_attempt` / `max_attempts` |
//! | `state_type` | `None` | soft / hard |
//! | host entries | only for a host shown DOWN or UNREACHABLE (no output text) | every host of `hostlist` |
//!
//! An entry is an alarm ([`ServiceStatus::is_alarm`]) when its state is WARNING, CRITICAL,
//! UNKNOWN, DOWN or UNREACHABLE. OK, UP and PENDING (never checked) are not alarms.

use std::fmt;

use serde::Serialize;

/// The state of a service or a host, as Nagios names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmState {
    /// Service OK.
    Ok,
    /// Service WARNING.
    Warning,
    /// Service CRITICAL.
    Critical,
    /// Service UNKNOWN.
    Unknown,
    /// Service or host not checked yet.
    Pending,
    /// Host UP.
    Up,
    /// Host DOWN.
    Down,
    /// Host UNREACHABLE (a parent is down).
    Unreachable,
}

impl AlarmState {
    /// The upper-case name Nagios shows: `OK`, `WARNING`, ..., `UNREACHABLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Ok => "OK",
            AlarmState::Warning => "WARNING",
            AlarmState::Critical => "CRITICAL",
            AlarmState::Unknown => "UNKNOWN",
            AlarmState::Pending => "PENDING",
            AlarmState::Up => "UP",
            AlarmState::Down => "DOWN",
            AlarmState::Unreachable => "UNREACHABLE",
        }
    }

    /// Whether an entry in this state is an alarm: WARNING, CRITICAL, UNKNOWN, DOWN or
    /// UNREACHABLE.
    pub fn is_alarm(self) -> bool {
        matches!(
            self,
            AlarmState::Warning
                | AlarmState::Critical
                | AlarmState::Unknown
                | AlarmState::Down
                | AlarmState::Unreachable
        )
    }

    /// A service state from the text of status.cgi's Status column (`OK`, `WARNING`,
    /// `CRITICAL`, `UNKNOWN`, `PENDING`).
    pub fn from_service_text(text: &str) -> Option<Self> {
        Some(match text {
            "OK" => AlarmState::Ok,
            "WARNING" => AlarmState::Warning,
            "CRITICAL" => AlarmState::Critical,
            "UNKNOWN" => AlarmState::Unknown,
            "PENDING" => AlarmState::Pending,
            _ => return None,
        })
    }

    /// A service state from statusjson.cgi's `status` bit: 1 pending, 2 ok, 4 warning,
    /// 8 unknown, 16 critical.
    pub fn from_service_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => AlarmState::Pending,
            2 => AlarmState::Ok,
            4 => AlarmState::Warning,
            8 => AlarmState::Unknown,
            16 => AlarmState::Critical,
            _ => return None,
        })
    }

    /// A host state from statusjson.cgi's `status` bit: 1 pending, 2 up, 4 down,
    /// 8 unreachable.
    pub fn from_host_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => AlarmState::Pending,
            2 => AlarmState::Up,
            4 => AlarmState::Down,
            8 => AlarmState::Unreachable,
            _ => return None,
        })
    }
}

impl fmt::Display for AlarmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a check ran.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckTime {
    /// Milliseconds since the Unix epoch (statusjson.cgi).
    UnixMillis(i64),
    /// The text status.cgi shows, e.g. `11-25-2026 02:43:10`: the Nagios server's local
    /// time, in its `date_format` (`us`, `euro`, `iso8601`, `strict-iso8601`), no zone.
    Local(String),
}

impl CheckTime {
    /// Milliseconds since the Unix epoch, when known.
    pub fn unix_millis(&self) -> Option<i64> {
        match self {
            CheckTime::UnixMillis(ms) => Some(*ms),
            CheckTime::Local(_) => None,
        }
    }
}

impl fmt::Display for CheckTime {
    /// A Unix time as RFC 3339 in UTC (`2026-11-25T02:43:10Z`, with milliseconds when
    /// they are not zero); a local time as Nagios showed it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckTime::Local(text) => f.write_str(text),
            CheckTime::UnixMillis(ms) => {
                let secs = ms.div_euclid(1000);
                let millis = ms.rem_euclid(1000);
                let days = secs.div_euclid(86_400);
                let rem = secs.rem_euclid(86_400);
                let (y, m, d) = civil_from_days(days);
                write!(
                    f,
                    "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
                    rem / 3600,
                    rem % 3600 / 60,
                    rem % 60
                )?;
                if millis != 0 {
                    write!(f, ".{millis:03}")?;
                }
                f.write_str("Z")
            }
        }
    }
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian calendar;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Check attempt `current` of `max` (`4/4` on the page): below `max` a problem state is
/// still soft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Attempt {
    /// The attempt the current state comes from.
    pub current: u32,
    /// `max_check_attempts`.
    pub max: u32,
}

impl Attempt {
    /// Parses Nagios' `current/max` text (`4/4`), surrounding white space allowed.
    pub fn parse(text: &str) -> Option<Self> {
        let (current, max) = text.trim().split_once('/')?;
        Some(Attempt {
            current: current.trim().parse().ok()?,
            max: max.trim().parse().ok()?,
        })
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.current, self.max)
    }
}

/// Whether a state is confirmed (hard) or may still change on the next attempts (soft).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateType {
    /// Not confirmed yet: `current_attempt < max_attempts`.
    Soft,
    /// Confirmed.
    Hard,
}

/// The status of one Nagios service, or of a host itself (`service == None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    /// The Nagios host name.
    pub host: String,
    /// The service description; `None` for the host's own state.
    pub service: Option<String>,
    /// The current state.
    pub state: AlarmState,
    /// The plugin output (first line), entities decoded and surrounding white space
    /// (including the non-breaking space status.cgi appends) trimmed. Empty for a host
    /// state read from status.cgi, which does not show it.
    pub output: String,
    /// When the last check ran; `None` when it never ran (`N/A`, `0`).
    pub last_check: Option<CheckTime>,
    /// How long the current state has lasted, as status.cgi shows it (`0d  0h  2m 10s`,
    /// a trailing `+` when Nagios does not know the exact start). statusjson.cgi gives
    /// [`last_state_change`](Self::last_state_change) instead.
    pub duration: Option<String>,
    /// When the current state began, in Unix milliseconds (statusjson.cgi; `None` when
    /// the state has not changed since Nagios started).
    pub last_state_change: Option<i64>,
    /// Check attempt of the current state.
    pub attempt: Option<Attempt>,
    /// Soft or hard (statusjson.cgi only).
    pub state_type: Option<StateType>,
}

impl ServiceStatus {
    /// A status with only host, service and state set (the rest empty).
    pub fn new(host: impl Into<String>, service: Option<String>, state: AlarmState) -> Self {
        ServiceStatus {
            host: host.into(),
            service,
            state,
            output: String::new(),
            last_check: None,
            duration: None,
            last_state_change: None,
            attempt: None,
            state_type: None,
        }
    }

    /// Whether this entry is an alarm (see [`AlarmState::is_alarm`]).
    pub fn is_alarm(&self) -> bool {
        self.state.is_alarm()
    }

    /// Whether this is a host's own state rather than a service's.
    pub fn is_host(&self) -> bool {
        self.service.is_none()
    }

    /// The alarm's name: the service description, or the host name for a host state.
    pub fn name(&self) -> &str {
        self.service.as_deref().unwrap_or(&self.host)
    }

    /// An id unique within one Nagios: `host;service` for a service, `host` for a host
    /// state. `;` cannot occur in Nagios object names (it starts a comment in the object
    /// files and separates the fields of external commands), so two different entries
    /// never share an id. The collector scopes it with the Nagios's name
    /// ([`crate::plugin::alarm_id`]), since two Nagios servers may both have a `compute-1`.
    pub fn native_id(&self) -> String {
        match &self.service {
            Some(service) => {
                let mut id = String::with_capacity(self.host.len() + 1 + service.len());
                id.push_str(&self.host);
                id.push(';');
                id.push_str(service);
                id
            }
            None => self.host.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_millis_display_as_rfc3339_utc() {
        assert_eq!(
            CheckTime::UnixMillis(1_795_574_590_000).to_string(),
            "2026-11-25T02:43:10Z"
        );
        assert_eq!(CheckTime::UnixMillis(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            CheckTime::UnixMillis(951_782_400_123).to_string(),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            CheckTime::UnixMillis(-1000).to_string(),
            "1969-12-31T23:59:59Z"
        );
    }

    #[test]
    fn state_codes_follow_statusjson() {
        assert_eq!(AlarmState::from_service_code(4), Some(AlarmState::Warning));
        assert_eq!(
            AlarmState::from_service_code(16),
            Some(AlarmState::Critical)
        );
        assert_eq!(AlarmState::from_service_code(3), None);
        assert_eq!(AlarmState::from_host_code(8), Some(AlarmState::Unreachable));
        assert!(!AlarmState::Pending.is_alarm());
        assert!(AlarmState::Down.is_alarm());
    }

    #[test]
    fn attempt_parses_and_prints() {
        assert_eq!(Attempt::parse("4/4"), Some(Attempt { current: 4, max: 4 }));
        assert_eq!(
            Attempt::parse(" 1/10 ").map(|a| a.to_string()),
            Some("1/10".into())
        );
        assert_eq!(Attempt::parse("4"), None);
        assert_eq!(Attempt::parse("a/4"), None);
    }

    #[test]
    fn native_ids() {
        let s = ServiceStatus::new("h", Some("CPU load".into()), AlarmState::Warning);
        assert_eq!(s.native_id(), "h;CPU load");
        assert_eq!(s.name(), "CPU load");
        let h = ServiceStatus::new("h", None, AlarmState::Down);
        assert_eq!(h.native_id(), "h");
        assert_eq!(h.name(), "h");
    }
}
