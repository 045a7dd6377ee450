//! RFC 3339 timestamps and calendar arithmetic on epoch milliseconds, always in UTC: the
//! `occurredAt`, `periodeStart`/`periodeEnd` and `timestamp` strings of the JSON the server reads
//! and writes, and the "current calendar month" of `--demo`. Pure arithmetic on values: it never
//! reads the clock (callers pass `now`), never does I/O, knows no time zones beyond the fixed
//! offsets RFC 3339 writes inline, and never panics, since `parse_rfc3339_ms` sees peer bytes.
//!
//! Dates are converted with Howard Hinnant's `days_from_civil` / `civil_from_days`
//! (proleptic Gregorian calendar, days since 1970-01-01), which are exact for any year and need
//! no tables; division is floored throughout so instants before 1970 work too.

use std::fmt;

const MS_PER_DAY: i64 = 86_400_000;

/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z: the instants a four-digit year can
/// write. Formatting clamps to them so its output always parses back.
const MIN_FORMATTABLE_MS: i64 = days_from_civil(0, 1, 1) * MS_PER_DAY;
const MAX_FORMATTABLE_MS: i64 = days_from_civil(10_000, 1, 1) * MS_PER_DAY - 1;

/// The input is not an RFC 3339 date-time this module accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeError;

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not an RFC 3339 date-time, e.g. 2025-01-31T23:59:59.999Z")
    }
}

impl std::error::Error for TimeError {}

/// Appends `epoch_ms` as e.g. `2025-01-01T00:00:00.000Z`: always UTC, always three fraction
/// digits, so the strings sort as the instants do. Instants outside years 0000..=9999 are
/// clamped to the nearest end of that range.
pub fn write_rfc3339_ms(out: &mut String, epoch_ms: i64) {
    let epoch_ms = epoch_ms.clamp(MIN_FORMATTABLE_MS, MAX_FORMATTABLE_MS);
    let (year, month, day) = civil_from_days(epoch_ms.div_euclid(MS_PER_DAY));
    let ms_of_day = epoch_ms.rem_euclid(MS_PER_DAY);
    push_digits(out, year, 4);
    out.push('-');
    push_digits(out, i64::from(month), 2);
    out.push('-');
    push_digits(out, i64::from(day), 2);
    out.push('T');
    push_digits(out, ms_of_day / 3_600_000, 2);
    out.push(':');
    push_digits(out, ms_of_day / 60_000 % 60, 2);
    out.push(':');
    push_digits(out, ms_of_day / 1000 % 60, 2);
    out.push('.');
    push_digits(out, ms_of_day % 1000, 3);
    out.push('Z');
}

/// `epoch_ms` as an HTTP date (RFC 9110 §5.6.7 IMF-fixdate), e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`: always 29 bytes. Clamped to years 0000..=9999 like
/// `write_rfc3339_ms`.
pub fn imf_fixdate(epoch_ms: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]; // 1970-01-01: Thu
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let epoch_ms = epoch_ms.clamp(MIN_FORMATTABLE_MS, MAX_FORMATTABLE_MS);
    let days = epoch_ms.div_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let ms_of_day = epoch_ms.rem_euclid(MS_PER_DAY);
    let mut out = String::with_capacity(29);
    out.push_str(DAYS[days.rem_euclid(7) as usize]);
    out.push_str(", ");
    push_digits(&mut out, i64::from(day), 2);
    out.push(' ');
    out.push_str(MONTHS[(month - 1) as usize]);
    out.push(' ');
    push_digits(&mut out, year, 4);
    out.push(' ');
    push_digits(&mut out, ms_of_day / 3_600_000, 2);
    out.push(':');
    push_digits(&mut out, ms_of_day / 60_000 % 60, 2);
    out.push(':');
    push_digits(&mut out, ms_of_day / 1000 % 60, 2);
    out.push_str(" GMT");
    out
}

/// `write_rfc3339_ms` into a new string.
pub fn format_rfc3339_ms(epoch_ms: i64) -> String {
    let mut out = String::with_capacity(24);
    write_rfc3339_ms(&mut out, epoch_ms);
    out
}

/// Parses an RFC 3339 date-time, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`, into epoch
/// milliseconds (UTC).
///
/// Every field is required, at its fixed width, and must name a real instant: the day must
/// exist in its month (leap years included), the year is 0000..=9999. Accepted as RFC 3339
/// allows: `t` and `z` in lower case, and a fraction of 1 to 9 digits (finer than anyone
/// writes), truncated to milliseconds. Refused: a space as separator, a leap second (`:60`,
/// which epoch time cannot represent), a missing offset, and anything after the offset.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, TimeError> {
    let mut input = Cursor { rest: s.as_bytes() };
    let year = input.digits(4)?;
    input.one_of(b"-")?;
    let month = input.digits(2)?;
    input.one_of(b"-")?;
    let day = input.digits(2)?;
    input.one_of(b"Tt")?;
    let hour = input.digits(2)?;
    input.one_of(b":")?;
    let minute = input.digits(2)?;
    input.one_of(b":")?;
    let second = input.digits(2)?;

    let mut millis = 0;
    if input.one_of(b".").is_ok() {
        let mut fraction_digits = 0;
        while let Ok(digit) = input.digits(1) {
            // Digits after the third only add precision we do not keep.
            if fraction_digits < 3 {
                millis = millis * 10 + digit;
            }
            fraction_digits += 1;
        }
        if !(1..=9).contains(&fraction_digits) {
            return Err(TimeError);
        }
        for _ in fraction_digits..3 {
            millis *= 10;
        }
    }

    // Minutes to subtract to reach UTC.
    let offset_minutes = match input.one_of(b"Zz+-")? {
        b'Z' | b'z' => 0,
        sign => {
            let hours = input.digits(2)?;
            input.one_of(b":")?;
            let minutes = input.digits(2)?;
            if hours > 23 || minutes > 59 {
                return Err(TimeError);
            }
            let offset = i64::from(hours * 60 + minutes);
            if sign == b'-' {
                -offset
            } else {
                offset
            }
        }
    };
    if !input.rest.is_empty() {
        return Err(TimeError);
    }

    let year = i64::from(year);
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 59;
    if !valid {
        return Err(TimeError);
    }
    let ms_of_day = i64::from(((hour * 60 + minute) * 60 + second) * 1000 + millis);
    let epoch_ms =
        days_from_civil(year, month, day) * MS_PER_DAY + ms_of_day - offset_minutes * 60_000;
    // An offset can carry the instant out of 0000..=9999 UTC, where it could not be written
    // back as it was given: refuse it rather than store one instant and show another.
    if !(MIN_FORMATTABLE_MS..=MAX_FORMATTABLE_MS).contains(&epoch_ms) {
        return Err(TimeError);
    }
    Ok(epoch_ms)
}

/// The first millisecond and the last millisecond (inclusive) of the UTC calendar month that
/// contains `epoch_ms`.
pub fn month_bounds_ms(epoch_ms: i64) -> (i64, i64) {
    let (year, month, _) = civil_from_days(epoch_ms.div_euclid(MS_PER_DAY));
    let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    // Overflow is only possible within a month of i64's ends, some 292 million years away;
    // there the bounds stop at i64's, still containing `epoch_ms`.
    let start = days_from_civil(year, month, 1).saturating_mul(MS_PER_DAY);
    let end = days_from_civil(next_year, next_month, 1)
        .checked_mul(MS_PER_DAY)
        .map_or(i64::MAX, |next_start| next_start - 1);
    (start, end)
}

/// Reads fixed-width fields off the front of the input; every method either consumes what it
/// asked for or fails without consuming.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl Cursor<'_> {
    /// Exactly `count` ASCII digits (at most 4, so the value fits a u32).
    fn digits(&mut self, count: usize) -> Result<u32, TimeError> {
        let field = self.rest.get(..count).ok_or(TimeError)?;
        if !field.iter().all(u8::is_ascii_digit) {
            return Err(TimeError);
        }
        self.rest = &self.rest[count..];
        Ok(field.iter().fold(0, |value, digit| value * 10 + u32::from(digit - b'0')))
    }

    /// One byte that is one of `allowed`; returns which.
    fn one_of(&mut self, allowed: &[u8]) -> Result<u8, TimeError> {
        match self.rest.split_first() {
            Some((&byte, rest)) if allowed.contains(&byte) => {
                self.rest = rest;
                Ok(byte)
            }
            _ => Err(TimeError),
        }
    }
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` (1..=12) of `year`; 0 for any other month, which no day satisfies.
fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days from 1970-01-01 to `year-month-day` (proleptic Gregorian; month 1..=12, day 1..=31).
/// Hinnant: count years from March, so the leap day is the last day of its year, and work in
/// 400-year eras of exactly 146097 days.
const fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400; // 0..=399
    let month_from_march = (month as i64 + 9) % 12; // March = 0 .. February = 11
    let day_of_year = (153 * month_from_march + 2) / 5 + day as i64 - 1; // 0..=365
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719468 days from 0000-03-01, the start of era 0, to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of `days_from_civil`: (year, month 1..=12, day 1..=31).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097; // 0..=146096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0..=11
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1; // 1..=31
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    // Both values are in range by construction (1..=12 and 1..=31), so the casts are exact.
    (year, month as u32, day as u32)
}

/// Appends `value` (0 ≤ value < 10^width after clamping) zero-padded to `width` digits.
fn push_digits(out: &mut String, value: i64, width: u32) {
    let mut divisor = 10_i64.pow(width - 1);
    while divisor > 0 {
        let digit = (value / divisor % 10) as u8;
        out.push(char::from(b'0' + digit));
        divisor /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        parse_rfc3339_ms(s).unwrap_or_else(|_| panic!("{s} should parse"))
    }

    #[test]
    fn formats_known_instants() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (1, "1970-01-01T00:00:00.001Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (1_735_689_600_000, "2025-01-01T00:00:00.000Z"),
            (1_738_367_999_999, "2025-01-31T23:59:59.999Z"),
            (1_729_501_745_915, "2024-10-21T09:09:05.915Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (MIN_FORMATTABLE_MS, "0000-01-01T00:00:00.000Z"),
            (MAX_FORMATTABLE_MS, "9999-12-31T23:59:59.999Z"),
            (i64::MIN, "0000-01-01T00:00:00.000Z"),
            (i64::MAX, "9999-12-31T23:59:59.999Z"),
        ];
        for (epoch_ms, want) in cases {
            assert_eq!(format_rfc3339_ms(epoch_ms), want, "{epoch_ms}");
        }
        let mut out = String::from("at ");
        write_rfc3339_ms(&mut out, 0);
        assert_eq!(out, "at 1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn formattable_range_constants() {
        assert_eq!(MIN_FORMATTABLE_MS, -62_167_219_200_000);
        assert_eq!(MAX_FORMATTABLE_MS, 253_402_300_799_999);
    }

    #[test]
    fn parses_valid_inputs() {
        let cases = [
            ("2025-01-01T00:00:00.000Z", 1_735_689_600_000),
            ("2025-01-31T23:59:59.999Z", 1_738_367_999_999),
            ("2025-01-01T00:00:00Z", 1_735_689_600_000),
            ("2025-01-01t00:00:00z", 1_735_689_600_000),
            ("2025-01-01T07:00:00+07:00", 1_735_689_600_000),
            ("2024-12-31T17:00:00-07:00", 1_735_689_600_000),
            ("2025-01-01T00:00:00+00:00", 1_735_689_600_000),
            ("2025-01-01T00:00:00-00:00", 1_735_689_600_000),
            ("2025-01-01T05:45:00.5+05:45", 1_735_689_600_500),
            ("2025-01-01T00:00:00.5Z", 1_735_689_600_500),
            ("2025-01-01T00:00:00.12Z", 1_735_689_600_120),
            ("2025-01-01T00:00:00.123456789Z", 1_735_689_600_123),
            ("2025-01-01T00:00:00.999999999Z", 1_735_689_600_999),
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31T23:59:59.999Z", -1),
            ("2024-02-29T12:00:00Z", 1_709_208_000_000),
            ("2000-02-29T00:00:00Z", 951_782_400_000),
            ("0000-01-01T00:00:00Z", MIN_FORMATTABLE_MS),
            ("9999-12-31T23:59:59.999Z", MAX_FORMATTABLE_MS),
        ];
        for (input, want) in cases {
            assert_eq!(parse_rfc3339_ms(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_invalid_inputs() {
        let cases = [
            "0000-01-01T00:00:00+00:01",     // before year 0000 in UTC
            "9999-12-31T23:59:59.999-00:01", // after year 9999 in UTC
            "",
            "2025",
            "2025-01-01",
            "2025-01-01T00:00:00",
            "2025-01-01T00:00:00.000",
            "2025-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2025-04-31T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-00-01T00:00:00Z",
            "2025-01-00T00:00:00Z",
            "2025-01-32T00:00:00Z",
            "2025-01-01T24:00:00Z",
            "2025-01-01T00:60:00Z",
            "2016-12-31T23:59:60Z",
            "2025-01-01 00:00:00Z",
            "2025-01-01x00:00:00Z",
            "2025-1-01T00:00:00Z",
            "25-01-01T00:00:00Z",
            "+2025-01-01T00:00:00Z",
            "12025-01-01T00:00:00Z",
            "2025-01-01T00:00:00.Z",
            "2025-01-01T00:00:00.1234567890Z",
            "2025-01-01T00:00:00,5Z",
            "2025-01-01T00:00:00ZZ",
            "2025-01-01T00:00:00Z ",
            " 2025-01-01T00:00:00Z",
            "2025-01-01T00:00:00.000Zjunk",
            "2025-01-01T00:00:00+07",
            "2025-01-01T00:00:00+0700",
            "2025-01-01T00:00:00+7:00",
            "2025-01-01T00:00:00+24:00",
            "2025-01-01T00:00:00+07:60",
            "2025-01-01T00:00:00+07:00Z",
            "2025-01-01T00:00:00UTC",
            "2025-01-0１T00:00:00Z",
            "2025-01-01T00:00:00.٣Z",
            "2025-01-01T00:00:00Ж",
            "-001-01-01T00:00:00Z",
        ];
        for input in cases {
            assert_eq!(parse_rfc3339_ms(input), Err(TimeError), "{input:?}");
        }
        assert_eq!(
            TimeError.to_string(),
            "not an RFC 3339 date-time, e.g. 2025-01-31T23:59:59.999Z"
        );
    }

    #[test]
    fn format_then_parse_round_trips() {
        // Steps chosen coprime to days and months, so every field takes many values; covers
        // instants before 1970 and leap days.
        let mut epoch_ms = MIN_FORMATTABLE_MS;
        while epoch_ms <= MAX_FORMATTABLE_MS {
            let text = format_rfc3339_ms(epoch_ms);
            assert_eq!(parse_rfc3339_ms(&text), Ok(epoch_ms), "{text}");
            epoch_ms += 7_777_777_777;
        }
        for input in
            ["2024-02-29T23:59:59.999Z", "1600-02-29T00:00:00.000Z", "1969-12-31T00:00:00.000Z"]
        {
            assert_eq!(format_rfc3339_ms(ms(input)), input);
        }
    }

    #[test]
    fn civil_and_days_are_inverse_over_every_formattable_day() {
        let first = days_from_civil(0, 1, 1);
        let last = days_from_civil(9999, 12, 31);
        let mut expected = (0, 1, 1);
        for days in first..=last {
            let (year, month, day) = civil_from_days(days);
            assert_eq!((year, month, day), expected, "{days}");
            assert_eq!(days_from_civil(year, month, day), days);
            expected = if day < days_in_month(year, month) {
                (year, month, day + 1)
            } else if month < 12 {
                (year, month + 1, 1)
            } else {
                (year + 1, 1, 1)
            };
        }
    }

    #[test]
    fn month_bounds() {
        let cases = [
            ("2025-01-15T12:00:00Z", "2025-01-01T00:00:00.000Z", "2025-01-31T23:59:59.999Z"),
            ("2025-01-01T00:00:00Z", "2025-01-01T00:00:00.000Z", "2025-01-31T23:59:59.999Z"),
            ("2025-01-31T23:59:59.999Z", "2025-01-01T00:00:00.000Z", "2025-01-31T23:59:59.999Z"),
            ("2024-02-10T00:00:00Z", "2024-02-01T00:00:00.000Z", "2024-02-29T23:59:59.999Z"),
            ("2023-02-10T00:00:00Z", "2023-02-01T00:00:00.000Z", "2023-02-28T23:59:59.999Z"),
            ("2024-12-31T23:59:59.999Z", "2024-12-01T00:00:00.000Z", "2024-12-31T23:59:59.999Z"),
            ("2024-04-30T10:00:00Z", "2024-04-01T00:00:00.000Z", "2024-04-30T23:59:59.999Z"),
            ("1969-12-31T23:59:59.999Z", "1969-12-01T00:00:00.000Z", "1969-12-31T23:59:59.999Z"),
            ("9999-12-15T00:00:00Z", "9999-12-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z"),
        ];
        for (at, start, end) in cases {
            assert_eq!(month_bounds_ms(ms(at)), (ms(start), ms(end)), "{at}");
        }
        // Far beyond any real clock: saturates instead of overflowing.
        let (start, end) = month_bounds_ms(i64::MAX);
        assert!(start < end && end == i64::MAX);
        let (start, end) = month_bounds_ms(i64::MIN);
        assert!(start == i64::MIN && start < end);
    }

    #[test]
    fn http_dates() {
        assert_eq!(imf_fixdate(784_111_777_000), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(imf_fixdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(imf_fixdate(951_782_400_999), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(imf_fixdate(-1), "Wed, 31 Dec 1969 23:59:59 GMT");
        assert_eq!(imf_fixdate(i64::MAX).len(), 29);
    }
}
