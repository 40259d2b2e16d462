//! Go duration strings (`"5s"`, `"1h30m"`, `"2160h"`), the format Istio and OSM users write in
//! their configs. Parsed here exactly as Go's `time.ParseDuration` reads the subset we accept:
//! a sequence of decimal numbers each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), no sign.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration is empty: write a number with a unit, such as \"24h\" or \"90s\"")]
    Empty,
    #[error(
        "duration {0:?} is not a Go duration: write numbers with units ns, us, ms, s, m or h, such as \"1h30m\""
    )]
    Syntax(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// The regular expression the CRD schema uses for a Go duration (kept equal to `parse`).
pub const GO_DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

pub fn parse(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let syntax = || DurationError::Syntax(input.to_string());
    let mut rest = input;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(syntax)?;
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return Err(syntax()),
        };
        let (whole, fraction) = match number.split_once('.') {
            Some((w, f)) if !w.is_empty() && !f.is_empty() => (w, f),
            Some(_) => return Err(syntax()),
            None if !number.is_empty() => (number, ""),
            None => return Err(syntax()),
        };
        let overflow = || DurationError::Overflow(input.to_string());
        let whole: u128 = whole.parse().map_err(|_| overflow())?;
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(overflow)?;
        // Fractions are exact up to the nanosecond; further digits are dropped, as Go does.
        let mut scale = unit_nanos;
        for digit in fraction.bytes() {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(overflow)?;
        rest = tail;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| DurationError::Overflow(input.to_string()))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Formats a duration the way Go prints it for whole seconds (`"24h0m0s"` becomes `"24h"` here:
/// we drop zero components, which Go's parser reads back identically).
pub fn format(duration: Duration) -> String {
    let secs = duration.as_secs();
    if duration.subsec_nanos() != 0 {
        return format!("{}ms", duration.as_millis());
    }
    if secs == 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if s > 0 {
        out += &format!("{s}s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_go_parses() {
        let cases = [
            ("24h", 24 * 3_600_000),
            ("1h30m", 5_400_000),
            ("90s", 90_000),
            ("1.5h", 5_400_000),
            ("500ms", 500),
            ("2160h", 2160 * 3_600_000),
            ("1m0.5s", 60_500),
        ];
        for (text, millis) in cases {
            assert_eq!(parse(text).unwrap().as_millis(), millis, "{text}");
        }
        assert_eq!(parse("10us").unwrap(), Duration::from_micros(10));
        assert_eq!(parse("10µs").unwrap(), Duration::from_micros(10));
    }

    #[test]
    fn rejects_what_go_rejects_and_says_how_to_fix_it() {
        for bad in [
            "", "10", "h", "1d", "-1h", "1.h", ".5h", "1h 30m", "1H", "10m30",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.to_string().contains("duration"), "{bad}: {err}");
        }
        assert!(parse("1d").unwrap_err().to_string().contains("such as"));
    }

    #[test]
    fn format_round_trips() {
        for text in ["24h", "1h30m", "5s", "2160h", "1h0m1s"] {
            let d = parse(text).unwrap();
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
        assert_eq!(format(Duration::from_secs(5)), "5s");
        assert_eq!(format(Duration::from_secs(86400)), "24h");
    }
}
