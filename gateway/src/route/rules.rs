//! Route rules and route entries. A rule whose filters or session persistence do not compile
//! answers 500 (Gateway API: a filter that cannot be applied must not be skipped); a match
//! that does not compile is left out. Either way the route's other rules serve.

use super::filters::{HeaderOps, RewriteOps};
use super::matcher::CompiledMatch;
use super::table::{Choice, Entry, FilterSet, MirrorRt, RuleRt, Target};
use crate::balance::WeightedSchedule;
use crate::balance::session::{Persistence, backend_token};
use crate::problems::{MATCH_NOT_PROGRAMMED, Problems, RULE_ANSWERS_500};
use std::collections::HashMap;
use std::time::Duration;
use weir_model::{BackendKey, BackendRef, Config, Filter, RouteEntry, RouteKind, Rule, RuleId};

/// How a rule is named in problems: `HTTPRoute namespace/name rule 0`.
pub fn label(id: &RuleId, config: &Config) -> String {
    match config.rules.get(id) {
        // The default rule of a mesh Service: its index is the port.
        Some(r) if r.kind == RouteKind::Service => format!("Service {} port {}", r.route, r.index),
        Some(r) => format!("{} {} rule {}", r.kind, r.route, r.index),
        None => id.to_string(),
    }
}

/// Compiles `r`; when it fails, a rule that answers 500 takes its place.
pub(super) fn compile(
    id: &RuleId,
    r: &Rule,
    backends: &HashMap<&BackendKey, usize>,
    rate_limit: Option<usize>,
    authz: Box<[usize]>,
    config: &Config,
    problems: &mut Problems,
) -> RuleRt {
    let mut rt = RuleRt {
        id: id.clone(),
        route: r.route.to_string().into(),
        rule_index: r.index.to_string().into(),
        kind: r.kind,
        filters: FilterSet::default(),
        choices: Vec::new(),
        schedule: None,
        request_timeout: r.timeouts.request_ms.map(Duration::from_millis),
        backend_timeout: r.timeouts.backend_request_ms.map(Duration::from_millis),
        rate_limit,
        authz,
        key_id: id.to_string().into(),
        persistence: None,
        split_key: r.split_key.clone(),
        retry: r.retry.clone(),
    };
    if let Err(why) = fill(&mut rt, r, backends) {
        problems.add(label(id, config), why, RULE_ANSWERS_500);
        rt.filters = FilterSet::default();
        rt.choices = vec![Choice {
            target: Target::Error(500),
            filters: FilterSet::default(),
            token: 0,
            series: Default::default(),
        }];
        rt.schedule = WeightedSchedule::new(&[1]);
        rt.persistence = None;
    }
    rt
}

/// The parts of a rule that can fail to compile.
fn fill(rt: &mut RuleRt, r: &Rule, backends: &HashMap<&BackendKey, usize>) -> Result<(), String> {
    let mut weights = Vec::with_capacity(r.backends.len());
    for b in &r.backends {
        let (target, token) = match &b.backend {
            BackendRef::Service(k) => (
                backends
                    .get(k)
                    .map_or(Target::Error(500), |&i| Target::Backend(i)),
                backend_token(k),
            ),
            BackendRef::Error { status, .. } => (Target::Error(*status), 0),
        };
        rt.choices.push(Choice {
            target,
            token,
            filters: filters(&b.filters, backends)?,
            series: Default::default(),
        });
        weights.push(b.weight);
    }
    rt.schedule = WeightedSchedule::new(&weights);
    rt.filters = filters(&r.filters, backends)?;
    rt.persistence = r
        .session_persistence
        .as_ref()
        .map(Persistence::compile)
        .transpose()?;
    Ok(())
}

fn filters(list: &[Filter], backends: &HashMap<&BackendKey, usize>) -> Result<FilterSet, String> {
    let mut set = FilterSet::default();
    for f in list {
        match f {
            Filter::RequestHeaderModifier(m) => {
                set.request_headers =
                    Some(HeaderOps::compile(m).map_err(|e| format!("RequestHeaderModifier: {e}"))?)
            }
            Filter::ResponseHeaderModifier(m) => {
                set.response_headers = Some(
                    HeaderOps::compile(m).map_err(|e| format!("ResponseHeaderModifier: {e}"))?,
                )
            }
            Filter::RequestRedirect(r) => set.redirect = Some(r.clone()),
            Filter::UrlRewrite(r) => {
                set.rewrite = Some(RewriteOps::compile(r).map_err(|e| format!("URLRewrite: {e}"))?)
            }
            Filter::RequestMirror(m) => {
                if let BackendRef::Service(k) = &m.backend
                    && let Some(&backend) = backends.get(k)
                {
                    set.mirrors.push(MirrorRt {
                        backend,
                        numerator: m.numerator,
                        denominator: m.denominator.max(1),
                    });
                }
            }
        }
    }
    Ok(set)
}

/// The entries of one virtual host (or mesh Service), in order; those that do not compile
/// are left out.
pub(super) fn entries(
    list: &[RouteEntry],
    rules: &HashMap<&RuleId, usize>,
    config: &Config,
    problems: &mut Problems,
) -> Vec<Entry> {
    list.iter()
        .filter_map(|e| {
            let Some(&rule) = rules.get(&e.rule) else {
                // The translation emits entries for its own rules only; this is a bug there.
                let message = "a route entry names this rule, which is not in the config";
                problems.add(e.rule.to_string(), message.into(), MATCH_NOT_PROGRAMMED);
                return None;
            };
            match CompiledMatch::compile(&e.matcher) {
                Ok(matcher) => Some(Entry { matcher, rule }),
                Err(m) => {
                    let message = format!("match: {m}");
                    problems.add(label(&e.rule, config), message, MATCH_NOT_PROGRAMMED);
                    None
                }
            }
        })
        .collect()
}
