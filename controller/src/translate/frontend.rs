//! Gateway `spec.tls.frontend`: the CAs that client certificates on the Gateway's HTTPS
//! ports must chain to. This is how the mesh listener learns who is calling: sidecars present
//! their SVIDs, and the fleet trusts the mesh CA.

use super::index::{GATEWAY_GROUP, Index, RefEnd};
use super::state::ListenerState;
use super::status::{Outcome, reason};
use crate::source::Snapshot;
use gateway_api::experimental::gateways::Gateway;
use serde::Deserialize;
use weir_model::{ClientValidation, Protocol};

use super::backendtls::CA_BUNDLE_KEY;
use super::status::reason::{
    INVALID_CA_CERTIFICATE_KIND, INVALID_CA_CERTIFICATE_REF, NO_VALID_CA_CERTIFICATE,
};
use super::tls::check_bundle;

/// The default and per-port validations share one wire shape, generated as two types.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Validation {
    ca_certificate_refs: Vec<CaRef>,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CaRef {
    #[serde(default)]
    group: String,
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// Sets each HTTPS listener's client validation from its Gateway, or marks the listener
/// when its CA references are broken: ResolvedRefs false for any bad reference, and not
/// accepted when none is good, so that a listener never silently stops checking clients.
pub(crate) fn apply(
    snapshot: &Snapshot,
    idx: &Index<'_>,
    gw: &Gateway,
    listeners: &mut [ListenerState],
) {
    let Some(frontend) = gw.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
        return;
    };
    let gw_ns = gw.metadata.namespace.as_deref().unwrap_or("default");
    for l in listeners
        .iter_mut()
        .filter(|l| l.protocol == Some(Protocol::Https))
    {
        let per_port = frontend
            .per_port
            .iter()
            .flatten()
            .find(|p| p.port == i32::from(l.port));
        let spec = match per_port {
            Some(p) => p.tls.validation.as_ref().map(serde_json::to_value),
            None => frontend
                .default
                .validation
                .as_ref()
                .map(serde_json::to_value),
        };
        let v = match spec.map(|r| r.and_then(serde_json::from_value::<Validation>)) {
            None => continue,
            Some(Ok(v)) => v,
            // The two generated types share one schema, so this cannot happen with input
            // the API server accepted; should it, the listener must not serve unchecked.
            Some(Err(e)) => {
                if l.accepted.is_ok() {
                    l.accepted = Err(Outcome::new(
                        reason::UNSUPPORTED_VALUE,
                        format!("spec.tls.frontend validation: {e}"),
                    ));
                }
                continue;
            }
        };
        let mut pem = String::new();
        let mut problems = Vec::new();
        for r in &v.ca_certificate_refs {
            match resolve(snapshot, idx, gw_ns, r) {
                Ok(ca) => pem.push_str(&ca),
                Err(o) => problems.push(o),
            }
        }
        if let Some(first) = problems.first() {
            let message = problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            if l.resolved_refs.is_ok() {
                l.resolved_refs = Err(Outcome::new(first.reason, message.clone()));
            }
            if pem.is_empty() && l.accepted.is_ok() {
                l.accepted = Err(Outcome::new(
                    NO_VALID_CA_CERTIFICATE,
                    format!("spec.tls.frontend: no usable CA certificate: {message}"),
                ));
            }
        }
        if !pem.is_empty() {
            l.client_validation = Some(ClientValidation {
                ca_pem: pem,
                optional: v.mode.as_deref() == Some("AllowInsecureFallback"),
            });
        }
    }
}

/// The PEM of one `caCertificateRefs` entry: a ConfigMap's `ca.crt`.
fn resolve(
    snapshot: &Snapshot,
    idx: &Index<'_>,
    gw_ns: &str,
    r: &CaRef,
) -> Result<String, Outcome> {
    let ns = r.namespace.as_deref().unwrap_or(gw_ns);
    let what = format!("caCertificateRefs {ns}/{}", r.name);
    if !matches!(r.group.as_str(), "" | "core") || r.kind != "ConfigMap" {
        return Err(Outcome::new(
            INVALID_CA_CERTIFICATE_KIND,
            format!(
                "{what}: kind {:?} in group {:?} is not supported; use a ConfigMap with ca.crt",
                r.kind, r.group
            ),
        ));
    }
    let from = RefEnd {
        group: GATEWAY_GROUP,
        kind: "Gateway",
        namespace: gw_ns,
    };
    let to = RefEnd {
        group: "",
        kind: "ConfigMap",
        namespace: ns,
    };
    if !idx.ref_permitted(from, to, &r.name) {
        return Err(Outcome::new(
            reason::REF_NOT_PERMITTED,
            format!(
                "{what}: no ReferenceGrant in namespace {ns} allows Gateways from {gw_ns} to use it"
            ),
        ));
    }
    let cm = snapshot
        .config_maps
        .iter()
        .find(|c| {
            c.metadata.namespace.as_deref().unwrap_or("default") == ns
                && c.metadata.name.as_deref() == Some(r.name.as_str())
        })
        .ok_or_else(|| Outcome::new(INVALID_CA_CERTIFICATE_REF, format!("{what}: not found")))?;
    let pem = cm
        .data
        .as_ref()
        .and_then(|d| d.get(CA_BUNDLE_KEY))
        .ok_or_else(|| {
            Outcome::new(
                INVALID_CA_CERTIFICATE_REF,
                format!("{what}: the ConfigMap has no key {CA_BUNDLE_KEY}"),
            )
        })?;
    check_bundle(pem.as_bytes())
        .map(|text| format!("{}\n", text.trim_end()))
        .map_err(|m| Outcome::new(INVALID_CA_CERTIFICATE_REF, format!("{what}: {m}")))
}
