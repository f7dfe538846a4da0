//! The time range the synchronizer accepts, and a timestamp formatter that cannot fail.
//!
//! Timestamps cross the plugin boundary as `i64` microseconds since the Unix epoch
//! ([`Entity::source_updated_micros`](crate::Entity::source_updated_micros)), which a
//! plugin sets freely. The project accepts RFC 3339's range, [`MIN_MICROS`] ..=
//! [`MAX_MICROS`] (`0001-01-01T00:00:00.000000Z` ..= `9999-12-31T23:59:59.999999Z`): the
//! host discards a source timestamp outside it and uses its own sample time instead
//! (docs/operator-guide.md, "Timestamps"), so everything it prints is RFC 3339.
//!
//! [`format_rfc3339_micros`] is total over all of `i64`: civil-from-days arithmetic in
//! `i64` (Howard Hinnant's algorithm, <https://howardhinnant.github.io/date_algorithms.html>),
//! no `SystemTime`, no panic, no error. A value outside the range prints with an
//! ISO 8601 expanded year (`+10000-01-01T…`, `-0001-12-31T…`), which the host never
//! produces because it refuses such values first.

use std::fmt::Write as _;

/// `0001-01-01T00:00:00.000000Z`, in microseconds since the Unix epoch.
pub const MIN_MICROS: i64 = -62_135_596_800 * MICROS_PER_SECOND;

/// `9999-12-31T23:59:59.999999Z`, in microseconds since the Unix epoch.
pub const MAX_MICROS: i64 = 253_402_300_800 * MICROS_PER_SECOND - 1;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// Whether `us` (microseconds since the Unix epoch) is in the accepted range,
/// [`MIN_MICROS`] ..= [`MAX_MICROS`].
pub fn in_range(us: i64) -> bool {
    (MIN_MICROS..=MAX_MICROS).contains(&us)
}

/// `us` (microseconds since the Unix epoch) as RFC 3339 UTC with microseconds:
/// `2026-11-25T10:00:01.123456Z`. Total: never panics, never fails (see the module docs
/// for values outside [`in_range`]).
pub fn format_rfc3339_micros(us: i64) -> String {
    format(us, 6)
}

/// `us` as RFC 3339 UTC with milliseconds (`2026-11-25T10:00:01.123Z`, truncated, not
/// rounded), as the host's status reports times. Total, like [`format_rfc3339_micros`].
pub fn format_rfc3339_millis(us: i64) -> String {
    format(us, 3)
}

/// A civil date and time of day, UTC.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    micros: u32,
}

fn civil(us: i64) -> Civil {
    // Euclidean division: the time of day is never negative, also before 1970.
    let days = us.div_euclid(MICROS_PER_DAY);
    let of_day = us.rem_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let secs = of_day / MICROS_PER_SECOND;
    Civil {
        year,
        month,
        day,
        // All below are bounded by the day's length: the casts cannot truncate.
        hour: (secs / 3600) as u8,
        minute: (secs / 60 % 60) as u8,
        second: (secs % 60) as u8,
        micros: (of_day % MICROS_PER_SECOND) as u32,
    }
}

/// Year, month (1..=12) and day (1..=31) of `days` since 1970-01-01 (Hinnant's
/// `civil_from_days`). `days` is at most `i64::MAX / 86_400_000_000` (about 1.07e8) in
/// magnitude here, so no step can overflow.
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn format(us: i64, digits: u32) -> String {
    let c = civil(us);
    let mut out = String::with_capacity(32);
    // Writing to a String cannot fail.
    let _ = match c.year {
        0..=9999 => write!(out, "{:04}", c.year),
        y if y > 9999 => write!(out, "+{y}"),
        y => write!(out, "-{:04}", y.unsigned_abs()),
    };
    let fraction = c.micros / 10u32.pow(6 - digits);
    let _ = write!(
        out,
        "-{:02}-{:02}T{:02}:{:02}:{:02}.{:0width$}Z",
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        fraction,
        width = digits as usize
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_range_is_rfc_3339s() {
        assert_eq!(
            format_rfc3339_micros(MIN_MICROS),
            "0001-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            format_rfc3339_micros(MAX_MICROS),
            "9999-12-31T23:59:59.999999Z"
        );
        assert!(in_range(MIN_MICROS) && in_range(MAX_MICROS) && in_range(0));
        assert!(!in_range(MIN_MICROS - 1) && !in_range(MAX_MICROS + 1));
        assert!(!in_range(i64::MIN) && !in_range(i64::MAX));
        // Just outside: expanded years.
        assert_eq!(
            format_rfc3339_micros(MIN_MICROS - 1),
            "0000-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            format_rfc3339_micros(MAX_MICROS + 1),
            "+10000-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn the_extremes_of_i64_format_without_panicking() {
        assert_eq!(
            format_rfc3339_micros(i64::MAX),
            "+294247-01-10T04:00:54.775807Z"
        );
        assert_eq!(
            format_rfc3339_micros(i64::MIN),
            "-290308-12-21T19:59:05.224192Z"
        );
        assert_eq!(
            format_rfc3339_micros(i64::MIN + 1),
            "-290308-12-21T19:59:05.224193Z"
        );
        // Year 0 (a leap year, 1 BC) has 366 days; the instant before it is in year -1,
        // written with four digits after the sign.
        assert_eq!(
            format_rfc3339_micros(MIN_MICROS - 366 * MICROS_PER_DAY),
            "0000-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            format_rfc3339_micros(MIN_MICROS - 366 * MICROS_PER_DAY - 1),
            "-0001-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn times_before_the_epoch_count_backwards() {
        assert_eq!(format_rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(format_rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_rfc3339_micros(-MICROS_PER_DAY),
            "1969-12-31T00:00:00.000000Z"
        );
        // 1900-01-01, a Heat stack's creation time in the issue.
        assert_eq!(
            format_rfc3339_micros(-2_208_988_800 * MICROS_PER_SECOND),
            "1900-01-01T00:00:00.000000Z"
        );
        assert_eq!(format_rfc3339_millis(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn leap_years_follow_the_gregorian_rules() {
        let day = |y: i64, m: u8, d: u8| {
            // Find the day by walking from a known anchor: 2000-03-01 is day 11017.
            let mut n = 11_017;
            while civil_from_days(n) < (y, m, d) {
                n += 1;
            }
            while civil_from_days(n) > (y, m, d) {
                n -= 1;
            }
            assert_eq!(civil_from_days(n), (y, m, d));
            n
        };
        // 2000 is a leap year (divisible by 400), 1900 and 2100 are not, 2024 is.
        assert_eq!(civil_from_days(day(2000, 2, 28) + 1), (2000, 2, 29));
        assert_eq!(civil_from_days(day(1900, 2, 28) + 1), (1900, 3, 1));
        assert_eq!(civil_from_days(day(2100, 2, 28) + 1), (2100, 3, 1));
        assert_eq!(civil_from_days(day(2024, 2, 28) + 1), (2024, 2, 29));
        assert_eq!(civil_from_days(day(2024, 12, 31) + 1), (2025, 1, 1));
        assert_eq!(
            format_rfc3339_micros(951_782_400 * MICROS_PER_SECOND),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn every_day_of_the_range_follows_the_one_before() {
        // Consecutive days from year 1 to 9999 advance the calendar by exactly one day.
        let first = MIN_MICROS.div_euclid(MICROS_PER_DAY);
        let last = MAX_MICROS.div_euclid(MICROS_PER_DAY);
        let mut prev = civil_from_days(first);
        assert_eq!(prev, (1, 1, 1));
        for n in first + 1..=last {
            let (y, m, d) = civil_from_days(n);
            let next_day = (prev.0, prev.1, prev.2 + 1);
            let next_month = (prev.0, prev.1 + 1, 1);
            let next_year = (prev.0 + 1, 1, 1);
            assert!(
                (y, m, d) == next_day
                    || (d == 1 && ((y, m, d) == next_month || (y, m, d) == next_year)),
                "day {n}: {prev:?} -> {:?}",
                (y, m, d)
            );
            prev = (y, m, d);
        }
        assert_eq!(prev, (9999, 12, 31));
    }

    #[test]
    fn positive_times_agree_with_humantime() {
        // A spread of values from 1970 to 9999 (an LCG, so the sample is the same on
        // every run), plus the second and day boundaries.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut sample = vec![0, 1, 999_999, 1_000_000, MICROS_PER_DAY - 1, MAX_MICROS];
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            sample.push((x % (MAX_MICROS as u64 + 1)) as i64);
        }
        for us in sample {
            let t = UNIX_EPOCH + Duration::from_micros(us as u64);
            assert_eq!(
                format_rfc3339_micros(us),
                humantime::format_rfc3339_micros(t).to_string(),
                "{us}"
            );
            assert_eq!(
                format_rfc3339_millis(us),
                humantime::format_rfc3339_millis(t).to_string(),
                "{us}"
            );
        }
    }
}
