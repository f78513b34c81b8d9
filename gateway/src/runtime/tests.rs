//! Compiling object by object: each kind of object that translates but does not compile is
//! left out or fails closed on its own, and is reported; the rest of the config compiles.
//! The configs are translated from YAML, then given what the translation would not emit.

use super::{Runtime, compile};
use crate::balance::{Balancer, Locality};
use crate::problems::*;
use crate::route::Target;
use std::path::Path;
use std::sync::Arc;
use weir_controller::source::files::parse_str;
use weir_model::{
    BackendKey, BackendTls, Certificate, ClientValidation, Config, Filter, HeaderModifier,
    HeaderValue, KeyPart, ObjectName, PathMatch, RateLimit, RateLimitMode, RateLimitPolicy, RuleId,
    Trust,
};
use weir_model::{FailureMode, RouteKind};

/// A CERTIFICATE block that is not X.509 (base64 of "not a certificate").
const JUNK: &str =
    "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";

fn leaf(name: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

fn secret(name: &str, host: &str) -> String {
    let (cert, key) = leaf(host);
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&cert),
        indent(&key)
    )
}

/// HTTPS listeners `a` and `b` on 8443, `c` on 9443, `http` on 8080; route `r` with rules
/// for `/one` and `/two` on all of them.
fn config() -> Config {
    let https = |name: &str, port: u16| {
        format!(
            "  - {{name: {name}, port: {port}, protocol: HTTPS, hostname: {name}.example.com, tls: {{certificateRefs: [{{name: {name}-cert}}]}}}}\n"
        )
    };
    let mut yaml = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: weir}\nspec: {controllerName: weir.dev/gateway-controller}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  gatewayClassName: weir\n  listeners:\n",
    );
    yaml += &https("a", 8443);
    yaml += &https("b", 8443);
    yaml += &https("c", 9443);
    yaml += "  - {name: http, port: 8080, protocol: HTTP}\n";
    for n in ["a", "b", "c"] {
        yaml += &secret(&format!("{n}-cert"), &format!("{n}.example.com"));
    }
    yaml += "---\napiVersion: v1\nkind: Service\nmetadata: {name: app}\nspec: {ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: app, labels: {kubernetes.io/service-name: app}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.0.0.1]}]\n";
    yaml += "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {value: /one}}]\n    backendRefs: [{name: app, port: 80}]\n  - matches: [{path: {value: /two}}]\n    backendRefs: [{name: app, port: 80}]\n";
    let loaded = parse_str(Path::new("test.yaml"), &yaml).unwrap();
    let (config, _) = weir_controller::translate(&loaded.snapshot);
    assert_eq!(config.listeners.len(), 4, "{config:#?}");
    config
}

fn compiled(config: Config) -> Runtime {
    let balancer = Balancer::new(Locality::default());
    compile(Arc::new(config), 1, &balancer)
}

fn listener(c: &mut Config, name: &str) -> usize {
    c.listeners.iter().position(|l| l.name == name).unwrap()
}

fn names(rt: &Runtime, port: u16) -> Vec<&str> {
    rt.ports.get(&port).map_or(Vec::new(), |p| {
        p.listeners.iter().map(|l| &*l.name).collect()
    })
}

fn rule(n: usize) -> RuleId {
    RuleId::new(RouteKind::Http, &ObjectName::new("default", "r"), n)
}

#[test]
fn a_config_that_translated_compiles_without_problems() {
    let rt = compiled(config());
    assert_eq!(rt.problems, []);
    assert_eq!(names(&rt, 8443), ["a", "b"]);
    assert_eq!(names(&rt, 9443), ["c"]);
    assert_eq!(names(&rt, 8080), ["http"]);
}

#[test]
fn a_listener_whose_only_certificate_is_refused_is_not_programmed() {
    let mut c = config();
    for name in ["b", "c"] {
        let i = listener(&mut c, name);
        c.listeners[i].tls.as_mut().unwrap().certificates[0].cert_pem = JUNK.into();
    }
    let rt = compiled(c);
    assert_eq!(names(&rt, 8443), ["a"]);
    let certs = &rt.tls.ports[&8443];
    assert!(certs.select(Some("a.example.com")).is_some());
    assert!(
        certs.select(Some("b.example.com")).is_none(),
        "no certificate for b"
    );
    assert!(
        !rt.port_set().contains_key(&9443),
        "c alone would open 9443"
    );
    assert_eq!(names(&rt, 8080), ["http"]);
    assert_eq!(rt.problems.len(), 2, "{:?}", rt.problems);
    let p = &rt.problems[0];
    assert_eq!(p.object, "Gateway default/gw listener b");
    assert!(p.message.starts_with("certificate default/b-cert: "), "{p}");
    assert_eq!(p.effect, LISTENER_NOT_PROGRAMMED);
    assert!(
        p.to_string().ends_with("; the listener is not programmed"),
        "{p}"
    );
}

#[test]
fn a_listener_keeps_the_certificates_that_compile() {
    let mut c = config();
    let i = listener(&mut c, "a");
    let tls = c.listeners[i].tls.as_mut().unwrap();
    let mut bad = tls.certificates[0].clone();
    bad.secret = ObjectName::new("default", "bad");
    bad.cert_pem = JUNK.into();
    tls.certificates.insert(0, bad);
    let rt = compiled(c);
    assert_eq!(names(&rt, 8443), ["a", "b"]);
    let certs = &rt.tls.ports[&8443];
    assert!(certs.select(Some("a.example.com")).is_some());
    assert_eq!(rt.problems.len(), 1);
    assert_eq!(rt.problems[0].effect, CERTIFICATE_SKIPPED);
}

#[test]
fn a_listener_whose_client_validation_does_not_compile_is_not_programmed() {
    let mut c = config();
    let i = listener(&mut c, "a");
    c.listeners[i].tls.as_mut().unwrap().client_validation = Some(ClientValidation {
        ca_pem: JUNK.into(),
        optional: false,
    });
    let rt = compiled(c);
    // Serving `a` without the validation it asks for would let any client in.
    assert_eq!(names(&rt, 8443), ["b"]);
    assert!(rt.tls.ports[&8443].client_auth.is_none());
    assert_eq!(rt.problems.len(), 1);
    assert_eq!(rt.problems[0].object, "Gateway default/gw listener a");
    assert!(rt.problems[0].message.contains("client validation CA"));
}

#[test]
fn a_backend_tls_policy_that_does_not_compile_fails_closed() {
    let mut c = config();
    let key = BackendKey::new(&ObjectName::new("default", "app"), 80);
    c.backends.get_mut(&key).unwrap().tls = Some(BackendTls {
        policy: ObjectName::new("default", "p"),
        hostname: "app.internal".into(),
        subject_alt_names: Vec::new(),
        trust: Trust::Pem(JUNK.into()),
    });
    let rt = compiled(c);
    let tls = rt.backends[0]
        .tls
        .as_ref()
        .expect("still TLS, never cleartext");
    assert!(
        tls.invalid
            .as_deref()
            .unwrap()
            .contains("not a certificate")
    );
    assert_eq!(rt.problems.len(), 1);
    let p = &rt.problems[0];
    assert_eq!(
        p.object,
        "BackendTLSPolicy default/p (backend default/app:80)"
    );
    assert_eq!(p.effect, BACKEND_TLS_REFUSED);
    assert_eq!(names(&rt, 8443), ["a", "b"]);
}

#[test]
fn a_rule_whose_filter_does_not_compile_answers_500() {
    let mut c = config();
    c.rules
        .get_mut(&rule(0))
        .unwrap()
        .filters
        .push(Filter::RequestHeaderModifier(HeaderModifier {
            set: vec![HeaderValue {
                name: "bad header".into(),
                value: "x".into(),
            }],
            ..HeaderModifier::default()
        }));
    let rt = compiled(c);
    let target = |id: &RuleId| {
        let r = rt.rules.iter().find(|r| &r.id == id).unwrap();
        r.pick().map(|c| matches!(c.target, Target::Error(500)))
    };
    assert_eq!(target(&rule(0)), Some(true), "rule 0 answers 500");
    assert_eq!(target(&rule(1)), Some(false), "rule 1 still routes");
    assert_eq!(rt.problems.len(), 1);
    let p = &rt.problems[0];
    assert_eq!(p.object, "HTTPRoute default/r rule 0");
    assert!(p.message.starts_with("RequestHeaderModifier: "), "{p}");
    assert_eq!(p.effect, RULE_ANSWERS_500);
}

#[test]
fn a_match_that_does_not_compile_is_left_out_and_reported_once() {
    let mut c = config();
    for l in &mut c.listeners {
        for vh in &mut l.hosts {
            for e in vh.routes.iter_mut().filter(|e| e.rule == rule(1)) {
                e.matcher.path = PathMatch::RegularExpression("(".into());
            }
        }
    }
    let rt = compiled(c);
    for port in rt.ports.values() {
        for l in &port.listeners {
            let host = if l.name.as_ref() == "http" {
                "any".to_string()
            } else {
                format!("{}.example.com", l.name)
            };
            let rules: Vec<usize> = l.entries(&host).iter().map(|e| e.rule).collect();
            assert_eq!(rules.len(), 1, "{}: only /one remains", l.name);
        }
    }
    assert_eq!(rt.problems.len(), 1, "{:?}", rt.problems);
    assert_eq!(rt.problems[0].object, "HTTPRoute default/r rule 1");
    assert_eq!(rt.problems[0].effect, MATCH_NOT_PROGRAMMED);
}

#[test]
fn a_rate_limit_policy_that_does_not_compile_is_not_enforced() {
    let mut c = config();
    c.rate_limits.insert(
        "default/rl".into(),
        RateLimitPolicy {
            id: "default/rl".into(),
            mode: RateLimitMode::Enforce,
            failure_mode: FailureMode::Local,
            response_headers: false,
            limits: vec![RateLimit {
                name: "per-user".into(),
                requests: 10,
                burst: 0,
                window_ms: 1000,
                key: vec![KeyPart::Header("bad header".into())],
                when: Vec::new(),
            }],
        },
    );
    c.rules.get_mut(&rule(0)).unwrap().rate_limit = Some("default/rl".into());
    c.rules.get_mut(&rule(1)).unwrap().rate_limit = Some("default/missing".into());
    let rt = compiled(c);
    assert!(rt.policies.is_empty());
    assert!(rt.rules.iter().all(|r| r.rate_limit.is_none()));
    let objects: Vec<&str> = rt.problems.iter().map(|p| p.object.as_str()).collect();
    assert_eq!(
        objects,
        ["RateLimitPolicy default/rl", "HTTPRoute default/r rule 1"]
    );
    assert!(rt.problems.iter().all(|p| p.effect == POLICY_NOT_ENFORCED));
}

#[test]
fn a_gateway_client_certificate_that_does_not_compile_is_left_out() {
    let mut c = config();
    let (cert, key) = leaf("client.example.com");
    for l in &mut c.listeners {
        l.backend_client_certificate = Some(Certificate {
            secret: ObjectName::new("default", "client"),
            cert_pem: format!("{cert}{JUNK}"),
            key_pem: key.clone(),
        });
    }
    let rt = compiled(c);
    assert_eq!(names(&rt, 8443), ["a", "b"]);
    let all = rt.ports.values().flat_map(|p| &p.listeners);
    assert!(all.clone().all(|l| l.backend_client_cert.is_none()));
    assert_eq!(all.count(), 4);
    assert_eq!(rt.problems.len(), 1, "once, not per listener");
    let p = rt.problems[0].to_string();
    assert!(
        p.starts_with("Gateway default/gw: tls.backend.clientCertificateRef: client certificate default/client: not a certificate"),
        "{p}"
    );
}
