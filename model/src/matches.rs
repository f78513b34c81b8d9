//! Request matches. GRPCRoute method matches are expressed as path matches here (gRPC calls
//! are `POST /package.Service/Method`), so one matcher serves both route kinds.

use serde::{Deserialize, Serialize};

/// All conditions must hold (Gateway API `HTTPRouteMatch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Upper-case HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Names are lower-cased: header names are case-insensitive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Names keep their case: query parameter names are case-sensitive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryMatch>,
}

impl Default for RouteMatch {
    /// The spec's default match: `PathPrefix /`.
    fn default() -> Self {
        Self {
            path: PathMatch::PathPrefix("/".into()),
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    Exact(String),
    /// Matches whole path segments: `/v2` matches `/v2` and `/v2/x` but not `/v2x`. The value
    /// never ends in `/` unless it is `/` itself.
    PathPrefix(String),
    /// An RE2-syntax expression that must match the whole path.
    RegularExpression(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum StringMatch {
    Exact(String),
    /// An RE2-syntax expression that must match the whole value.
    RegularExpression(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(flatten)]
    pub value: StringMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryMatch {
    pub name: String,
    #[serde(flatten)]
    pub value: StringMatch,
}
