//! Hostname rules of the Gateway API: validation, wildcard matching, listener/route
//! intersection and specificity order. All names are compared lower-case.

use std::cmp::Reverse;

/// Validates a Listener or Route hostname (RFC 1123 subdomain, optionally prefixed `*.`;
/// IP addresses are not hostnames) and returns it lower-cased.
pub(crate) fn normalize(raw: &str, allow_wildcard: bool) -> Result<String, String> {
    let h = raw.to_ascii_lowercase();
    let rest = match h.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        Some(_) => return Err(format!("hostname {raw:?} may not be a wildcard here")),
        None => h.as_str(),
    };
    if rest.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "hostname {raw:?} is an IP address; hostnames must be DNS names"
        ));
    }
    if rest.is_empty() || h.len() > 253 {
        return Err(format!("hostname {raw:?} is not a valid DNS name"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !rest.split('.').all(label_ok) {
        return Err(format!(
            "hostname {raw:?} is not a valid DNS name (RFC 1123 labels, optionally prefixed by `*.`)"
        ));
    }
    Ok(h)
}

pub(crate) fn is_wildcard(h: &str) -> bool {
    h.starts_with("*.") || h == "*"
}

/// Whether every host matched by `specific` is matched by `general`. `*` covers everything;
/// `*.example.com` covers `a.example.com` and `*.a.example.com`, never `example.com`.
pub(crate) fn covers(general: &str, specific: &str) -> bool {
    if general == "*" || general == specific {
        return true;
    }
    match general.strip_prefix('*') {
        // `suffix` keeps its leading dot, so at least one label must precede it.
        Some(suffix) => {
            specific.len() > suffix.len() && specific.ends_with(suffix) && specific != "*"
        }
        None => false,
    }
}

/// The hostname a route serves on a listener: the more specific of the two when one covers
/// the other, nothing otherwise. A listener without hostname accepts the route's as is.
pub(crate) fn intersect(listener: Option<&str>, route: &str) -> Option<String> {
    let listener = listener.unwrap_or("*");
    if covers(listener, route) {
        Some(route.to_string())
    } else if covers(route, listener) {
        Some(listener.to_string())
    } else {
        None
    }
}

/// Sort key putting the most specific hostname first: exact names, then wildcards with more
/// labels, then `*`. Ties fall back to the name for a deterministic order.
pub(crate) fn specificity(h: &str) -> (bool, Reverse<usize>, &str) {
    (is_wildcard(h), Reverse(h.len()), h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_validates() {
        assert_eq!(
            normalize("Foo.Example.COM", true).unwrap(),
            "foo.example.com"
        );
        assert_eq!(normalize("*.example.com", true).unwrap(), "*.example.com");
        assert!(normalize("*.example.com", false).is_err());
        assert!(normalize("10.0.0.1", true).is_err());
        assert!(normalize("a..b", true).is_err());
        assert!(normalize("-a.b", true).is_err());
        assert!(normalize("a_b.c", true).is_err());
        assert!(normalize("*", true).is_err());
        assert!(normalize("foo.*.com", true).is_err());
    }

    #[test]
    fn wildcards_cover_subdomains_only() {
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("*.example.com", "a.b.example.com"));
        assert!(covers("*.example.com", "*.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "aexample.com"));
        assert!(!covers("a.example.com", "*.example.com"));
        assert!(covers("*", "*.example.com"));
        assert!(!covers("*.example.com", "*"));
    }

    #[test]
    fn intersection_keeps_the_more_specific_name() {
        assert_eq!(intersect(None, "a.com").as_deref(), Some("a.com"));
        assert_eq!(
            intersect(Some("*.a.com"), "x.a.com").as_deref(),
            Some("x.a.com")
        );
        assert_eq!(
            intersect(Some("x.a.com"), "*.a.com").as_deref(),
            Some("x.a.com")
        );
        assert_eq!(
            intersect(Some("*.a.com"), "*.b.a.com").as_deref(),
            Some("*.b.a.com")
        );
        assert_eq!(
            intersect(Some("*.b.a.com"), "*.a.com").as_deref(),
            Some("*.b.a.com")
        );
        assert_eq!(intersect(Some("*.a.com"), "a.com"), None);
        assert_eq!(intersect(Some("x.a.com"), "y.a.com"), None);
    }

    #[test]
    fn specificity_orders_exact_then_longer_wildcards_then_any() {
        let mut v = vec!["*", "*.com", "a.b.com", "*.b.com", "b.com"];
        v.sort_by_key(|h| specificity(h));
        assert_eq!(v, ["a.b.com", "b.com", "*.b.com", "*.com", "*"]);
    }
}
