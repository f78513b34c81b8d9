//! End-user JWTs: a policy's `jwt` providers say which issuers' tokens are verified, with
//! which keys (a JWKS) and for which audiences. A verified token gives the request its
//! `iss/sub` request principal and its claims, which rules match; a token that does not
//! verify is refused with 401 before any rule is evaluated. A request without a token is
//! not refused here: it simply has no request principal, as in Istio.
//!
//! Only asymmetric algorithms are accepted (RS256, ES256, EdDSA): a JWKS is public, and a
//! shared HMAC secret in one would let anyone who can read it mint tokens.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One trusted issuer, as a policy names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// A token must name one of these in `aud`; empty: `aud` is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The JWKS, as JSON.
    pub jwks: String,
    /// The lower-case header the token comes in; `authorization` carries `Bearer <token>`.
    pub header: String,
    /// Whether the token goes on to the backend (Istio's `forwardOriginalToken`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward: bool,
}

/// A verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// `iss/sub`.
    pub principal: String,
    pub claims: Map<String, Value>,
}

impl Verified {
    /// The strings a claim holds at `path` (nested objects, one key per step): a string,
    /// each string of an array, or a number or boolean as text.
    pub fn claim_values(&self, path: &[String]) -> Vec<String> {
        let mut at: Option<&Value> = None;
        for (i, key) in path.iter().enumerate() {
            at = if i == 0 {
                self.claims.get(key)
            } else {
                at.and_then(|v| v.get(key))
            };
        }
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        match at {
            Some(Value::Array(items)) => items.iter().filter_map(text).collect(),
            Some(v) => text(v).into_iter().collect(),
            None => Vec::new(),
        }
    }
}

/// Why a token was refused; the text goes to logs, never to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token header appears more than once")]
    Repeated,
    #[error("the authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("algorithm {0:?} is not accepted (RS256, ES256 or EdDSA)")]
    Algorithm(String),
    #[error("issuer {0:?} is not trusted here")]
    UnknownIssuer(String),
    #[error("no key of the issuer's JWKS verifies it: {0}")]
    Invalid(String),
}

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// One provider, its keys decoded.
#[derive(Debug, Clone)]
struct Provider {
    issuer: String,
    audiences: Vec<String>,
    header: http::HeaderName,
    forward: bool,
    keys: Vec<Key>,
}

/// The providers of one policy, ready to verify.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    providers: Vec<Provider>,
}

impl Verifier {
    /// Decodes each provider's JWKS. An error names the provider and the key at fault.
    pub fn new(providers: &[JwtProvider]) -> Result<Self, String> {
        let providers = providers
            .iter()
            .enumerate()
            .map(|(i, p)| provider(p).map_err(|e| format!("jwt[{i}] ({}): {e}", p.issuer)))
            .collect::<Result<_, _>>()?;
        Ok(Self { providers })
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// The headers to remove before the request goes on: those of providers that do not
    /// forward the token.
    pub fn stripped(&self) -> impl Iterator<Item = &http::HeaderName> {
        self.providers
            .iter()
            .filter(|p| !p.forward)
            .map(|p| &p.header)
    }

    /// The request's token, verified: `Ok(None)` when it carries none in any provider's
    /// header.
    pub fn verify(&self, headers: &http::HeaderMap) -> Result<Option<Verified>, TokenError> {
        let mut found: Option<(&str, &Provider)> = None;
        for p in &self.providers {
            let mut values = headers.get_all(&p.header).iter();
            let Some(v) = values.next() else { continue };
            if values.next().is_some() {
                return Err(TokenError::Repeated);
            }
            let v = v.to_str().map_err(|_| TokenError::NotBearer)?;
            let token = if p.header == http::header::AUTHORIZATION {
                match v.split_once(' ') {
                    Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
                    // Basic credentials and the like are not ours to judge.
                    _ => continue,
                }
            } else {
                v.trim()
            };
            found = Some((token, p));
            break;
        }
        let Some((token, _)) = found else {
            return Ok(None);
        };
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let issuer = unverified_issuer(token)?;
        let candidates: Vec<&Provider> = self
            .providers
            .iter()
            .filter(|p| p.issuer == issuer)
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::UnknownIssuer(issuer));
        }
        let mut last = String::from("no key with that kid and algorithm");
        for p in candidates {
            let keys = p
                .keys
                .iter()
                .filter(|k| k.alg == header.alg && (header.kid.is_none() || k.kid == header.kid));
            for k in keys {
                let mut v = Validation::new(k.alg);
                v.set_issuer(&[&p.issuer]);
                v.validate_nbf = true;
                if p.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&p.audiences);
                }
                match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &v) {
                    Ok(data) => {
                        let sub = data.claims.get("sub").and_then(Value::as_str).unwrap_or("");
                        return Ok(Some(Verified {
                            principal: format!("{issuer}/{sub}"),
                            claims: data.claims,
                        }));
                    }
                    Err(e) => last = e.to_string(),
                }
            }
        }
        Err(TokenError::Invalid(last))
    }
}

/// The `iss` of a token whose signature is not checked yet: it only picks the provider.
fn unverified_issuer(token: &str) -> Result<String, TokenError> {
    let mut v = Validation::new(Algorithm::RS256);
    v.insecure_disable_signature_validation();
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &DecodingKey::from_secret(&[]), &v)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
    data.claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| TokenError::Malformed("no iss claim".into()))
}

fn provider(p: &JwtProvider) -> Result<Provider, String> {
    let header = http::HeaderName::from_bytes(p.header.as_bytes())
        .map_err(|_| format!("{:?} is not a header name", p.header))?;
    let set: JwkSet = serde_json::from_str(&p.jwks).map_err(|e| format!("JWKS: {e}"))?;
    if set.keys.is_empty() {
        return Err("the JWKS has no keys".into());
    }
    let mut keys = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone();
        let at = |m: &str| format!("JWKS key {i} ({}): {m}", kid.as_deref().unwrap_or("no kid"));
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err(at("symmetric keys are not accepted: a JWKS is public"));
            }
            _ => return Err(at("only RSA, P-256 and Ed25519 keys are accepted")),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| at(&e.to_string()))?;
        keys.push(Key { kid, alg, key });
    }
    Ok(Provider {
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        header,
        forward: p.forward,
        keys,
    })
}
