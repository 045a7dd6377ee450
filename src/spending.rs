//! The spending rules: how much of a limit is used, when that is an alert, and the JSON of the
//! status object (`/status`) and of a `notification` event's data.
//!
//! Pure arithmetic on values the store hands in; no I/O and no clock. Percentages are computed
//! in integers (hundredths of a percent) so that 267000 of 200000 is exactly 133.5, and the
//! alert threshold is compared exactly against the decimal the client sent.

use crate::domain::UserId;
use crate::time::write_rfc3339_ms;
use std::fmt::Write as _;

/// An alert threshold in (0, 100], kept as the exact decimal `mantissa / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertPercentage {
    value: f64,
    mantissa: i64,
    scale: u32,
}

/// Beyond this many decimals a threshold is rounded: nobody sets an alert at 85.0000000001 %.
const MAX_ALERT_DECIMALS: u32 = 9;

impl AlertPercentage {
    /// Accepts a percentage in (0, 100]; `None` for anything else (NaN, ≤ 0, > 100).
    pub fn new(value: f64) -> Option<AlertPercentage> {
        if !(value > 0.0 && value <= 100.0) {
            return None;
        }
        // Rust prints an f64 as the shortest decimal that reads back to the same value, and
        // never in exponent form: that text is the decimal the client meant.
        let text = format!("{value}");
        let (int_part, frac_part) = text.split_once('.').unwrap_or((&text, ""));
        let frac = &frac_part[..frac_part.len().min(MAX_ALERT_DECIMALS as usize)];
        let digits = format!("{int_part}{frac}");
        let mantissa: i64 = digits.parse().ok()?;
        let alert = AlertPercentage { value, mantissa, scale: frac.len() as u32 };
        if alert.mantissa <= 0 {
            return None;
        }
        Some(alert)
    }

    pub fn value(self) -> f64 {
        self.value
    }

    /// Whether `hundredths / 100 >= mantissa / 10^scale`, without rounding.
    fn is_reached_by(self, hundredths: i128) -> bool {
        hundredths * 10i128.pow(self.scale) >= self.mantissa as i128 * 100
    }
}

/// A user's budget for a period; both ends are inclusive, in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub max_limit: i64,
    pub alert: AlertPercentage,
    pub periode_start_ms: i64,
    pub periode_end_ms: i64,
}

impl Limit {
    pub fn covers(&self, epoch_ms: i64) -> bool {
        self.periode_start_ms <= epoch_ms && epoch_ms <= self.periode_end_ms
    }
}

/// What the user has spent against a limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Status {
    pub current_spending: i64,
    pub limit: Limit,
    /// currentPercentage × 100, rounded half away from zero.
    pub percentage_hundredths: i128,
    pub is_alert: bool,
}

impl Status {
    pub fn compute(current_spending: i64, limit: Limit) -> Status {
        let percentage_hundredths = percentage_hundredths(current_spending, limit.max_limit);
        Status {
            current_spending,
            limit,
            percentage_hundredths,
            is_alert: limit.alert.is_reached_by(percentage_hundredths),
        }
    }

    /// The `/status` object.
    pub fn write_json(&self, out: &mut String) {
        let _ = write!(
            out,
            "{{\"currentSpending\":{},\"maxLimit\":{},\"alertPercentage\":{},\
             \"currentPercentage\":",
            self.current_spending,
            self.limit.max_limit,
            self.limit.alert.value()
        );
        write_hundredths(out, self.percentage_hundredths);
        let _ = write!(out, ",\"isAlert\":{},\"periodeStart\":\"", self.is_alert);
        write_rfc3339_ms(out, self.limit.periode_start_ms);
        out.push_str("\",\"periodeEnd\":\"");
        write_rfc3339_ms(out, self.limit.periode_end_ms);
        out.push_str("\"}");
    }

    /// The data of a `notification` event (`maxSpending`, not `maxLimit`, as in the seed).
    pub fn write_notification_json(&self, user: UserId, now_ms: i64, out: &mut String) {
        let _ = write!(
            out,
            "{{\"userId\":{},\"currentSpending\":{},\"maxSpending\":{},\"alertPercentage\":{},\
             \"currentPercentage\":",
            user,
            self.current_spending,
            self.limit.max_limit,
            self.limit.alert.value()
        );
        write_hundredths(out, self.percentage_hundredths);
        let _ = write!(out, ",\"isAlert\":{},\"timestamp\":\"", self.is_alert);
        write_rfc3339_ms(out, now_ms);
        out.push_str("\"}");
    }
}

/// spending × 100 / max, in hundredths, rounded half away from zero.
fn percentage_hundredths(spending: i64, max_limit: i64) -> i128 {
    if max_limit <= 0 {
        return 0;
    }
    let numerator = spending as i128 * 10_000;
    let max = max_limit as i128;
    let half_up = (numerator.abs() * 2 + max) / (2 * max);
    if numerator < 0 {
        -half_up
    } else {
        half_up
    }
}

/// Writes hundredths as the shortest decimal: 13350 → 133.5, 5000 → 50, 1 → 0.01.
fn write_hundredths(out: &mut String, hundredths: i128) {
    if hundredths < 0 {
        out.push('-');
    }
    let abs = hundredths.unsigned_abs();
    let (whole, frac) = (abs / 100, abs % 100);
    let _ = match frac {
        0 => write!(out, "{whole}"),
        f if f % 10 == 0 => write!(out, "{whole}.{}", f / 10),
        f => write!(out, "{whole}.{f:02}"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: i64, alert: f64) -> Limit {
        Limit {
            max_limit: max,
            alert: AlertPercentage::new(alert).unwrap(),
            periode_start_ms: 1_735_689_600_000,
            periode_end_ms: 1_738_367_999_999,
        }
    }

    #[test]
    fn the_seed_example_is_exact() {
        let status = Status::compute(267_000, limit(200_000, 85.0));
        let mut json = String::new();
        status.write_json(&mut json);
        assert_eq!(
            json,
            r#"{"currentSpending":267000,"maxLimit":200000,"alertPercentage":85,"currentPercentage":133.5,"isAlert":true,"periodeStart":"2025-01-01T00:00:00.000Z","periodeEnd":"2025-01-31T23:59:59.999Z"}"#
        );
        let mut note = String::new();
        status.write_notification_json(UserId(13), 1_761_037_745_915, &mut note);
        assert_eq!(
            note,
            r#"{"userId":13,"currentSpending":267000,"maxSpending":200000,"alertPercentage":85,"currentPercentage":133.5,"isAlert":true,"timestamp":"2025-10-21T09:09:05.915Z"}"#
        );
    }

    #[test]
    fn percentages_round_half_away_from_zero() {
        let cases: &[(i64, i64, i128, &str)] = &[
            (267_000, 200_000, 13_350, "133.5"),
            (1, 3, 3_333, "33.33"),
            (2, 3, 6_667, "66.67"),
            (1, 8, 1_250, "12.5"),
            (1, 80_000, 0, "0"),    // 0.00125 % → 0.00
            (1, 40_000, 0, "0"),    // 0.0025 % → 0.00 (third decimal below half)
            (1, 20_000, 1, "0.01"), // 0.005 % → 0.01: half rounds away from zero
            (0, 5, 0, "0"),
            (5, 5, 10_000, "100"),
            (i64::MAX, 1, i64::MAX as i128 * 10_000, "922337203685477580700"),
        ];
        for &(spent, max, want, text) in cases {
            let got = percentage_hundredths(spent, max);
            assert_eq!(got, want, "{spent}/{max}");
            let mut out = String::new();
            write_hundredths(&mut out, got);
            assert_eq!(out, text);
        }
    }

    #[test]
    fn the_alert_is_reached_at_equality_and_compared_exactly() {
        let cases: &[(i64, i64, f64, bool)] = &[
            (85, 100, 85.0, true),
            (8_499, 10_000, 85.0, false),
            (851, 1_000, 85.1, true), // 85.1 is not exact in binary: compared as a decimal
            (850, 1_000, 85.1, false),
            (8_510, 10_000, 85.1, true),
            (1, 3, 33.33, true),
            (1, 3, 33.34, false),
            (100, 100, 100.0, true),
            (0, 100, 0.5, false),
        ];
        for &(spent, max, alert, want) in cases {
            assert_eq!(
                Status::compute(spent, limit(max, alert)).is_alert,
                want,
                "{spent}/{max} vs {alert}"
            );
        }
    }

    #[test]
    fn alert_percentage_accepts_only_zero_to_hundred() {
        for bad in [0.0, -1.0, 100.000_001, f64::NAN, f64::INFINITY] {
            assert!(AlertPercentage::new(bad).is_none(), "{bad}");
        }
        for good in [0.01, 1e-7, 85.0, 85.5, 100.0] {
            assert!(AlertPercentage::new(good).is_some(), "{good}");
        }
    }

    #[test]
    fn limit_covers_both_ends() {
        let l = limit(1, 50.0);
        assert!(l.covers(l.periode_start_ms));
        assert!(l.covers(l.periode_end_ms));
        assert!(!l.covers(l.periode_end_ms + 1));
        assert!(!l.covers(l.periode_start_ms - 1));
    }
}
