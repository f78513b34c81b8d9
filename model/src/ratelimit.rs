//! Rate limit policies, resolved: validated limits, and which rules and listeners they
//! apply to (recorded on [`super::Rule`] and [`super::Listener`]).

use super::RouteMatch;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicy {
    /// `namespace/name`; the key in [`super::Config::rate_limits`].
    pub id: String,
    pub mode: RateLimitMode,
    pub failure_mode: FailureMode,
    /// Whether responses carry the `RateLimit-Policy` and `RateLimit` fields.
    pub response_headers: bool,
    pub limits: Vec<RateLimit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateLimitMode {
    Enforce,
    Shadow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureMode {
    Local,
    Open,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub name: String,
    pub requests: u32,
    pub burst: u32,
    pub window_ms: u64,
    /// Parts of the counter key, in order; empty means one counter for all requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<KeyPart>,
    /// The limit applies to requests matching any of these; empty means all requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<RouteMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "name")]
pub enum KeyPart {
    #[serde(rename = "clientIP")]
    ClientIp,
    /// A lower-case header name.
    Header(String),
    PeerIdentity,
    Route,
}
