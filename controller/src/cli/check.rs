//! `weir-controller check`: the status every object would get, as rows for JSON or text.

use crate::translate::StatusReport;
use crate::translate::{is_bad, is_negative};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::Serialize;
use std::fmt::Write;

const API_VERSION: &str = "gateway.networking.k8s.io/v1";
const WEIR_API_VERSION: &str = "weir.dev/v1alpha1";

/// One object and the status that would be written to its status subresource.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    pub api_version: &'static str,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub status: serde_json::Value,
}

pub fn rows(report: &StatusReport) -> Vec<ObjectStatus> {
    let mut out = Vec::new();
    let mut push =
        |kind: &'static str, namespace: Option<&str>, name: &str, status: serde_json::Value| {
            out.push(ObjectStatus {
                api_version: if kind.ends_with("Policy") && kind != "BackendTLSPolicy" {
                    WEIR_API_VERSION
                } else {
                    API_VERSION
                },
                kind,
                namespace: namespace.map(str::to_owned),
                name: name.to_owned(),
                status,
            })
        };
    for (name, s) in &report.gateway_classes {
        push("GatewayClass", None, name, json(s));
    }
    for (id, s) in &report.gateways {
        push("Gateway", Some(&id.namespace), &id.name, json(s));
    }
    for (id, s) in &report.http_routes {
        push("HTTPRoute", Some(&id.namespace), &id.name, json(s));
    }
    for (id, s) in &report.grpc_routes {
        push("GRPCRoute", Some(&id.namespace), &id.name, json(s));
    }
    for (id, p) in &report.rate_limit_policies {
        push(
            "RateLimitPolicy",
            Some(&id.namespace),
            &id.name,
            json(&p.status),
        );
    }
    for (id, p) in &report.authorization_policies {
        push(
            "AuthorizationPolicy",
            Some(&id.namespace),
            &id.name,
            json(&p.status),
        );
    }
    for (id, s) in &report.backend_tls_policies {
        push("BackendTLSPolicy", Some(&id.namespace), &id.name, json(s));
    }
    out
}

fn json<T: Serialize>(status: &T) -> serde_json::Value {
    serde_json::to_value(status).unwrap_or(serde_json::Value::Null)
}

/// Whether every GatewayClass, Gateway and route parent is Accepted and every route is
/// attached to a Gateway Weir serves.
pub fn all_accepted(report: &StatusReport) -> bool {
    let accepted = |conds: &[Condition]| {
        conds
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True")
    };
    report
        .gateway_classes
        .values()
        .all(|s| accepted(s.conditions.as_deref().unwrap_or_default()))
        && report
            .gateways
            .values()
            .all(|s| accepted(s.conditions.as_deref().unwrap_or_default()))
        && report
            .http_routes
            .values()
            .all(|s| s.parents.iter().all(|p| accepted(&p.conditions)))
        && report
            .grpc_routes
            .values()
            .all(|s| s.parents.iter().all(|p| accepted(&p.conditions)))
        && report.unattached_routes.is_empty()
        && report
            .rate_limit_policies
            .values()
            .all(|p| accepted(&p.status.conditions))
        && report
            .authorization_policies
            .values()
            .all(|p| accepted(&p.status.conditions))
        && report
            .backend_tls_policies
            .values()
            .all(|s| s.ancestors.iter().all(|a| accepted(&a.conditions)))
}

/// A human summary: one line per object (and per listener or parent), conditions that hold
/// in short, the others with their reason and message.
pub fn text(report: &StatusReport) -> String {
    let mut out = String::new();
    for (name, s) in &report.gateway_classes {
        let _ = writeln!(
            out,
            "GatewayClass {name}: {}",
            conditions(s.conditions.as_deref().unwrap_or_default())
        );
    }
    for (id, s) in &report.gateways {
        let _ = writeln!(
            out,
            "Gateway {id}: {}",
            conditions(s.conditions.as_deref().unwrap_or_default())
        );
        for l in s.listeners.iter().flatten() {
            let _ = writeln!(
                out,
                "  listener {}: {}; {} route(s) attached",
                l.name,
                conditions(&l.conditions),
                l.attached_routes
            );
        }
    }
    for (kind, id, parent, conds) in report.route_parents() {
        let _ = writeln!(out, "{kind} {id} -> {parent}: {}", conditions(conds));
    }
    for (id, p) in &report.rate_limit_policies {
        let _ = writeln!(
            out,
            "RateLimitPolicy {id}: {}",
            conditions(&p.status.conditions)
        );
    }
    for (id, p) in &report.authorization_policies {
        let _ = writeln!(
            out,
            "AuthorizationPolicy {id}: {}",
            conditions(&p.status.conditions)
        );
    }
    for (id, gateway, conds) in report.backend_tls_ancestors() {
        let _ = writeln!(
            out,
            "BackendTLSPolicy {id} -> {gateway}: {}",
            conditions(conds)
        );
    }
    for ((kind, id), why) in &report.unattached_routes {
        let _ = writeln!(out, "{kind} {id}: not attached: {why}");
    }
    out
}

/// `Accepted, Programmed` when all is well; failing conditions in full.
fn conditions(conds: &[Condition]) -> String {
    conds
        .iter()
        .map(|c| {
            let good = !is_bad(c);
            if good && c.reason == c.type_ {
                c.type_.clone()
            } else if good && !is_negative(&c.type_) {
                format!("{}={} ({})", c.type_, c.status, c.reason)
            } else if good {
                c.reason.clone()
            } else {
                format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
