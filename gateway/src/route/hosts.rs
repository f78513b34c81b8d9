//! Hostname lookup with the Gateway API's specificity: an exact name beats the wildcard with
//! the longest suffix, which beats the catch-all. Lookups never allocate.

use std::collections::HashMap;

#[derive(Debug)]
pub struct HostTable<T> {
    exact: HashMap<Box<str>, T>,
    /// Keyed by the suffix with its leading dot (`.example.com` for `*.example.com`).
    wildcard: HashMap<Box<str>, T>,
    any: Option<T>,
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: None,
        }
    }
}

impl<T> HostTable<T> {
    /// Adds `value` under a lower-case pattern: `a.example.com`, `*.example.com` or `*`.
    /// The first value added for a pattern wins, so callers insert in precedence order.
    pub fn insert(&mut self, pattern: &str, value: T) {
        if pattern == "*" {
            if self.any.is_none() {
                self.any = Some(value);
            }
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            self.wildcard.entry(suffix.into()).or_insert(value);
        } else {
            self.exact.entry(pattern.into()).or_insert(value);
        }
    }

    /// The most specific entry for `host` (lower-case, without port).
    pub fn get(&self, host: &str) -> Option<&T> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        if !self.wildcard.is_empty() {
            // Longest suffix first: strip one label at a time, keeping the leading dot.
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                let suffix = &rest[dot..];
                if let Some(v) = self.wildcard.get(suffix) {
                    return Some(v);
                }
                rest = &rest[dot + 1..];
            }
        }
        self.any.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_none()
    }
}

/// Splits an authority (`host`, `host:port`, `[v6]:port`) into its host and the digits of
/// its port (possibly empty). A colon that cannot separate a port (`a:b`, `a::80`, `a:+80`)
/// leaves the whole authority as the host, so it matches no hostname.
pub(crate) fn split_authority(raw: &str) -> (&str, Option<&str>) {
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if let Some(end) = raw.strip_prefix('[').and_then(|r| r.find(']')) {
        // IPv6 literal: keep the brackets; what follows them is at most a port.
        let (host, rest) = raw.split_at(end + 2);
        return (host, rest.strip_prefix(':').filter(|p| digits(p)));
    }
    match raw.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && digits(p) => (h, Some(p)),
        _ => (raw, None),
    }
}

/// The host of a request, lower-cased without its port and trailing dots, borrowed when it
/// already is. Normalising a normalised host changes nothing.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    // The usual Host, a lower-case name without a port, is told in one pass: the general
    // path scans it four times (a tenth of routing a request).
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-';
    if !raw.ends_with('.') && raw.bytes().all(plain) {
        return std::borrow::Cow::Borrowed(raw);
    }
    normalize_general(raw)
}

fn normalize_general(raw: &str) -> std::borrow::Cow<'_, str> {
    let (host, _) = split_authority(raw);
    let host = if host.contains(':') {
        // An IPv6 literal (no dot to trim), or no hostname at all: kept whole, as trimming a
        // dot could make a port of what precedes it.
        host
    } else {
        host.trim_end_matches('.')
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_wins() {
        let mut t = HostTable::default();
        t.insert("*", 0);
        t.insert("*.example.com", 1);
        t.insert("*.a.example.com", 2);
        t.insert("x.a.example.com", 3);
        assert_eq!(t.get("x.a.example.com"), Some(&3));
        assert_eq!(t.get("y.a.example.com"), Some(&2));
        assert_eq!(t.get("deep.y.a.example.com"), Some(&2));
        assert_eq!(t.get("b.example.com"), Some(&1));
        assert_eq!(
            t.get("example.com"),
            Some(&0),
            "*.example.com does not match example.com"
        );
        assert_eq!(t.get("other.org"), Some(&0));
        let mut no_any = HostTable::default();
        no_any.insert("*.example.com", 1);
        assert_eq!(no_any.get("example.com"), None);
        assert_eq!(no_any.get("a.example.com"), Some(&1));
    }

    #[test]
    fn first_insert_wins() {
        let mut t = HostTable::default();
        t.insert("a.com", 1);
        t.insert("a.com", 2);
        assert_eq!(t.get("a.com"), Some(&1));
    }

    #[test]
    fn hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(normalize_host("Example.COM:8443"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert!(matches!(
            normalize_host("a.b"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    /// Found by the `request_path` fuzz target: `a::::` lost one colon per normalisation
    /// (an empty port each time), `a..` one dot, `a:1.` became `a:1` and then `a`.
    #[test]
    fn normalizing_is_idempotent() {
        for raw in [
            "a::::", "A:", "a..", "a.:80", "a:1.", "a:1:2", "::1", "[::1]:80", "[::1]x", "[a]b]:1",
            "[:80", "[.:80", "[a:80.", "a:+80", "", ":", ".", "[",
        ] {
            let once = normalize_host(raw);
            assert_eq!(normalize_host(&once), once, "{raw:?}");
        }
        assert_eq!(normalize_host("a.:80"), "a");
        assert_eq!(normalize_host("Example.com..:443"), "example.com");
        assert_eq!(normalize_host("a::80"), "a::80", "not a host and a port");
        // The one-pass answer is the general one.
        for raw in [
            "",
            ".",
            "a",
            "a.",
            "a-b.example.com",
            "a.b.c:80",
            "A.b",
            "xn--bcher-kva.example",
            "10.0.0.1",
            "10.0.0.1:8080",
            "[::1]",
            "under_score.example",
            "a..",
        ] {
            assert_eq!(normalize_host(raw), normalize_general(raw), "{raw:?}");
        }
        assert_eq!(normalize_host("a:80."), "a:80.", "not a host and a port");
    }
}
