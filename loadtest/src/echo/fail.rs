//! Failing on purpose: `--fail-ratio R` answers each counted request, independently with
//! probability R, with `--fail-status` instead of the echo; `POST /__echo/fail?ratio=R`
//! changes R at runtime.
//!
//! Balance harnesses use it to make one endpoint flaky (retries, passive outlier ejection)
//! and then healthy again without restarting it. Independent draws rather than "every Nth"
//! so a gateway cannot pass by happening to line up with a pattern.

use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;

/// What a new instance fails with; validated, so a harness typo fails at start-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Failure {
    ratio: f64,
    status: StatusCode,
}

impl Default for Failure {
    fn default() -> Self {
        Self {
            ratio: 0.0,
            status: StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl Failure {
    /// `ratio` in 0.0..=1.0; `status` a final status (200..=599).
    pub fn new(ratio: f64, status: u16) -> Result<Self, String> {
        let ratio = check_ratio(ratio)?;
        let status = (200..=599)
            .contains(&status)
            .then(|| StatusCode::from_u16(status).ok())
            .flatten()
            .ok_or_else(|| format!("fail status {status} is not in 200..=599"))?;
        Ok(Self { ratio, status })
    }

    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// Parses a ratio given as text (flag, env or query), refusing anything outside 0..=1.
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    let ratio: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("invalid fail ratio {text:?}: expected a number in 0.0..=1.0"))?;
    check_ratio(ratio)
}

fn check_ratio(ratio: f64) -> Result<f64, String> {
    // The negated range test also refuses NaN.
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("fail ratio {ratio} is not in 0.0..=1.0"))
    }
}

/// The live failure setting, shared by every connection; the ratio is an atomic (f64 bits)
/// because the control endpoint changes it while requests read it.
#[derive(Debug)]
pub(crate) struct Failer {
    ratio_bits: AtomicU64,
    status: StatusCode,
}

impl Failer {
    pub(crate) fn new(failure: Failure) -> Self {
        Self {
            ratio_bits: AtomicU64::new(failure.ratio.to_bits()),
            status: failure.status,
        }
    }

    /// The status this request must get instead of the echo, if it drew a failure.
    pub(crate) fn draw(&self) -> Option<StatusCode> {
        let ratio = self.ratio();
        // No random draw at 0 (the benchmark default) and none needed at 1.
        let fail = ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio);
        fail.then_some(self.status)
    }

    pub(crate) fn ratio(&self) -> f64 {
        f64::from_bits(self.ratio_bits.load(Ordering::Relaxed))
    }

    /// Sets the ratio and returns the previous one.
    pub(crate) fn set_ratio(&self, ratio: f64) -> f64 {
        f64::from_bits(self.ratio_bits.swap(ratio.to_bits(), Ordering::Relaxed))
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
}

/// The `ratio` parameter of a `POST /__echo/fail` query.
pub(crate) fn ratio_from_query(query: Option<&str>) -> Result<f64, String> {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("ratio="))
        .ok_or_else(|| "missing ?ratio=R (0.0..=1.0)".to_owned())
        .and_then(parse_ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_outside_zero_to_one_are_refused() {
        assert_eq!(parse_ratio("0"), Ok(0.0));
        assert_eq!(parse_ratio("0.5"), Ok(0.5));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        for bad in ["-0.1", "1.01", "NaN", "inf", "", "half"] {
            assert!(parse_ratio(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Failure::new(0.5, 199).is_err());
        assert!(Failure::new(0.5, 600).is_err());
        assert!(Failure::new(2.0, 503).is_err());
    }

    #[test]
    fn draws_follow_the_ratio() {
        let failer = Failer::new(Failure::new(0.0, 500).unwrap());
        assert!((0..1000).all(|_| failer.draw().is_none()));
        assert_eq!(failer.set_ratio(1.0), 0.0);
        assert!((0..1000).all(|_| failer.draw() == Some(StatusCode::INTERNAL_SERVER_ERROR)));
        failer.set_ratio(0.25);
        let failed = (0..40_000).filter(|_| failer.draw().is_some()).count();
        // Binomial sd is about 87; 1,000 is more than ten of them.
        assert!((9_000..11_000).contains(&failed), "{failed} of 40000");
    }

    #[test]
    fn the_query_needs_a_valid_ratio() {
        assert_eq!(ratio_from_query(Some("x=1&ratio=0.3")), Ok(0.3));
        assert!(ratio_from_query(None).is_err());
        assert!(ratio_from_query(Some("ratio=2")).is_err());
    }
}
