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
//! An entry is a problem ([`ServiceStatus::is_alarm`]) when its state is WARNING, CRITICAL,
//! UNKNOWN, DOWN or UNREACHABLE. A PENDING service (never checked) is an alarm too unless
//! [`Pending::Skip`] says otherwise: Vitrage reports it, with severity PENDING
//! ([`Pending::is_alarm`]). OK, UP and a PENDING host are never alarms.

use std::fmt;

use serde::{Deserialize, Serialize};

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

/// Whether a PENDING service (one Nagios has no result for yet) is an alarm: the
/// `pending` option.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pending {
    /// An alarm in state PENDING, as Vitrage reports it (Vitrage's driver keeps every
    /// service not OK, and its severity is the Nagios status text).
    #[default]
    Alarm,
    /// Not an alarm: only results Nagios has seen raise alarms.
    Skip,
}

impl Pending {
    /// Whether `status` is an alarm under this policy: a problem
    /// ([`ServiceStatus::is_alarm`]), or a PENDING service with [`Pending::Alarm`]. A
    /// PENDING host is not: Vitrage reports no host states, and status.cgi does not show
    /// them.
    pub fn is_alarm(self, status: &ServiceStatus) -> bool {
        status.is_alarm()
            || (self == Pending::Alarm
                && status.state == AlarmState::Pending
                && status.service.is_some())
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

/// Nagios' `date_format`, the order of a local date on status.cgi: `us` (`MM-DD-YYYY`,
/// Nagios' default) or `euro` (`DD-MM-YYYY`). The ISO forms (`YYYY-MM-DD HH:MM:SS`,
/// `YYYY-MM-DDTHH:MM:SS`) are recognised whatever the setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DateFormat {
    /// `MM-DD-YYYY HH:MM:SS`.
    #[default]
    Us,
    /// `DD-MM-YYYY HH:MM:SS`.
    Euro,
    /// `YYYY-MM-DD HH:MM:SS`.
    Iso8601,
    /// `YYYY-MM-DDTHH:MM:SS`.
    StrictIso8601,
}

/// Seconds since the Unix epoch of a calendar date and time read as UTC; `None` when a
/// field is out of range.
pub fn civil_to_unix(y: i64, m: u32, d: u32, hh: u32, mm: u32, ss: u32) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    if !(0..=9999).contains(&y) {
        return None;
    }
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + i64::from(hh) * 3600 + i64::from(mm) * 60 + i64::from(ss))
}

/// status.cgi's `Last Check` text (`11-25-2026 02:43:10`, in `format` unless it is an ISO
/// form) as seconds since the epoch, the text read as UTC (subtract the server's UTC
/// offset to get the real time).
pub fn parse_local_time(text: &str, format: DateFormat) -> Option<i64> {
    let text = text.trim();
    let (date, time) = text.split_once([' ', 'T'])?;
    let mut d = date.split('-');
    let (a, b, c) = (d.next()?, d.next()?, d.next()?);
    if d.next().is_some() {
        return None;
    }
    let (y, m, day) = if a.len() == 4 {
        (a, b, c)
    } else {
        match format {
            DateFormat::Euro => (c, b, a),
            _ => (c, a, b),
        }
    };
    let mut t = time.trim().split(':');
    let (hh, mm, ss) = (t.next()?, t.next()?, t.next()?);
    if t.next().is_some() {
        return None;
    }
    let num = |s: &str| -> Option<u32> {
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    civil_to_unix(
        i64::from(num(y)?),
        num(m)?,
        num(day)?,
        num(hh)?,
        num(mm)?,
        num(ss)?,
    )
}

/// The month of an English three-letter abbreviation (`Jan` = 1).
pub(crate) fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let name = name.get(..3)?.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|m| *m == name)
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// `HH:MM:SS` → (h, m, s).
pub(crate) fn parse_hms(text: &str) -> Option<(u32, u32, u32)> {
    let mut t = text.split(':');
    let h = t.next()?.parse().ok()?;
    let m = t.next()?.parse().ok()?;
    let s = t.next()?.parse().ok()?;
    if t.next().is_some() {
        return None;
    }
    Some((h, m, s))
}

/// An HTTP `Date` header (`Wed, 02 Dec 2026 19:06:16 GMT`, RFC 9110's IMF-fixdate) as
/// seconds since the epoch.
pub fn parse_http_date(text: &str) -> Option<i64> {
    let mut f = text.split_whitespace();
    let _weekday = f.next()?;
    let day = f.next()?.parse().ok()?;
    let month = month_number(f.next()?)?;
    let year = f.next()?.parse().ok()?;
    let (h, m, s) = parse_hms(f.next()?)?;
    civil_to_unix(year, month, day, h, m, s)
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
    fn local_times_and_http_dates() {
        let t = 1_795_574_590; // 2026-11-25T02:43:10Z
        assert_eq!(
            parse_local_time("11-25-2026 02:43:10", DateFormat::Us),
            Some(t)
        );
        assert_eq!(
            parse_local_time("25-11-2026 02:43:10", DateFormat::Euro),
            Some(t)
        );
        assert_eq!(
            parse_local_time("2026-11-25 02:43:10", DateFormat::Us),
            Some(t)
        );
        assert_eq!(
            parse_local_time("2026-11-25T02:43:10", DateFormat::Euro),
            Some(t)
        );
        assert_eq!(
            parse_local_time("25-11-2026 02:43:10", DateFormat::Us),
            None
        );
        assert_eq!(parse_local_time("N/A", DateFormat::Us), None);
        assert_eq!(parse_local_time("11-25-2026 02:43", DateFormat::Us), None);
        assert_eq!(parse_http_date("Wed, 25 Nov 2026 02:43:10 GMT"), Some(t));
        assert_eq!(civil_to_unix(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(civil_to_unix(2000, 2, 29, 0, 0, 0), Some(951_782_400));
        assert_eq!(parse_http_date("garbage"), None);
    }

    #[test]
    fn pending_services_are_alarms_unless_skipped() {
        let s = ServiceStatus::new("h", Some("s".into()), AlarmState::Pending);
        let h = ServiceStatus::new("h", None, AlarmState::Pending);
        assert!(Pending::Alarm.is_alarm(&s));
        assert!(!Pending::Skip.is_alarm(&s));
        assert!(!Pending::Alarm.is_alarm(&h));
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
