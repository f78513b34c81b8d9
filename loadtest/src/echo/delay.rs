//! `?delay=DURATION`: how long to wait before answering.
//!
//! Tests use it to exercise the gateway's timeouts and slow-backend handling, so an
//! unparseable value is a 400 rather than "no delay": a typo must not make a timeout test
//! pass by accident.

use std::time::Duration;

/// Longer than any sensible test; anything above it is almost certainly a unit mistake.
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// The delay the query string asks for, if any. The first `delay` parameter wins.
pub(crate) fn from_query(query: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(query) = query else {
        return Ok(None);
    };
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("delay="))
        .map(parse)
        .transpose()
}

/// Parses `150ms`, `2s`, `1m`, `1h`, `500us`, or a bare integer meaning milliseconds.
/// Only whole numbers: nothing needs fractions, and rejecting them keeps this exact.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("invalid delay {text:?}: expected e.g. 100ms, 2s, 1m or 250"))?;
    let delay = match unit {
        "us" | "µs" => Some(Duration::from_micros(amount)),
        "" | "ms" => Some(Duration::from_millis(amount)),
        "s" => Some(Duration::from_secs(amount)),
        "m" => amount.checked_mul(60).map(Duration::from_secs),
        "h" => amount.checked_mul(3600).map(Duration::from_secs),
        _ => {
            return Err(format!(
                "invalid delay unit in {text:?}: expected us, ms, s, m or h"
            ));
        }
    };
    match delay {
        Some(delay) if delay <= MAX_DELAY => Ok(delay),
        _ => Err(format!(
            "delay {text:?} exceeds the maximum of {}s",
            MAX_DELAY.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_milliseconds() {
        assert_eq!(parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("500us"), Ok(Duration::from_micros(500)));
    }

    #[test]
    fn rejects_garbage_fractions_and_huge_values() {
        for bad in ["", "ms", "1.5s", "10x", "-1s", "2h", "99999999999999999999"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn finds_the_delay_among_other_parameters() {
        assert_eq!(from_query(None), Ok(None));
        assert_eq!(from_query(Some("a=1&b=2")), Ok(None));
        assert_eq!(
            from_query(Some("a=1&delay=3s&delay=1s")),
            Ok(Some(Duration::from_secs(3)))
        );
        assert!(from_query(Some("delay=soon")).is_err());
    }
}
