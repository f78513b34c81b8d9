//! Allow-list patterns on the command line: SPIFFE IDs, exact or prefixes ending in `*`,
//! checked strictly so that a typo cannot widen who may connect.

/// An allow-list pattern: `spiffe://TRUST_DOMAIN/PATH`, or a prefix ending in `*`.
///
/// A prefix must contain the whole trust domain (`spiffe://td/...*`, or `spiffe://*` for
/// any): `spiffe://td*` would also admit `spiffe://td-evil/...`, which nobody means.
pub fn parse_pattern(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("{text:?} is not a SPIFFE ID (spiffe://TRUST_DOMAIN/PATH)"))?;
    let (body, prefix) = match rest.strip_suffix('*') {
        Some(body) => (body, true),
        None => (rest, false),
    };
    if body.contains('*') {
        return Err(format!("{text:?}: '*' is only allowed at the end"));
    }
    if prefix && body.is_empty() {
        return Ok(text.into());
    }
    let (domain, path) = body.split_once('/').unwrap_or((body, ""));
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !domain_ok {
        return Err(format!(
            "{text:?}: the trust domain must be lowercase letters, digits, '.', '-' or '_'"
        ));
    }
    if prefix && !body.contains('/') {
        return Err(format!(
            "{text:?}: a prefix must include the whole trust domain, e.g. spiffe://{domain}/*"
        ));
    }
    // A prefix may end mid-segment or after a '/'; an exact ID needs whole segments.
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        let may_be_empty = prefix && i == last;
        let bad_chars = !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if bad_chars || (seg.is_empty() && !may_be_empty) || *seg == "." || *seg == ".." {
            return Err(format!(
                "{text:?}: path segments are non-empty letters, digits, '.', '-' or '_'"
            ));
        }
    }
    Ok(text.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_must_be_spiffe_ids_or_safe_prefixes() {
        for ok in [
            "spiffe://cluster.local/ns/shop/sa/web",
            "spiffe://cluster.local/ns/shop/*",
            "spiffe://cluster.local/ns/sh*",
            "spiffe://cluster.local/*",
            "spiffe://*",
        ] {
            assert_eq!(parse_pattern(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "cluster.local/ns/shop",
            "spiffe://cluster.local*",
            "spiffe://Cluster/ns/a",
            "spiffe://td/ns/*/sa/web",
            "spiffe://td/ns//sa",
            "spiffe://td/ns/a/",
            "spiffe://td/ns/../sa",
            "spiffe://td",
            "spiffe://td/ns/a b",
        ] {
            assert!(parse_pattern(bad).is_err(), "{bad}");
        }
    }
}
