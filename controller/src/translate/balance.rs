//! A rule's `sessionPersistence` (GEP-1619) and `retry` (GEP-1731) → the IR's
//! [`SessionPersistence`] and [`Retry`]. Validated as the CRD's CEL rules do, and further
//! where the data plane relies on a value: names it puts on the wire, retry bounds.

use gateway_api::experimental::httproutes::{
    HttpRouteRulesRetry, HttpRouteRulesSessionPersistence,
    HttpRouteRulesSessionPersistenceCookieConfigLifetimeType as Lifetime,
    HttpRouteRulesSessionPersistenceType,
};
use weir_model::{Retry, SessionKind, SessionPersistence};

pub(crate) const DEFAULT_SESSION_COOKIE: &str = "weir-session";
pub(crate) const DEFAULT_SESSION_HEADER: &str = "x-weir-session";
/// The CRD's `maxLength` of `sessionName`.
const MAX_SESSION_NAME: usize = 128;
/// The gateway errors worth another try: the backend failed or was briefly unavailable.
const DEFAULT_RETRY_CODES: [u16; 4] = [500, 502, 503, 504];
const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Beyond this, retries multiply the load on a failing backend far more than they help.
pub(crate) const MAX_RETRY_ATTEMPTS: u32 = 10;

/// A GEP-2257 duration in milliseconds.
pub(crate) fn millis(s: &str) -> Result<u64, String> {
    weir_model::duration::parse(s)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| e.to_string())
}

/// An RFC 9110 token: what a header name and (RFC 6265) a cookie name must be.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A GRPCRoute rule's `sessionPersistence` has the same schema as an HTTPRoute rule's, so
/// both are read as the HTTPRoute type.
pub(crate) fn session_spec<T: serde::Serialize>(
    sp: Option<&T>,
) -> Result<Option<HttpRouteRulesSessionPersistence>, String> {
    sp.map(|s| {
        serde_json::to_value(s)
            .and_then(serde_json::from_value)
            .map_err(|e| format!("sessionPersistence: {e}"))
    })
    .transpose()
}

pub(crate) fn session_persistence(
    sp: &HttpRouteRulesSessionPersistence,
) -> Result<SessionPersistence, String> {
    let kind = match sp.r#type {
        None | Some(HttpRouteRulesSessionPersistenceType::Cookie) => SessionKind::Cookie,
        Some(HttpRouteRulesSessionPersistenceType::Header) => SessionKind::Header,
    };
    let name = match (sp.session_name.as_deref(), kind) {
        (None, SessionKind::Cookie) => DEFAULT_SESSION_COOKIE.to_owned(),
        (None, SessionKind::Header) => DEFAULT_SESSION_HEADER.to_owned(),
        (Some(n), _) if n.len() > MAX_SESSION_NAME => {
            return Err(format!(
                "sessionPersistence.sessionName is longer than {MAX_SESSION_NAME} characters"
            ));
        }
        (Some(n), _) if !is_token(n) => {
            let what = match kind {
                SessionKind::Cookie => "cookie",
                SessionKind::Header => "header",
            };
            return Err(format!(
                "sessionPersistence.sessionName {n:?} is not a valid {what} name"
            ));
        }
        (Some(n), SessionKind::Cookie) => n.to_owned(),
        (Some(n), SessionKind::Header) => n.to_ascii_lowercase(),
    };
    let timeout = |field: &str, v: Option<&str>| -> Result<Option<u64>, String> {
        let Some(s) = v else { return Ok(None) };
        match millis(s) {
            // A session that ends as it starts pins nothing.
            Ok(0) => Err(format!("sessionPersistence.{field} must be more than 0s")),
            Ok(ms) => Ok(Some(ms)),
            Err(e) => Err(format!("sessionPersistence.{field} {s:?}: {e}")),
        }
    };
    let absolute_timeout_ms = timeout("absoluteTimeout", sp.absolute_timeout.as_deref())?;
    let idle_timeout_ms = timeout("idleTimeout", sp.idle_timeout.as_deref())?;
    let permanent = sp
        .cookie_config
        .as_ref()
        .and_then(|c| c.lifetime_type.as_ref())
        == Some(&Lifetime::Permanent);
    // The CRD's own rule: a permanent cookie's Max-Age comes from the absolute timeout.
    if permanent && absolute_timeout_ms.is_none() {
        return Err(
            "sessionPersistence: cookieConfig.lifetimeType Permanent requires absoluteTimeout"
                .into(),
        );
    }
    Ok(SessionPersistence {
        kind,
        name,
        absolute_timeout_ms,
        idle_timeout_ms,
        // A cookie lifetime means nothing for a header token.
        permanent: permanent && kind == SessionKind::Cookie,
    })
}

pub(crate) fn retry(r: &HttpRouteRulesRetry, budget_percent: u32) -> Result<Retry, String> {
    let mut codes = Vec::new();
    for &c in r.codes.iter().flatten() {
        match u16::try_from(c) {
            Ok(code @ 400..=599) => codes.push(code),
            _ => return Err(format!("retry.codes: {c} is not within 400-599")),
        }
    }
    codes.sort_unstable();
    codes.dedup();
    if codes.is_empty() {
        codes = DEFAULT_RETRY_CODES.to_vec();
    }
    let attempts = match r.attempts {
        None => DEFAULT_RETRY_ATTEMPTS,
        Some(a) => u32::try_from(a)
            .ok()
            .filter(|a| *a <= MAX_RETRY_ATTEMPTS)
            .ok_or_else(|| format!("retry.attempts {a} must be within 0-{MAX_RETRY_ATTEMPTS}"))?,
    };
    let backoff_ms = r
        .backoff
        .as_deref()
        .map(|s| millis(s).map_err(|e| format!("retry.backoff {s:?}: {e}")))
        .transpose()?;
    Ok(Retry {
        codes,
        attempts,
        backoff_ms,
        budget_percent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_api::experimental::httproutes::HttpRouteRulesSessionPersistenceCookieConfig;

    fn sp(
        kind: Option<HttpRouteRulesSessionPersistenceType>,
        name: Option<&str>,
    ) -> HttpRouteRulesSessionPersistence {
        HttpRouteRulesSessionPersistence {
            r#type: kind,
            session_name: name.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn session_names_default_and_are_tokens() {
        let cookie = session_persistence(&sp(None, None)).unwrap();
        assert_eq!(
            (cookie.kind, cookie.name.as_str()),
            (SessionKind::Cookie, "weir-session")
        );
        let header = Some(HttpRouteRulesSessionPersistenceType::Header);
        let h = session_persistence(&sp(header.clone(), None)).unwrap();
        assert_eq!(h.name, "x-weir-session");
        let h = session_persistence(&sp(header.clone(), Some("X-Session"))).unwrap();
        assert_eq!(h.name, "x-session", "header names are lower-cased");
        let c = session_persistence(&sp(None, Some("Sid"))).unwrap();
        assert_eq!(c.name, "Sid", "cookie names keep their case");
        for bad in ["", "a b", "a;b", "a=b", "sess:id", "ü"] {
            assert!(
                session_persistence(&sp(None, Some(bad))).is_err(),
                "{bad:?}"
            );
            assert!(
                session_persistence(&sp(header.clone(), Some(bad))).is_err(),
                "{bad:?}"
            );
        }
        assert!(session_persistence(&sp(None, Some(&"a".repeat(129)))).is_err());
    }

    #[test]
    fn permanent_cookies_need_an_absolute_timeout() {
        let permanent = Some(HttpRouteRulesSessionPersistenceCookieConfig {
            lifetime_type: Some(Lifetime::Permanent),
        });
        let mut s = HttpRouteRulesSessionPersistence {
            cookie_config: permanent,
            idle_timeout: Some("10m".into()),
            ..Default::default()
        };
        assert!(
            session_persistence(&s)
                .unwrap_err()
                .contains("requires absoluteTimeout")
        );
        s.absolute_timeout = Some("1h".into());
        let p = session_persistence(&s).unwrap();
        assert!(p.permanent);
        assert_eq!(
            (p.absolute_timeout_ms, p.idle_timeout_ms),
            (Some(3_600_000), Some(600_000))
        );
        s.r#type = Some(HttpRouteRulesSessionPersistenceType::Header);
        assert!(!session_persistence(&s).unwrap().permanent);
        s.absolute_timeout = Some("0s".into());
        assert!(session_persistence(&s).is_err());
        s.absolute_timeout = Some("1 hour".into());
        assert!(session_persistence(&s).is_err());
    }

    #[test]
    fn retry_defaults_and_bounds() {
        let r = retry(&HttpRouteRulesRetry::default(), 20).unwrap();
        assert_eq!(
            r,
            Retry {
                codes: vec![500, 502, 503, 504],
                attempts: 2,
                backoff_ms: None,
                budget_percent: 20
            }
        );
        let r = retry(
            &HttpRouteRulesRetry {
                attempts: Some(0),
                backoff: Some("100ms".into()),
                codes: Some(vec![503, 429, 503]),
            },
            5,
        )
        .unwrap();
        assert_eq!(
            (r.codes, r.attempts, r.backoff_ms),
            (vec![429, 503], 0, Some(100))
        );
        let with = |attempts, codes: Vec<i64>| HttpRouteRulesRetry {
            attempts,
            codes: Some(codes),
            backoff: None,
        };
        assert_eq!(retry(&with(None, vec![]), 20).unwrap().codes.len(), 4);
        assert!(retry(&with(Some(10), vec![599]), 20).is_ok());
        assert!(retry(&with(Some(11), vec![]), 20).is_err());
        assert!(retry(&with(Some(-1), vec![]), 20).is_err());
        assert!(retry(&with(None, vec![399]), 20).is_err());
        assert!(retry(&with(None, vec![600]), 20).is_err());
        let bad_backoff = HttpRouteRulesRetry {
            backoff: Some("1.5s".into()),
            ..Default::default()
        };
        assert!(retry(&bad_backoff, 20).is_err());
    }

    #[test]
    fn tokens() {
        assert!(is_token("x-user_id.v2"));
        assert!(!is_token("x user"));
        assert!(!is_token("a/b"));
        assert!(!is_token(""));
    }
}
