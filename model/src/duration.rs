//! Durations as Gateway API resources write them (GEP-2257): one to four parts of up to
//! five digits, each with a unit of `h`, `m`, `s` or `ms` (`10s`, `500ms`, `1h30m`). The
//! CRDs validate with `^([0-9]{1,5}(h|m|s|ms)){1,4}$`, which allows any order and a unit
//! twice (`1s1s` is 2 s), so this does too: what the API server admits must not fail here. Routes' timeouts, RateLimitPolicy windows and the sidecar's
//! flags all read this one grammar, so a value that works in one place works in the others.
//!
//! Here rather than `gateway_api::Duration` so that the sidecar and the gateway's IR need
//! no Kubernetes crate; the controller's tests check that both parsers agree.

use std::time::Duration;

/// Parses a GEP-2257 duration. The error says what is wrong, for a status message or a
/// flag's error.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut rest = text.as_bytes();
    let mut total = Duration::ZERO;
    const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];
    let mut parts = 0;
    while !rest.is_empty() {
        parts += 1;
        if parts > 4 {
            return Err(DurationError::TooManyParts(text.to_owned()));
        }
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(DurationError::Malformed(text.to_owned()));
        }
        if digits > 5 {
            return Err(DurationError::TooManyDigits(text.to_owned()));
        }
        let value: u64 = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| DurationError::Malformed(text.to_owned()))?;
        rest = &rest[digits..];
        let letters = rest.iter().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = std::str::from_utf8(&rest[..letters]).unwrap_or("");
        let Some(at) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(DurationError::Malformed(text.to_owned()));
        };
        total += Duration::from_millis(value * UNITS[at].1);
        rest = &rest[letters..];
    }
    // GEP-2257's ceiling, which the spec states beside the grammar.
    let max = Duration::from_millis(99_999 * 3_600_000 + 59 * 60_000 + 59 * 1_000 + 999);
    if total > max {
        return Err(DurationError::TooLong(text.to_owned()));
    }
    Ok(total)
}

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("an empty duration; write one like 10s, 500ms or 1m30s")]
    Empty,
    #[error("{0:?} is not a duration like 10s, 500ms or 1m30s (units h, m, s, ms)")]
    Malformed(String),
    #[error("{0:?}: each part of a duration has at most 5 digits")]
    TooManyDigits(String),
    #[error("{0:?} is longer than the most a Gateway API duration may be, 99999h59m59s999ms")]
    TooLong(String),
    #[error("{0:?}: a duration has at most 4 parts, like 1h2m3s4ms")]
    TooManyParts(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_examples_of_gep_2257() {
        let ms = |t: &str| parse(t).map(|d| d.as_millis());
        assert_eq!(ms("0s"), Ok(0));
        assert_eq!(ms("10s"), Ok(10_000));
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("2h45m"), Ok(9_900_000));
        assert_eq!(ms("1h2m3s4ms"), Ok(3_723_004));
        assert_eq!(ms("99999s"), Ok(99_999_000));
        assert_eq!(ms("1s1s"), Ok(2_000));
        assert_eq!(ms("30s1m"), Ok(90_000));
    }

    #[test]
    fn refuses_what_gep_2257_does_not_allow() {
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "+1s",
            "1d",
            "1S",
            " 1s",
            "1s ",
            "100000s",
            "1µs",
            "1ns",
            "1us",
            "1s1s1s1s1s",
            "99999h60m",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
