//! Upstream TLS: how the gateway originates TLS to a backend (BackendTLSPolicy), already
//! resolved to PEM so the data plane reads no Kubernetes object.

use super::ObjectName;
use serde::{Deserialize, Serialize};

/// TLS from the gateway to a backend, from the BackendTLSPolicy that targets its Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTls {
    /// The policy this came from, for logs, metrics and `/config`.
    pub policy: ObjectName,
    /// `validation.hostname`: the SNI, and the name the certificate must match when
    /// `subject_alt_names` is empty.
    pub hostname: String,
    /// When set, the certificate must carry one of these instead of `hostname`, as the spec
    /// says (a SPIFFE ID is a URI SAN).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SubjectAltName>,
    pub trust: Trust,
}

/// What the backend's certificate chain must lead to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Trust {
    /// `wellKnownCACertificates: System`: the platform's root store.
    System,
    /// The valid `caCertificateRefs`, concatenated PEM.
    Pem(String),
    /// The policy has no usable CA. Connections fail (5xx), as the spec requires, rather
    /// than go out unverified or in cleartext; the string says why.
    Invalid(String),
}

/// One `subjectAltNames` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SubjectAltName {
    /// A DNS name, lower-cased; may be a `*.` wildcard.
    Hostname(String),
    /// A URI, compared exactly: e.g. `spiffe://cluster.local/ns/apps/sa/api`.
    Uri(String),
}
