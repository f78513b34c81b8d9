//! A compact text view of a [`Config`], for `weir-controller render` and logs.

use super::{BackendRef, Config, PathMatch, StringMatch};
use std::fmt::Write;

impl Config {
    /// One line per listener, per route entry (in precedence order) and per backend.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for l in &self.listeners {
            let _ = writeln!(
                out,
                "{} :{} {} listener {}{}",
                l.protocol,
                l.port,
                l.gateway,
                l.name,
                l.hostname
                    .as_deref()
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default()
            );
            for h in &l.hosts {
                for e in &h.routes {
                    let path = match &e.matcher.path {
                        PathMatch::Exact(v) => format!("= {v}"),
                        PathMatch::PathPrefix(v) => format!("{v}*"),
                        PathMatch::RegularExpression(v) => format!("~ {v}"),
                    };
                    let mut extra = String::new();
                    if let Some(m) = &e.matcher.method {
                        let _ = write!(extra, " {m}");
                    }
                    for hm in &e.matcher.headers {
                        let _ = write!(extra, " {}{}", hm.name, string_match(&hm.value));
                    }
                    for q in &e.matcher.query_params {
                        let _ = write!(extra, " ?{}{}", q.name, string_match(&q.value));
                    }
                    let _ = writeln!(out, "  {} {path}{extra} -> {}", h.hostname, e.rule);
                }
            }
        }
        for (id, rule) in &self.rules {
            let backends: Vec<String> = rule
                .backends
                .iter()
                .map(|b| match &b.backend {
                    BackendRef::Service(k) => {
                        let n = self.backends.get(k).map_or(0, |b| b.endpoints.len());
                        format!("{k} w={} ({n} endpoints)", b.weight)
                    }
                    BackendRef::Error { status, .. } => format!("{status} w={}", b.weight),
                })
                .collect();
            let filters: Vec<String> = rule
                .filters
                .iter()
                .map(|f| {
                    serde_json::to_value(f)
                        .ok()
                        .and_then(|v| v.get("type").and_then(|t| t.as_str().map(str::to_owned)))
                        .unwrap_or_default()
                })
                .collect();
            let _ = writeln!(
                out,
                "rule {id}:{}{}",
                if filters.is_empty() {
                    String::new()
                } else {
                    format!(" filters [{}]", filters.join(", "))
                },
                if backends.is_empty() {
                    String::new()
                } else {
                    format!(" backends [{}]", backends.join(", "))
                }
            );
        }
        out
    }
}

fn string_match(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(v) => format!("={v}"),
        StringMatch::RegularExpression(v) => format!("~{v}"),
    }
}
