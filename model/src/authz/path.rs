//! The path a policy sees. Matching the raw target would let `/api/v1/../admin` or
//! `/%61dmin` past a DENY on `/admin*` while the backend serves `/admin`.

use std::borrow::Cow;

/// The request target's path as policies match it: the query dropped, percent-encoded
/// unreserved characters decoded, repeated slashes merged and dot segments removed
/// (RFC 3986 §6.2.2.2 and §5.2.4). Other escapes (`%2F`, `%5C`) stay encoded, with
/// upper-case hex: they are not separators to a policy. Most paths need none of this and
/// are returned borrowed.
pub fn normalize_path(target: &str) -> Cow<'_, str> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Cow::Borrowed(path);
    }
    let dotted = path.split('/').any(|s| s == "." || s == "..");
    if !dotted && !path.contains('%') && !path.contains("//") {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for s in decoded.split('/').skip(1) {
        trailing = false;
        match s {
            "" => trailing = true,
            "." => trailing = true,
            ".." => {
                segments.pop();
                trailing = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        if b == b'%'
            && let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2))
        {
            let c = (hi * 16 + lo) as u8;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c as char);
            } else {
                out.push_str(&format!("%{c:02X}"));
            }
            i += 3;
            continue;
        }
        // The rest is ASCII or whole UTF-8 sequences copied byte by byte below.
        let len = path[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&path[i..i + len]);
        i += len;
    }
    out
}
