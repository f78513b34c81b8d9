//! `deploy/`, the kustomize base, as a platform team would apply it: every resource the
//! kustomizations list exists, every document parses into its Kubernetes or Gateway API
//! type without a field lost (a misspelled field would be dropped silently by the API
//! server's client-side tools), and the fleet keeps its promises: read-only gateways, a
//! status-only writer, hardened pods, probes on the admin port, spread over zones.

use gateway_api::gatewayclasses::GatewayClass;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The documents a kustomization renders from, following `resources` into files and into
/// directories with their own kustomization, as `kubectl kustomize` does.
fn render(dir: &Path, out: &mut Vec<(PathBuf, Value)>) {
    let k = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&k).unwrap_or_else(|e| panic!("{}: {e}", k.display()));
    let kustomization: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(kustomization["kind"], "Kustomization", "{}", k.display());
    for r in kustomization["resources"].as_array().expect("resources") {
        let path = dir.join(r.as_str().expect("a path"));
        assert!(
            path.exists(),
            "{} lists {} which does not exist",
            k.display(),
            path.display()
        );
        if path.is_dir() {
            render(&path, out);
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push((path.clone(), v));
            }
        }
    }
}

/// Every field of `original` that survived a round trip through `T`: a key the type does
/// not know is reported with its path.
fn lost_fields(original: &Value, typed: &Value, at: &str, lost: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in o {
                match t.get(k) {
                    Some(tv) => lost_fields(v, tv, &format!("{at}.{k}"), lost),
                    // Empty values may be dropped by serialisation without meaning lost.
                    None if v.is_null() || v == &Value::Object(Default::default()) => {}
                    None => lost.push(format!("{at}.{k}")),
                }
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            for (i, (ov, tv)) in o.iter().zip(t).enumerate() {
                lost_fields(ov, tv, &format!("{at}[{i}]"), lost);
            }
        }
        _ => {}
    }
}

fn typed<T: DeserializeOwned + serde::Serialize>(v: &Value, what: &str) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut lost = Vec::new();
    lost_fields(v, &serde_json::to_value(&t).unwrap(), "", &mut lost);
    assert!(
        lost.is_empty(),
        "{what}: fields its type does not have: {lost:?}"
    );
    t
}

struct Fleet {
    deployments: Vec<Deployment>,
    cluster_roles: Vec<ClusterRole>,
    roles: Vec<Role>,
    services: Vec<Service>,
    pdbs: Vec<PodDisruptionBudget>,
    hpas: Vec<HorizontalPodAutoscaler>,
    kinds: Vec<String>,
}

fn fleet() -> Fleet {
    let mut docs = Vec::new();
    render(&deploy_dir(), &mut docs);
    let mut f = Fleet {
        deployments: Vec::new(),
        cluster_roles: Vec::new(),
        roles: Vec::new(),
        services: Vec::new(),
        pdbs: Vec::new(),
        hpas: Vec::new(),
        kinds: Vec::new(),
    };
    for (path, v) in &docs {
        let kind = v["kind"].as_str().unwrap_or("").to_string();
        let what = format!("{} {kind} {}", path.display(), v["metadata"]["name"]);
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(v, &what)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(v, &what)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(v, &what)),
            "RoleBinding" => drop(typed::<RoleBinding>(v, &what)),
            "GatewayClass" => drop(typed::<GatewayClass>(v, &what)),
            "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(v, &what)),
            "ClusterRole" => f.cluster_roles.push(typed(v, &what)),
            "Role" => f.roles.push(typed(v, &what)),
            "Deployment" => f.deployments.push(typed(v, &what)),
            "Service" => f.services.push(typed(v, &what)),
            "PodDisruptionBudget" => f.pdbs.push(typed(v, &what)),
            "HorizontalPodAutoscaler" => f.hpas.push(typed(v, &what)),
            other => panic!("{what}: no type checks kind {other:?}; add it here"),
        }
        f.kinds.push(kind);
    }
    f
}

fn name<
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    o: &T,
) -> &str {
    o.metadata().name.as_deref().unwrap_or("")
}

fn rules<'a>(f: &'a Fleet, role: &str) -> &'a [PolicyRule] {
    f.cluster_roles
        .iter()
        .find(|r| name(*r) == role)
        .and_then(|r| r.rules.as_deref())
        .unwrap_or_else(|| panic!("ClusterRole {role}"))
}

fn pod<'a>(f: &'a Fleet, deployment: &str) -> &'a PodSpec {
    f.deployments
        .iter()
        .find(|d| name(*d) == deployment)
        .and_then(|d| d.spec.as_ref()?.template.spec.as_ref())
        .unwrap_or_else(|| panic!("Deployment {deployment}"))
}

#[test]
fn every_document_parses_into_its_type() {
    let f = fleet();
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "GatewayClass",
        "Deployment",
    ] {
        assert!(f.kinds.iter().any(|k| k == kind), "the base has a {kind}");
    }
}

#[test]
fn gateways_only_read_and_the_controller_only_writes_status() {
    let f = fleet();
    for rule in rules(&f, "weir-gateway") {
        for verb in &rule.verbs {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str()),
                "the gateway may {verb} {:?}",
                rule.resources
            );
        }
    }
    for rule in rules(&f, "weir-controller") {
        let writes = rule
            .verbs
            .iter()
            .any(|v| !["get", "list", "watch"].contains(&v.as_str()));
        if writes {
            for r in rule.resources.iter().flatten() {
                assert!(r.ends_with("/status"), "the controller may write {r}");
            }
        }
    }
    let lease = f
        .roles
        .iter()
        .find(|r| name(*r) == "weir-controller-leader");
    let lease_rules = lease
        .and_then(|r| r.rules.as_deref())
        .expect("a leader Role");
    assert!(lease_rules.iter().all(|r| {
        r.api_groups.as_deref() == Some(&["coordination.k8s.io".to_string()])
            && r.resources.as_deref() == Some(&["leases".to_string()])
    }));
}

#[test]
fn every_pod_is_hardened() {
    let f = fleet();
    assert_eq!(f.deployments.len(), 3, "gateway, controller and redis");
    for d in &f.deployments {
        let spec = pod(&f, name(d));
        let pod_sc = spec.security_context.as_ref().expect("pod securityContext");
        assert_eq!(pod_sc.run_as_non_root, Some(true), "{}", name(d));
        for c in &spec.containers {
            let sc = c
                .security_context
                .as_ref()
                .expect("container securityContext");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            let drop = sc.capabilities.as_ref().and_then(|c| c.drop.clone());
            assert_eq!(drop, Some(vec!["ALL".to_string()]), "{}", c.name);
            let memory = c
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("memory"));
            assert!(memory.is_some(), "{} has a memory limit", c.name);
        }
    }
}

#[test]
fn the_gateway_fleet_spreads_probes_drains_and_scales() {
    let f = fleet();
    let d = f
        .deployments
        .iter()
        .find(|d| name(*d) == "weir-gateway")
        .unwrap();
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));
    let spec = pod(&f, "weir-gateway");
    let spread = spec
        .topology_spread_constraints
        .as_deref()
        .unwrap_or_default();
    assert!(
        spread
            .iter()
            .any(|s| s.topology_key == "topology.kubernetes.io/zone")
    );
    let c = &spec.containers[0];
    let admin = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("admin"))
        .expect("an admin port");
    let args = c.args.clone().unwrap_or_default();
    assert!(
        args.contains(&format!("--admin=0.0.0.0:{}", admin.container_port)),
        "probes reach the admin listener: {args:?}"
    );
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
    }
    let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(
        env.contains(&"POD_NAME") && env.contains(&"NODE_NAME"),
        "{env:?}"
    );
    let pre_stop = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
    assert!(pre_stop.is_some(), "a preStop drain");
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    let drain: i64 = args
        .iter()
        .find_map(|a| a.strip_prefix("--drain-seconds="))
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    assert!(
        grace > drain + 5,
        "the grace period ({grace}) covers preStop and the drain"
    );
    let pdbs: Vec<&str> = f.pdbs.iter().map(name).collect();
    let hpa_targets: Vec<&str> = f
        .hpas
        .iter()
        .map(|h| h.spec.scale_target_ref.name.as_str())
        .collect();
    assert_eq!(pdbs, ["weir-gateway"]);
    assert_eq!(hpa_targets, ["weir-gateway"]);
    let types: Vec<Option<&str>> = f
        .services
        .iter()
        .filter(|s| name(*s).starts_with("weir-gateway"))
        .map(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()))
        .collect();
    assert_eq!(types, [Some("LoadBalancer"), Some("ClusterIP")]);
}
