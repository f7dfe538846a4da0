//! Timestamps as OpenStack APIs write them, without a date library.
//!
//! Nova, Heat and Keystone write ISO 8601 in a few shapes: `2026-11-25T08:37:40Z`,
//! `2026-11-25T08:37:49.124930` (no zone: UTC), `2026-11-25T09:58:35.000000Z`,
//! `2026-11-25 08:37:40+00:00`. [`parse_timestamp`] reads all of them.

use std::time::SystemTime;

/// Microseconds since the Unix epoch of an OpenStack timestamp, or `None` when the text
/// is not one. A timestamp without a zone is UTC (what OpenStack services mean by it).
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let b = text.trim().as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        let mut v: i64 = 0;
        for &c in b.get(from..from + len)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut micros: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..6 {
            micros *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &b[i + 1..];
            let (h, m) = match rest.len() {
                5 if rest[2] == b':' => (num(i + 1, 2)?, num(i + 4, 2)?),
                4 => (num(i + 1, 2)?, num(i + 3, 2)?),
                2 => (num(i + 1, 2)?, 0),
                _ => return None,
            };
            // ISO 8601 offsets: at most 23:59 (real ones stay within ±14:00).
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let us = secs * 1_000_000 + micros;
    // An offset can move a time of year 0000 or 9999 out of the years this module writes
    // (`9999-12-31T23:59:59-01:00` is in year 10000): not a time OpenStack means.
    (FIRST_MICROS..=LAST_MICROS).contains(&us).then_some(us)
}

/// `0000-01-01T00:00:00Z` and `9999-12-31T23:59:59.999999Z`: the times written with a
/// four-digit year, the only ones [`parse_timestamp`] returns.
const FIRST_MICROS: i64 = -62_167_219_200 * 1_000_000;
const LAST_MICROS: i64 = 253_402_300_800 * 1_000_000 - 1;

/// Formats microseconds since the Unix epoch the way Keystone writes `expires_at`:
/// `2026-11-25T09:58:35.000000Z`.
pub fn format_timestamp(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Formats microseconds since the Unix epoch in whole seconds, the way Nova's
/// `utils.isotime` writes `created` in the API and timestamps in versioned notifications:
/// `2026-11-25T08:37:35Z` (the fraction is dropped, not rounded). Total over `i64`: the
/// plugin-api formatter does the arithmetic (a year outside 1..=9999 is written expanded,
/// `+10000-…`).
pub fn format_isotime(micros: i64) -> String {
    let full = synchronizer_plugin_api::time::format_rfc3339_micros(micros);
    // `...T08:37:35.123456Z` without `.123456`.
    match full.rsplit_once('.') {
        Some((seconds, _)) => format!("{seconds}Z"),
        None => full,
    }
}

/// Now, in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

// Howard Hinnant's algorithms (public domain), proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_shape_openstack_writes() {
        // date -u -d 2026-11-25T08:37:40Z +%s → 1795595860
        let base = 1_795_595_860_i64 * 1_000_000;
        assert_eq!(parse_timestamp("2026-11-25T08:37:40Z"), Some(base));
        assert_eq!(parse_timestamp("2026-11-25T08:37:40"), Some(base));
        assert_eq!(parse_timestamp("2026-11-25 08:37:40+00:00"), Some(base));
        assert_eq!(parse_timestamp("2026-11-25T09:37:40+01:00"), Some(base));
        assert_eq!(
            parse_timestamp("2026-11-25T08:37:40.124930"),
            Some(base + 124_930)
        );
        assert_eq!(parse_timestamp("2026-11-25T08:37:40.000000Z"), Some(base));
        assert_eq!(
            parse_timestamp("2026-11-25T08:37:40.5Z"),
            Some(base + 500_000)
        );
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
    }

    #[test]
    fn refuses_what_is_not_a_timestamp() {
        for bad in [
            "",
            "null",
            "2026-11-25",
            "2026-13-25T08:37:40Z",
            "2026-11-25T08:37:40Q",
            "2026-11-25T08:37:40.",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_and_parses_back() {
        for t in [
            0_i64,
            1_795_595_860_123_456,
            951_782_400_000_000, /* 2000-02-29 */
        ] {
            assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t));
        }
        assert_eq!(
            format_timestamp(1_795_595_860_000_000),
            "2026-11-25T08:37:40.000000Z"
        );
    }

    #[test]
    fn isotime_is_whole_seconds_like_novas() {
        assert_eq!(
            format_isotime(1_795_595_860_999_999),
            "2026-11-25T08:37:40Z"
        );
        assert_eq!(
            parse_timestamp("2026-11-25 08:37:40+00:00").map(format_isotime),
            Some("2026-11-25T08:37:40Z".to_owned())
        );
        assert_eq!(format_isotime(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn isotime_is_total_over_i64() {
        // `div_euclid(1_000_000) * 1_000_000` overflowed here once.
        assert_eq!(format_isotime(i64::MIN), "-290308-12-21T19:59:05Z");
        assert_eq!(
            format_isotime(i64::MIN + 999_999),
            "-290308-12-21T19:59:06Z"
        );
        assert_eq!(format_isotime(i64::MAX), "+294247-01-10T04:00:54Z");
        assert_eq!(
            format_isotime(synchronizer_plugin_api::time::MIN_MICROS),
            "0001-01-01T00:00:00Z"
        );
        assert_eq!(
            format_isotime(synchronizer_plugin_api::time::MAX_MICROS),
            "9999-12-31T23:59:59Z"
        );
        // In range it writes what format_timestamp writes, without the fraction.
        for t in [0_i64, -1, 1_795_595_860_123_456, -2_208_988_800_000_001] {
            let full = format_timestamp(t);
            assert_eq!(format_isotime(t), format!("{}Z", &full[..full.len() - 8]));
        }
    }

    #[test]
    fn offsets_are_checked_and_keep_the_year_within_four_digits() {
        // Found by the fuzz target `openstack_time` (fuzz/corpus/openstack_time/regress-*):
        // the year-10000 result was returned, and written back it no longer parsed.
        assert_eq!(parse_timestamp("9999-12-31T23:59:59-0130"), None);
        assert_eq!(parse_timestamp("0000-01-01T00:30:00+01:00"), None);
        assert_eq!(parse_timestamp("2026-11-25T08:37:40+00:60"), None);
        assert_eq!(parse_timestamp("2026-11-25T08:37:40+24:00"), None);
        assert_eq!(
            parse_timestamp("9999-12-31T23:59:59.999999Z").map(format_timestamp),
            Some("9999-12-31T23:59:59.999999Z".to_owned())
        );
        assert_eq!(parse_timestamp("0000-01-01T00:00:00Z"), Some(FIRST_MICROS));
        assert_eq!(
            parse_timestamp("2026-11-25T22:37:40+14:00"),
            parse_timestamp("2026-11-25T08:37:40Z")
        );
    }

    #[test]
    fn reads_oslos_naive_utc_and_checks_the_calendar() {
        assert_eq!(
            parse_timestamp("2026-11-25 02:26:16.207914"),
            Some(1_795_573_576_207_914)
        );
        assert_eq!(
            parse_timestamp("2026-11-25T02:26:16.207914Z"),
            Some(1_795_573_576_207_914)
        );
        assert_eq!(
            parse_timestamp("2026-11-25 02:26:16.2"),
            Some(1_795_573_576_200_000)
        );
        assert_eq!(
            parse_timestamp("2026-11-25 02:26:16.207914123"),
            Some(1_795_573_576_207_914)
        );
        assert_eq!(
            parse_timestamp("2000-02-29 23:59:59"),
            Some(951_868_799_000_000)
        );
        assert_eq!(parse_timestamp("1970-01-01 00:00:00+00:00"), Some(0));
        for bad in [
            "",
            "2026-11-25",
            "2026-13-01 00:00:00",
            "2026-02-30 00:00:00",
            "2026-11-25 24:00:00",
            "2026-11-25 02:26:16.",
            "2026-11-25 02:26:16,5",
            "2026/11/25 02:26:16",
            "2026-11-25 02:2a:16",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
    }
}
