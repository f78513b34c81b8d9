//! HTTPRoutes and GRPCRoutes in one route-type-neutral form, with every rule compiled.

use super::index::Index;
use super::rules::{self, CompiledRule, RouteCtx, RuleInput};
use super::state::{ParentRef, RouteView};
use super::{annotations, balance, build, hostname};
use crate::source::Snapshot;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;
use weir_model::{Backend, BackendKey, ObjectName, RouteKind};

pub(crate) fn collect<'a>(
    snapshot: &'a Snapshot,
    idx: &Index<'a>,
    backends: &mut BTreeMap<BackendKey, Backend>,
) -> Vec<RouteView<'a>> {
    let mut out = Vec::new();
    for r in &snapshot.http_routes {
        let inputs = r
            .spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .map(|(index, rule)| RuleInput {
                index,
                name: rule.name.clone(),
                matches: rules::http_matches(rule.matches.as_ref()),
                filters: super::filters::specs(rule.filters.as_ref()),
                backend_refs: rules::backend_specs(rule.backend_refs.as_ref()),
                request_timeout: rule.timeouts.as_ref().and_then(|t| t.request.clone()),
                backend_request_timeout: rule
                    .timeouts
                    .as_ref()
                    .and_then(|t| t.backend_request.clone()),
                session_persistence: Ok(rule.session_persistence.clone()),
                retry: rule.retry.clone(),
            })
            .collect();
        out.push(view(
            idx,
            backends,
            RouteKind::Http,
            &r.metadata,
            r.spec.hostnames.as_ref(),
            r.spec.parent_refs.as_ref(),
            inputs,
        ));
    }
    for r in &snapshot.grpc_routes {
        let inputs = r
            .spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .map(|(index, rule)| RuleInput {
                index,
                name: rule.name.clone(),
                matches: rules::grpc_matches(rule.matches.as_ref()),
                filters: super::filters::specs(rule.filters.as_ref()),
                backend_refs: rules::backend_specs(rule.backend_refs.as_ref()),
                request_timeout: None,
                backend_request_timeout: None,
                session_persistence: balance::session_spec(rule.session_persistence.as_ref()),
                retry: None,
            })
            .collect();
        out.push(view(
            idx,
            backends,
            RouteKind::Grpc,
            &r.metadata,
            r.spec.hostnames.as_ref(),
            r.spec.parent_refs.as_ref(),
            inputs,
        ));
    }
    out
}

fn view<'a, P: serde::Serialize>(
    idx: &Index<'a>,
    backends: &mut BTreeMap<BackendKey, Backend>,
    kind: RouteKind,
    meta: &'a ObjectMeta,
    hostnames: Option<&Vec<String>>,
    parent_refs: Option<&Vec<P>>,
    inputs: Vec<RuleInput>,
) -> RouteView<'a> {
    let id = ObjectName::new(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default(),
    );
    let hostnames = hostnames
        .into_iter()
        .flatten()
        .map(|h| hostname::normalize(h, true))
        .collect::<Result<Vec<_>, _>>();
    let mut refs: Vec<ParentRef> = Vec::new();
    for p in parent_refs.into_iter().flatten() {
        // Both generated parentRef types serialise to the same schema.
        if let Ok(p) = serde_json::to_value(p).and_then(serde_json::from_value::<ParentRef>)
            && !refs.contains(&p)
        {
            refs.push(p);
        }
    }
    let settings = annotations::route(meta);
    let mut ctx = RouteCtx {
        idx,
        backends,
        kind,
        id: &id,
        ref_problems: Vec::new(),
        split_key: settings.split_key,
        retry_budget_percent: settings.retry_budget_percent,
    };
    let rules: Vec<Result<CompiledRule, String>> = inputs
        .into_iter()
        .map(|input| rules::compile(&mut ctx, input))
        .collect();
    let mut annotation_problems = settings.problems;
    annotation_problems.extend(service_problems(idx, ctx.backends, &rules));
    let mut ref_problems = ctx.ref_problems;
    // Several rules naming the same missing Service are one problem to the user.
    let mut seen = std::collections::BTreeSet::new();
    ref_problems.retain(|p| seen.insert(p.message.clone()));
    RouteView {
        kind,
        id,
        generation: meta.generation,
        created: meta.creation_timestamp.as_ref(),
        hostnames,
        parent_refs: refs,
        rules,
        ref_problems,
        annotation_problems,
    }
}

/// The ignored annotations of the Services the route's served rules send traffic to
/// (mirrors included): whoever wrote the route is the one surprised by them.
fn service_problems(
    idx: &Index<'_>,
    backends: &BTreeMap<BackendKey, Backend>,
    rules: &[Result<CompiledRule, String>],
) -> Vec<String> {
    let services: std::collections::BTreeSet<&ObjectName> =
        build::used_backends(rules.iter().flatten().map(|c| &c.rule))
            .iter()
            .filter_map(|k| backends.get(k))
            .map(|b| &b.service)
            .collect();
    let mut out = Vec::new();
    for id in services {
        if let Some(svc) = idx.service(&id.namespace, &id.name) {
            out.extend(
                annotations::service(svc)
                    .problems
                    .into_iter()
                    .map(|p| format!("Service {id}: {p}")),
            );
        }
    }
    out
}
