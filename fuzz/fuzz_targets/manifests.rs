//! Manifests → snapshot → translate → compile, and what the data plane then does with the
//! translated values.
//!
//! The input is a multi-document YAML file, as `weir-gateway --manifests` reads. A custom
//! mutator edits the YAML tree (replaces, drops, duplicates and splices nodes) half of the
//! time, so most inputs stay well-formed manifests that reach `translate`; the other half
//! uses libFuzzer's byte mutations, which exercise the parser itself.
//!
//! Invariants checked, beyond "does not panic":
//! - a rejected load explains itself (at least one problem);
//! - `translate` gives the same config and status for any order of the snapshot's lists
//!   (its documented contract: file order, API server order and replicas must agree);
//! - the config survives a JSON round trip (`/config`, `weir-controller render`);
//! - `runtime::compile` finds no problem in a translated config (translation validates
//!   what compiling parses: regexes, header names and values, certificates);
//! - every host in the config is already in `normalize_host` form, or requests never match it;
//! - every redirect gives a valid `Location` header value, every rewrite a valid request path;
//! - a session token the gateway issues is read back by the same rule.

#![no_main]

use http::HeaderMap;
use libfuzzer_sys::{fuzz_mutator, fuzz_target};
use serde_yaml::Value;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use weir_controller::source::Snapshot;
use weir_gateway::balance::session::Persistence;
use weir_gateway::balance::{Balancer, Locality};
use weir_gateway::route::filters::{RedirectInput, RewriteOps, redirect_location, replace_path};
use weir_gateway::route::normalize_host;
use weir_model::{Config, Filter, PathMatch, PathModifier, Scheme, SessionKind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text);
});

fn balancer() -> &'static Balancer {
    static B: OnceLock<Arc<Balancer>> = OnceLock::new();
    B.get_or_init(|| Balancer::new(Locality::default()))
}

fn check(text: &str) {
    let loaded = match weir_controller::source::files::parse_str(Path::new("fuzz.yaml"), text) {
        Ok(l) => l,
        Err(e) => {
            assert!(!e.problems.is_empty(), "a rejected load names its problems");
            let _ = e.to_string();
            return;
        }
    };
    let snapshot = loaded.snapshot;
    let (config, report) = weir_controller::translate(&snapshot);

    let reversed = reverse(&snapshot);
    let (config2, report2) = weir_controller::translate(&reversed);
    assert_eq!(
        config, config2,
        "translate depends on the order of the input lists"
    );
    assert_eq!(
        report, report2,
        "status depends on the order of the input lists"
    );

    let json = serde_json::to_string(&config).expect("config serialises");
    let back: Config = serde_json::from_str(&json).expect("config deserialises");
    assert_eq!(config, back, "config JSON round trip");

    hosts_are_normal(&config);
    filters_make_valid_requests(&config);
    sessions_round_trip(&config);

    let rt = weir_gateway::runtime::compile(Arc::new(config), 1, balancer());
    assert!(
        rt.problems.is_empty(),
        "a translated config does not compile: {:?}",
        rt.problems
    );
}

fn reverse(s: &Snapshot) -> Snapshot {
    let mut r = s.clone();
    r.gateway_classes.reverse();
    r.gateways.reverse();
    r.http_routes.reverse();
    r.grpc_routes.reverse();
    r.reference_grants.reverse();
    r.namespaces.reverse();
    r.services.reverse();
    r.endpoint_slices.reverse();
    r.secrets.reverse();
    r.rate_limit_policies.reverse();
    r.backend_tls_policies.reverse();
    r.config_maps.reverse();
    r
}

fn hosts_are_normal(config: &Config) {
    let normal = |h: &str| {
        let concrete = match h.strip_prefix('*') {
            Some("") => return,
            Some(suffix) => format!("x{suffix}"),
            None => h.to_string(),
        };
        assert_eq!(
            normalize_host(&concrete),
            concrete.as_str(),
            "host {h:?} in the config can never match a request"
        );
    };
    for l in &config.listeners {
        if let Some(h) = &l.hostname {
            normal(h);
        }
        for vh in &l.hosts {
            normal(&vh.hostname);
        }
    }
}

/// A request path that the rule's match accepts, for filters that depend on it.
fn sample_path(m: &PathMatch) -> (String, Option<&str>) {
    match m {
        PathMatch::Exact(p) => (format!("{p}?q=1"), None),
        PathMatch::PathPrefix(p) => (format!("{}/rest?q=1", p.trim_end_matches('/')), Some(p)),
        PathMatch::RegularExpression(_) => ("/any?q=1".into(), None),
    }
}

fn filters_make_valid_requests(config: &Config) {
    let matches_of = |rule| {
        config
            .listeners
            .iter()
            .flat_map(|l| &l.hosts)
            .flat_map(|vh| &vh.routes)
            .filter(move |e| &e.rule == rule)
            .map(|e| &e.matcher)
    };
    for (id, rule) in &config.rules {
        let filters = rule
            .filters
            .iter()
            .chain(rule.backends.iter().flat_map(|b| &b.filters));
        for f in filters {
            for m in matches_of(id) {
                let (path, prefix) = sample_path(&m.path);
                match f {
                    Filter::RequestRedirect(r) => {
                        let input = RedirectInput {
                            scheme: Scheme::Http,
                            listener_port: 8080,
                            host: "example.com",
                            path: &path,
                            matched_prefix: prefix,
                        };
                        let loc = redirect_location(r, &input);
                        assert!(
                            http::HeaderValue::from_str(&loc).is_ok(),
                            "redirect of {id} gives an invalid Location {loc:?}"
                        );
                        assert!(
                            loc.parse::<http::Uri>().is_ok(),
                            "redirect of {id} gives a Location that is no URI: {loc:?}"
                        );
                    }
                    Filter::UrlRewrite(rw) => {
                        let ops = RewriteOps::compile(rw).expect("rewrite compiles");
                        if let Some(modifier) = &ops.path {
                            let matched = matches!(modifier, PathModifier::ReplacePrefixMatch(_))
                                .then_some(prefix)
                                .flatten();
                            let new = replace_path(modifier, matched, &path);
                            assert!(new.starts_with('/'), "rewrite of {id} gives {new:?}");
                            assert!(
                                http::uri::PathAndQuery::try_from(new.as_str()).is_ok(),
                                "rewrite of {id} gives an invalid request path {new:?}"
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn sessions_round_trip(config: &Config) {
    for (id, rule) in &config.rules {
        let Some(sp) = &rule.session_persistence else {
            continue;
        };
        let p = Persistence::compile(sp)
            .unwrap_or_else(|e| panic!("session persistence of {id} does not compile: {e}"));
        let (name, value) = p.issue(7, 9, None, true);
        let mut req = HeaderMap::new();
        match sp.kind {
            SessionKind::Header => {
                req.insert(name, value);
            }
            SessionKind::Cookie => {
                let text = value.to_str().expect("set-cookie is text");
                let pair = text.split(';').next().unwrap_or_default();
                req.insert(
                    http::header::COOKIE,
                    format!("other=1; {pair}").parse().expect("cookie header"),
                );
            }
        }
        let token = p
            .read(&req)
            .unwrap_or_else(|| panic!("session of {id} is not read back from {req:?}"));
        assert_eq!((token.backend, token.endpoint), (7, 9));
    }
}

// ---- structure-aware mutation ----------------------------------------------------------

/// Values that Gateway API fields care about, spliced into the YAML tree.
const WORDS: &[&str] = &[
    "",
    "*",
    "*.example.com",
    "Example.COM.",
    "a..b",
    "-a.com",
    "127.0.0.1",
    "[::1]",
    "/",
    "//",
    "/foo/",
    "/a b",
    "/%zz",
    "/é",
    "/a?b=1",
    "/a#frag",
    "Exact",
    "PathPrefix",
    "RegularExpression",
    "ReplaceFullPath",
    "ReplacePrefixMatch",
    "RequestRedirect",
    "URLRewrite",
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "Cookie",
    "Header",
    "Permanent",
    "(",
    ".*",
    "a{1000}{1000}",
    "HTTP",
    "HTTPS",
    "TLS",
    "GRPC",
    "Terminate",
    "Passthrough",
    "All",
    "Same",
    "Selector",
    "http",
    "https",
    "Service",
    "Gateway",
    "HTTPRoute",
    "GRPCRoute",
    "Secret",
    "default",
    "kube-system",
    "weir.dev/gateway-controller",
    "gateway.networking.k8s.io",
    "gateway.networking.k8s.io/v1",
    "weir.dev/v1alpha1",
    "v1",
    "x-header",
    "X-Header",
    "bad header",
    "a\r\nb",
    "0",
    "1",
    "-1",
    "80",
    "65535",
    "65536",
    "4294967296",
    "1.5",
    "0s",
    "1ms",
    "10s",
    "1h",
    "999999h",
    "true",
    "null",
    "~",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Sequence(s) => s.iter().map(count).sum(),
        Value::Mapping(m) => m.values().map(count).sum(),
        Value::Tagged(t) => count(&t.value),
        _ => 0,
    }
}

/// The `n`th node in pre-order.
fn nth<'a>(v: &'a Value, n: &mut usize) -> Option<&'a Value> {
    if *n == 0 {
        return Some(v);
    }
    *n -= 1;
    match v {
        Value::Sequence(s) => s.iter().find_map(|c| nth(c, n)),
        Value::Mapping(m) => m.values().find_map(|c| nth(c, n)),
        Value::Tagged(t) => nth(&t.value, n),
        _ => None,
    }
}

fn nth_mut<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
    if *n == 0 {
        return Some(v);
    }
    *n -= 1;
    match v {
        Value::Sequence(s) => s.iter_mut().find_map(|c| nth_mut(c, n)),
        Value::Mapping(m) => m.values_mut().find_map(|c| nth_mut(c, n)),
        Value::Tagged(t) => nth_mut(&mut t.value, n),
        _ => None,
    }
}

/// The `pick`th node over all documents.
fn locate(sizes: &[usize], mut pick: usize) -> Option<(usize, usize)> {
    for (i, size) in sizes.iter().enumerate() {
        if pick < *size {
            return Some((i, pick));
        }
        pick -= size;
    }
    None
}

fn scalar(rng: &mut Rng) -> Value {
    match rng.below(4) {
        0 => Value::Number((rng.next() % 70_000).into()),
        1 => Value::Bool(rng.below(2) == 0),
        _ => Value::String(WORDS[rng.below(WORDS.len())].to_string()),
    }
}

fn mutate_tree(docs: &mut [Value], rng: &mut Rng) {
    let sizes: Vec<usize> = docs.iter().map(count).collect();
    let total: usize = sizes.iter().sum();
    if total == 0 {
        return;
    }
    let donor = locate(&sizes, rng.below(total))
        .and_then(|(d, mut n)| nth(&docs[d], &mut n).cloned())
        .unwrap_or(Value::Null);
    let Some((d, mut n)) = locate(&sizes, rng.below(total)) else {
        return;
    };
    if let Some(node) = nth_mut(&mut docs[d], &mut n) {
        apply(node, donor, rng);
    }
}

fn apply(node: &mut Value, donor: Value, rng: &mut Rng) {
    match (rng.below(6), &mut *node) {
        (0, Value::Mapping(m)) if !m.is_empty() => {
            let i = rng.below(m.len());
            let key = m.keys().nth(i).cloned();
            if let Some(k) = key {
                m.remove(&k);
            }
        }
        (1, Value::Mapping(m)) => {
            let key = Value::String(WORDS[rng.below(WORDS.len())].to_string());
            m.insert(key, donor);
        }
        (0, Value::Sequence(s)) if !s.is_empty() => {
            let i = rng.below(s.len());
            s.remove(i);
        }
        (1, Value::Sequence(s)) if !s.is_empty() => {
            let i = rng.below(s.len());
            let copy = s[i].clone();
            s.insert(i, copy);
        }
        (2, Value::Sequence(s)) => s.push(donor),
        (3, _) => *node = donor,
        (4, Value::String(text)) if !text.is_empty() => {
            // Edit one character: case, a duplicate, or a removal.
            let chars: Vec<char> = text.chars().collect();
            let i = rng.below(chars.len());
            let mut out: String = chars[..i].iter().collect();
            match rng.below(3) {
                0 => out.extend(chars[i].to_uppercase()),
                1 => {
                    out.push(chars[i]);
                    out.push(chars[i]);
                }
                _ => {}
            }
            out.extend(&chars[i + 1..]);
            *text = out;
        }
        _ => *node = scalar(rng),
    }
}

fn mutate_yaml(data: &[u8], seed: u32) -> Option<String> {
    let text = std::str::from_utf8(data).ok()?;
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        docs.push(<Value as serde::Deserialize>::deserialize(de).ok()?);
    }
    if docs.is_empty() {
        return None;
    }
    let mut rng = Rng(u64::from(seed) | 1 << 40);
    for _ in 0..1 + rng.below(3) {
        mutate_tree(&mut docs, &mut rng);
    }
    let mut out = String::new();
    for d in &docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(d).ok()?);
    }
    Some(out)
}

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    if seed.is_multiple_of(2)
        && let Some(out) = mutate_yaml(&data[..size], seed)
        && out.len() <= max_size
    {
        data[..out.len()].copy_from_slice(out.as_bytes());
        return out.len();
    }
    libfuzzer_sys::fuzzer_mutate(data, size, max_size)
});
