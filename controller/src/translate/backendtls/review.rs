//! One BackendTLSPolicy on its own: its targets, its fields, and its CA certificates,
//! each failure with the reason the spec names.

use crate::translate::hostname;
use crate::translate::index::Index;
use crate::translate::status::{Outcome, reason as common};
use crate::translate::tls::secret_field;
use gateway_api::apis::standard::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicySpec, BackendTlsPolicyValidationCaCertificateRefs as CaRef,
    BackendTlsPolicyValidationSubjectAltNamesType as SanType,
};
use k8s_openapi::api::core::v1::ConfigMap;
use std::collections::{BTreeSet, HashMap};
use weir_model::{BackendTls, ObjectName, SubjectAltName, Trust};

/// The key of a ConfigMap (or Secret) that holds a PEM CA bundle.
pub const CA_BUNDLE_KEY: &str = "ca.crt";
/// The one `wellKnownCACertificates` value Weir knows: the platform's root store.
const WELL_KNOWN_SYSTEM: &str = "System";
use super::super::status::reason::{INVALID_CA_CERTIFICATE_REF, NO_VALID_CA_CERTIFICATE};
use super::super::tls::check_bundle;

/// A Service, or one of its ports by name.
pub(super) type Target = (ObjectName, Option<String>);

/// ConfigMaps by `(namespace, name)`.
pub(super) type ConfigMaps<'a> = HashMap<(&'a str, &'a str), &'a ConfigMap>;

/// One policy, read and checked, before targets are shared out.
pub(super) struct Reviewed {
    pub id: ObjectName,
    pub generation: Option<i64>,
    /// What its targets get: `Trust::Invalid` when the policy cannot be used.
    pub tls: BackendTls,
    /// `Err` for an invalid spec or no valid CA certificate.
    pub accepted: Result<Outcome, Outcome>,
    /// `None` when the spec is invalid (references were not looked at).
    pub resolved_refs: Option<Result<Outcome, Outcome>>,
    /// Targets, or why a targetRef names nothing.
    pub targets: Vec<Result<Target, String>>,
    /// Services named by the targetRefs, for the ancestors.
    pub services: BTreeSet<ObjectName>,
}
pub(super) fn by_name(list: &[ConfigMap]) -> ConfigMaps<'_> {
    list.iter()
        .map(|c| {
            let m = &c.metadata;
            let key = (
                m.namespace.as_deref().unwrap_or("default"),
                m.name.as_deref().unwrap_or(""),
            );
            (key, c)
        })
        .collect()
}

/// The Gateways whose listeners route to each Service (mirrors included).
pub(super) fn review(
    idx: &Index<'_>,
    config_maps: &ConfigMaps<'_>,
    id: ObjectName,
    p: &BackendTlsPolicy,
) -> Reviewed {
    let ns = id.namespace.as_str();
    let mut targets = Vec::new();
    let mut services = BTreeSet::new();
    for t in &p.spec.target_refs {
        if !matches!(t.group.as_str(), "" | "core") || t.kind != "Service" {
            targets.push(Err(format!(
                "targets of kind {:?} in group {:?} are not supported; use a core Service",
                t.kind, t.group
            )));
            continue;
        }
        let svc_id = ObjectName::new(ns, t.name.clone());
        let Some(svc) = idx.service(ns, &t.name) else {
            targets.push(Err(format!("Service {svc_id} not found")));
            continue;
        };
        services.insert(svc_id.clone());
        if let Some(section) = &t.section_name {
            let ports = svc.spec.as_ref().and_then(|s| s.ports.as_deref());
            if !ports
                .unwrap_or_default()
                .iter()
                .any(|p| p.name.as_deref() == Some(section.as_str()))
            {
                targets.push(Err(format!(
                    "Service {svc_id} has no port named {section:?}"
                )));
                continue;
            }
        }
        targets.push(Ok((svc_id, t.section_name.clone())));
    }
    let (tls, accepted, resolved_refs) = match validate(&id, &p.spec) {
        Err(message) => {
            let tls = BackendTls {
                policy: id.clone(),
                hostname: p.spec.validation.hostname.to_ascii_lowercase(),
                subject_alt_names: Vec::new(),
                trust: Trust::Invalid(message.clone()),
            };
            (tls, Err(Outcome::new(common::INVALID, message)), None)
        }
        Ok(mut tls) => {
            let refs = p.spec.validation.ca_certificate_refs.as_deref();
            let (accepted, resolved) = match refs.filter(|r| !r.is_empty()) {
                None => (Ok(()), Ok(())),
                Some(refs) => {
                    let (pem, problems) = ca_bundle(idx, config_maps, ns, refs);
                    let resolved = match problems.first() {
                        None => Ok(()),
                        Some(first) => Err(Outcome::new(
                            first.reason,
                            problems
                                .iter()
                                .map(|p| p.message.as_str())
                                .collect::<Vec<_>>()
                                .join("; "),
                        )),
                    };
                    if pem.is_empty() {
                        let why = "no caCertificateRef holds a usable CA certificate: connections to its targets fail";
                        tls.trust = Trust::Invalid(why.into());
                        (Err(Outcome::new(NO_VALID_CA_CERTIFICATE, why)), resolved)
                    } else {
                        tls.trust = Trust::Pem(pem);
                        (Ok(()), resolved)
                    }
                }
            };
            let accepted = accepted
                .map(|()| Outcome::new(common::ACCEPTED, "policy is attached to all its targets"));
            let resolved =
                resolved.map(|()| Outcome::new(common::RESOLVED_REFS, "all references resolved"));
            (tls, accepted, Some(resolved))
        }
    };
    Reviewed {
        id,
        generation: p.metadata.generation,
        tls,
        accepted,
        resolved_refs,
        targets,
        services,
    }
}

/// Checks the fields that need no lookup; the trust is filled in by the caller when it
/// comes from `caCertificateRefs`.
fn validate(id: &ObjectName, spec: &BackendTlsPolicySpec) -> Result<BackendTls, String> {
    let v = &spec.validation;
    if spec.target_refs.is_empty() {
        return Err("targetRefs must not be empty".into());
    }
    let hostname =
        hostname::normalize(&v.hostname, false).map_err(|e| format!("validation.hostname: {e}"))?;
    let refs = v.ca_certificate_refs.as_deref().unwrap_or_default();
    let well_known = v.well_known_ca_certificates.as_deref().unwrap_or("");
    let trust = match (refs.is_empty(), well_known) {
        (false, "") => Trust::Invalid(String::new()),
        (true, WELL_KNOWN_SYSTEM) => Trust::System,
        (true, "") => {
            return Err(
                "validation needs caCertificateRefs or wellKnownCACertificates: System".into(),
            );
        }
        (true, other) => {
            return Err(format!(
                "wellKnownCACertificates {other:?} is not supported; Weir knows \"System\""
            ));
        }
        (false, _) => {
            return Err(
                "only one of caCertificateRefs and wellKnownCACertificates may be set".into(),
            );
        }
    };
    let mut subject_alt_names = Vec::new();
    for (i, san) in v.subject_alt_names.iter().flatten().enumerate() {
        let at = |m: String| format!("validation.subjectAltNames[{i}]: {m}");
        subject_alt_names.push(match san.r#type {
            SanType::Hostname => {
                let h = san
                    .hostname
                    .as_deref()
                    .ok_or_else(|| at("type Hostname needs hostname".into()))?;
                SubjectAltName::Hostname(hostname::normalize(h, false).map_err(at)?)
            }
            SanType::Uri => {
                let uri = san
                    .uri
                    .as_deref()
                    .ok_or_else(|| at("type URI needs uri".into()))?;
                if !is_uri(uri) {
                    return Err(at(format!("{uri:?} is not a URI (scheme:rest)")));
                }
                SubjectAltName::Uri(uri.to_string())
            }
        });
    }
    Ok(BackendTls {
        policy: id.clone(),
        hostname,
        subject_alt_names,
        trust,
    })
}

/// `scheme:rest`, the scheme being RFC 3986's `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && !s.chars().any(char::is_whitespace)
}

/// The PEM of every valid `caCertificateRef`, concatenated, and the problems of the others.
fn ca_bundle(
    idx: &Index<'_>,
    config_maps: &ConfigMaps<'_>,
    ns: &str,
    refs: &[CaRef],
) -> (String, Vec<Outcome>) {
    let mut pem = String::new();
    let mut problems = Vec::new();
    for r in refs {
        let what = format!("caCertificateRef {} {ns}/{}", r.kind, r.name);
        let invalid = |m: &str| Outcome::new(INVALID_CA_CERTIFICATE_REF, format!("{what}: {m}"));
        let bytes = match (r.group.as_str(), r.kind.as_str()) {
            ("" | "core", "ConfigMap") => match config_maps.get(&(ns, r.name.as_str())) {
                None => Err(invalid("ConfigMap not found")),
                Some(cm) => cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(CA_BUNDLE_KEY))
                    .map(|s| s.as_bytes().to_vec())
                    .ok_or_else(|| invalid("ConfigMap has no ca.crt")),
            },
            ("" | "core", "Secret") => match idx.secret(ns, &r.name) {
                None => Err(invalid("Secret not found")),
                Some(s) => {
                    secret_field(s, CA_BUNDLE_KEY).ok_or_else(|| invalid("Secret has no ca.crt"))
                }
            },
            (group, kind) => Err(Outcome::new(
                common::INVALID_KIND,
                format!(
                    "{what}: kind {kind:?} in group {group:?} is not supported; use a ConfigMap or Secret"
                ),
            )),
        };
        match bytes.and_then(|b| check_bundle(&b).map_err(|m| invalid(&m))) {
            Ok(text) => {
                pem.push_str(text.trim_end());
                pem.push('\n');
            }
            Err(p) => problems.push(p),
        }
    }
    (pem, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_need_a_scheme_and_a_rest() {
        assert!(is_uri("spiffe://td/ns/a/sa/b"));
        assert!(is_uri("urn:x"));
        assert!(!is_uri("td/ns/a"));
        assert!(!is_uri("1x:y"));
        assert!(!is_uri("spiffe:"));
        assert!(!is_uri("spiffe://td/a b"));
    }

    #[test]
    fn a_bundle_must_hold_certificates() {
        assert!(check_bundle(b"not pem").is_err());
        assert!(check_bundle(&[0xff, 0xfe]).is_err());
        let cert = include_str!("../../../tests/fixtures/certificate-valid.yaml");
        let start = cert.find("-----BEGIN CERTIFICATE-----").unwrap();
        let end = cert.find("-----END CERTIFICATE-----").unwrap() + 25;
        let pem: String = cert[start..end]
            .lines()
            .map(|l| format!("{}\n", l.trim()))
            .collect();
        assert!(check_bundle(pem.as_bytes()).is_ok());
    }
}
