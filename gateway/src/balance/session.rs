//! Session persistence (GEP-1619): a token in a cookie or header names the backend and
//! endpoint a session is pinned to.
//!
//! The token holds stable hashes, not addresses, so it reveals nothing about the cluster
//! and means the same on every replica and after restarts. A pin outlives weight changes
//! (a backend whose weight drops to 0 keeps its sessions, as the GEP says) and ends when
//! its backend leaves the rule or the session times out.

use cookie::Cookie;
use http::HeaderMap;
use http::header::{COOKIE, HeaderName, HeaderValue, SET_COOKIE};
use std::time::{SystemTime, UNIX_EPOCH};
use weir_model::{SessionKind, SessionPersistence, SplitKey};

/// The hash of a request's cohort value (`weir.dev/split-key`), if it carries one.
pub fn cohort(key: &SplitKey, headers: &HeaderMap) -> Option<u64> {
    let hash = |b: &[u8]| (!b.is_empty()).then(|| xxhash_rust::xxh3::xxh3_64(b));
    match key {
        SplitKey::Header(name) => hash(headers.get(name.as_str())?.as_bytes()),
        SplitKey::Cookie(name) => headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == name)
            .and_then(|c| hash(c.value().as_bytes())),
    }
}

/// What a session token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub backend: u32,
    pub endpoint: u32,
    /// Unix seconds after which the session ends (absolute timeout); 0 for never.
    pub absolute: u32,
    /// Unix seconds after which the session ends unless used again; 0 for never.
    pub idle: u32,
}

impl Token {
    /// The token's text: 32 lower-case hex digits. Public for the fuzz targets (`fuzz/`).
    pub fn encode(&self) -> String {
        format!(
            "{:08x}{:08x}{:08x}{:08x}",
            self.backend, self.endpoint, self.absolute, self.idle
        )
    }

    /// The token in `s`, if it is one. Public for the fuzz targets (`fuzz/`).
    pub fn decode(s: &str) -> Option<Token> {
        // Hex digits only: `from_str_radix` alone also takes a `+` sign.
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let part = |i: usize| u32::from_str_radix(&s[i * 8..i * 8 + 8], 16).ok();
        Some(Token {
            backend: part(0)?,
            endpoint: part(1)?,
            absolute: part(2)?,
            idle: part(3)?,
        })
    }

    fn live(&self, now: u32) -> bool {
        (self.absolute == 0 || now < self.absolute) && (self.idle == 0 || now < self.idle)
    }
}

/// A rule's `sessionPersistence`, ready for the hot path.
#[derive(Debug)]
pub struct Persistence {
    name: String,
    header: Option<HeaderName>,
    absolute_secs: Option<u32>,
    idle_secs: Option<u32>,
    permanent: bool,
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

fn secs(ms: Option<u64>) -> Option<u32> {
    ms.map(|ms| ms.div_ceil(1000).clamp(1, u64::from(u32::MAX / 2)) as u32)
}

impl Persistence {
    pub fn compile(p: &SessionPersistence) -> Result<Self, String> {
        let header = match p.kind {
            SessionKind::Header => Some(
                HeaderName::try_from(p.name.as_str())
                    .map_err(|e| format!("session header {:?}: {e}", p.name))?,
            ),
            SessionKind::Cookie => None,
        };
        Ok(Self {
            name: p.name.clone(),
            header,
            absolute_secs: secs(p.absolute_timeout_ms),
            idle_secs: secs(p.idle_timeout_ms),
            permanent: p.permanent,
        })
    }

    /// The request's live session token, if it carries one.
    pub fn read(&self, headers: &HeaderMap) -> Option<Token> {
        let token = match &self.header {
            Some(h) => headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Token::decode(v.trim())),
            None => headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(Cookie::split_parse)
                .filter_map(Result::ok)
                .find(|c| c.name() == self.name)
                .and_then(|c| Token::decode(c.value())),
        }?;
        token.live(unix_now()).then_some(token)
    }

    /// Whether every response must carry a fresh token (an idle timeout slides with use).
    pub fn refreshes(&self) -> bool {
        self.idle_secs.is_some()
    }

    /// The response header that pins (or keeps pinning) the session to `backend` and
    /// `endpoint`, keeping the absolute deadline of `previous` when it is the same session.
    pub fn issue(
        &self,
        backend: u32,
        endpoint: u32,
        previous: Option<Token>,
        secure: bool,
    ) -> (HeaderName, HeaderValue) {
        let now = unix_now();
        let absolute = match previous {
            Some(t) if t.backend == backend => t.absolute,
            _ => self.absolute_secs.map_or(0, |s| now.saturating_add(s)),
        };
        let idle = self.idle_secs.map_or(0, |s| now.saturating_add(s));
        let value = Token {
            backend,
            endpoint,
            absolute,
            idle,
        }
        .encode();
        let header_value = |text: &str| {
            // Hex and cookie syntax are always valid header text.
            HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static(""))
        };
        if let Some(h) = &self.header {
            return (h.clone(), header_value(&value));
        }
        let mut c = Cookie::build((self.name.as_str(), value.as_str()))
            .path("/")
            .http_only(true)
            .secure(secure);
        if self.permanent && absolute > 0 {
            c = c.max_age(cookie::time::Duration::seconds(i64::from(
                absolute.saturating_sub(now),
            )));
        }
        (SET_COOKIE, header_value(&c.build().to_string()))
    }
}

/// A backend's name in session tokens, the same on every replica.
pub fn backend_token(key: &weir_model::BackendKey) -> u32 {
    xxhash_rust::xxh3::xxh3_64(key.0.as_bytes()) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persistence(kind: SessionKind, name: &str) -> Persistence {
        Persistence::compile(&SessionPersistence {
            kind,
            name: name.into(),
            absolute_timeout_ms: Some(3_600_000),
            idle_timeout_ms: None,
            permanent: true,
        })
        .unwrap()
    }

    #[test]
    fn cookie_tokens_round_trip_among_other_cookies() {
        let p = persistence(SessionKind::Cookie, "weir-session");
        let (name, value) = p.issue(7, 9, None, true);
        assert_eq!(name, SET_COOKIE);
        let text = value.to_str().unwrap();
        assert!(
            text.contains("HttpOnly") && text.contains("Secure") && text.contains("Max-Age=3600"),
            "{text}"
        );
        let token = text.split(';').next().unwrap().to_string();
        let mut req = HeaderMap::new();
        req.insert(COOKIE, format!("a=b; {token}; c=d").parse().unwrap());
        let t = p.read(&req).unwrap();
        assert_eq!((t.backend, t.endpoint), (7, 9));
        req.insert(COOKIE, "weir-session=garbage".parse().unwrap());
        assert!(p.read(&req).is_none());
    }

    /// A token is exactly 32 hex digits: `+` signs (which `from_str_radix` takes) made
    /// another spelling of the same token (seen writing the `request_path` fuzz target).
    #[test]
    fn tokens_are_32_hex_digits() {
        let t = Token {
            backend: 1,
            endpoint: 0xffff_ffff,
            absolute: 0,
            idle: 7,
        };
        assert_eq!(Token::decode(&t.encode()), Some(t));
        assert_eq!(Token::decode(&t.encode().to_uppercase()), Some(t));
        assert_eq!(Token::decode(&format!("+{}", &t.encode()[1..])), None);
        assert_eq!(Token::decode(&t.encode()[1..]), None);
        assert_eq!(Token::decode(&format!("{}0", t.encode())), None);
    }

    #[test]
    fn header_tokens_and_expiry() {
        let p = persistence(SessionKind::Header, "x-session");
        let (name, value) = p.issue(1, 2, None, false);
        assert_eq!(name.as_str(), "x-session");
        let mut req = HeaderMap::new();
        req.insert("x-session", value);
        assert_eq!(p.read(&req).map(|t| t.backend), Some(1));
        let expired = Token {
            backend: 1,
            endpoint: 2,
            absolute: 5,
            idle: 0,
        }
        .encode();
        req.insert("x-session", expired.parse().unwrap());
        assert!(
            p.read(&req).is_none(),
            "a session past its absolute timeout ends"
        );
    }
}
