//! A Gateway's `tls.backend.clientCertificateRef`: the certificate its listeners present to
//! TLS backends. An invalid reference sets the Gateway's `ResolvedRefs` condition to False
//! (`InvalidClientCertificateRef` or `RefNotPermitted`) and the backends get no client
//! certificate; it does not unprogram the Gateway.

use super::index::Index;
use super::state::GatewayState;
use super::status::{Outcome, StatusReport, condition_from, reason};
use super::tls::{SecretRef, resolve_secret};
use weir_model::Config;

const INVALID_CLIENT_CERTIFICATE_REF: &str = "InvalidClientCertificateRef";

pub(crate) fn apply(
    idx: &Index<'_>,
    gateways: &[GatewayState<'_>],
    config: &mut Config,
    report: &mut StatusReport,
) {
    for gw in gateways {
        let Some(r) = gw
            .obj
            .spec
            .tls
            .as_ref()
            .and_then(|t| t.backend.as_ref())
            .and_then(|b| b.client_certificate_ref.as_ref())
        else {
            continue;
        };
        let secret = SecretRef {
            field: "tls.backend.clientCertificateRef",
            group: r.group.as_deref(),
            kind: r.kind.as_deref(),
            name: &r.name,
            namespace: r.namespace.as_deref(),
            invalid: INVALID_CLIENT_CERTIFICATE_REF,
        };
        let resolved = resolve_secret(idx, &gw.id.namespace, &secret);
        if let Ok(cert) = &resolved {
            for l in config.listeners.iter_mut().filter(|l| l.gateway == gw.id) {
                l.backend_client_certificate = Some(cert.clone());
            }
        }
        let outcome = resolved.map(|c| {
            Outcome::new(
                reason::RESOLVED_REFS,
                format!(
                    "client certificate {} is presented to TLS backends",
                    c.secret
                ),
            )
        });
        if let Some(status) = report.gateways.get_mut(&gw.id) {
            status
                .conditions
                .get_or_insert_with(Vec::new)
                .push(condition_from(
                    reason::RESOLVED_REFS,
                    &outcome,
                    gw.obj.metadata.generation,
                ));
        }
    }
}
