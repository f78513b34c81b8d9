//! The Kubernetes manifests one gateway of a run serves: GatewayClass, a Gateway with one
//! HTTP listener, Services with their EndpointSlices (zone and ready condition on every
//! endpoint), and one HTTPRoute per hostname.
//!
//! Each endpoint gets its own EndpointSlice because a slice's port applies to all of its
//! endpoints, and every echo listens on a port of its own on 127.0.0.1.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// Everything in the `default` namespace: file mode needs no Namespace object then.
const NAMESPACE: &str = "default";

/// One endpoint of a Service.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub pod: String,
    pub zone: String,
    pub addr: SocketAddr,
}

/// A Service and how the gateway should treat it.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: &'static str,
    pub endpoints: Vec<Endpoint>,
    /// `spec.trafficDistribution: PreferClose`.
    pub zone_affinity: bool,
    /// `weir.dev/health-check: /healthz` every 500 ms.
    pub health_check: bool,
    /// `weir.dev/load-balancer`, when set.
    pub load_balancer: Option<&'static str>,
}

impl Service {
    pub fn new(name: &'static str, endpoints: Vec<Endpoint>) -> Self {
        Self {
            name,
            endpoints,
            zone_affinity: false,
            health_check: false,
            load_balancer: None,
        }
    }
}

/// An HTTPRoute with one rule: `backends` as (Service, weight), optionally retrying 503s.
#[derive(Debug, Clone)]
pub struct Route {
    pub host: &'static str,
    pub backends: Vec<(&'static str, u32)>,
    /// `retry: {codes: [503], attempts: 2, backoff: 10ms}`.
    pub retry_503: bool,
}

/// The manifests for a gateway listening on `port`.
pub fn render(port: u16, services: &[Service], routes: &[Route]) -> String {
    let mut m = crate::procs::gateway_yaml(NAMESPACE, "bench", port);
    for service in services {
        service_yaml(&mut m, service);
    }
    for route in routes {
        route_yaml(&mut m, route);
    }
    m
}

fn service_yaml(m: &mut String, s: &Service) {
    let mut annotations = Vec::new();
    if s.health_check {
        annotations.push("weir.dev/health-check: \"/healthz\"".to_owned());
        annotations.push("weir.dev/health-check-interval: \"500ms\"".to_owned());
    }
    if let Some(lb) = s.load_balancer {
        annotations.push(format!("weir.dev/load-balancer: \"{lb}\""));
    }
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        format!(", annotations: {{{}}}", annotations.join(", "))
    };
    let distribution = if s.zone_affinity {
        "trafficDistribution: PreferClose, "
    } else {
        ""
    };
    let _ = write!(
        m,
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NAMESPACE}{annotations}}}
spec: {{{distribution}ports: [{{name: http, port: 80}}]}}
",
        name = s.name
    );
    for e in &s.endpoints {
        let _ = write!(
            m,
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-{pod}, namespace: {NAMESPACE}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [\"{ip}\"], zone: {zone}, conditions: {{ready: true}}}}]
",
            name = s.name,
            pod = e.pod,
            port = e.addr.port(),
            ip = e.addr.ip(),
            zone = e.zone,
        );
    }
}

fn route_yaml(m: &mut String, r: &Route) {
    let refs: Vec<String> = r
        .backends
        .iter()
        .map(|(name, weight)| format!("{{name: {name}, port: 80, weight: {weight}}}"))
        .collect();
    let retry = if r.retry_503 {
        "\n    retry: {codes: [503], attempts: 2, backoff: 10ms}"
    } else {
        ""
    };
    let _ = write!(
        m,
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  parentRefs: [{{name: bench}}]
  hostnames: [{host}]
  rules:
  - backendRefs: [{refs}]{retry}
",
        name = r.host.replace('.', "-"),
        host = r.host,
        refs = refs.join(", "),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_carry_zone_and_readiness() {
        let mut svc = Service::new(
            "app",
            vec![Endpoint {
                pod: "a1".into(),
                zone: "a".into(),
                addr: "127.0.0.1:4000".parse().unwrap(),
            }],
        );
        svc.zone_affinity = true;
        svc.health_check = true;
        let route = Route {
            host: "app.test",
            backends: vec![("app", 90), ("canary", 10)],
            retry_503: true,
        };
        let yaml = render(8080, &[svc], &[route]);
        for expected in [
            "port: 8080",
            "trafficDistribution: PreferClose",
            "weir.dev/health-check-interval: \"500ms\"",
            "name: app-a1",
            "ports: [{name: http, port: 4000}]",
            "zone: a, conditions: {ready: true}",
            "{name: canary, port: 80, weight: 10}",
            "retry: {codes: [503], attempts: 2, backoff: 10ms}",
        ] {
            assert!(yaml.contains(expected), "{expected:?} missing in\n{yaml}");
        }
    }
}
