//! `deploy/`, the kustomize base, as a platform team would apply it: every resource the
//! kustomizations list exists, every document parses into its Kubernetes or Gateway API
//! type without a field lost (a misspelled field would be dropped silently by the API
//! server's client-side tools), and the fleet keeps its promises: read-only gateways, a
//! status-only writer, hardened pods, probes on the admin port, spread over zones. The
//! examples under `deploy/examples/` are held to the same parse.

use gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicy;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::experimental::referencegrants::ReferenceGrant;
use gateway_api::gatewayclasses::GatewayClass;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
use weir_controller::crd::{AuthorizationPolicy, RateLimitPolicy};

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
        documents(&path, out);
    }
}

/// The documents of one multi-document YAML file.
fn documents(path: &Path, out: &mut Vec<(PathBuf, Value)>) {
    let text = std::fs::read_to_string(path).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if !v.is_null() {
            out.push((path.to_path_buf(), v));
        }
    }
}

/// Every YAML file under `dir`, recursively, in a stable order.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
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
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    services: Vec<Service>,
    pdbs: Vec<PodDisruptionBudget>,
    hpas: Vec<HorizontalPodAutoscaler>,
    network_policies: Vec<NetworkPolicy>,
    kinds: Vec<String>,
}

fn fleet() -> Fleet {
    let mut docs = Vec::new();
    render(&deploy_dir(), &mut docs);
    let mut f = Fleet {
        deployments: Vec::new(),
        cluster_roles: Vec::new(),
        cluster_role_bindings: Vec::new(),
        roles: Vec::new(),
        services: Vec::new(),
        pdbs: Vec::new(),
        hpas: Vec::new(),
        network_policies: Vec::new(),
        kinds: Vec::new(),
    };
    for (path, v) in &docs {
        let kind = v["kind"].as_str().unwrap_or("").to_string();
        let what = format!("{} {kind} {}", path.display(), v["metadata"]["name"]);
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(v, &what)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(v, &what)),
            "ClusterRoleBinding" => f.cluster_role_bindings.push(typed(v, &what)),
            "RoleBinding" => drop(typed::<RoleBinding>(v, &what)),
            "GatewayClass" => drop(typed::<GatewayClass>(v, &what)),
            "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(v, &what)),
            "ClusterRole" => f.cluster_roles.push(typed(v, &what)),
            "Role" => f.roles.push(typed(v, &what)),
            "Deployment" => f.deployments.push(typed(v, &what)),
            "Service" => f.services.push(typed(v, &what)),
            "PodDisruptionBudget" => f.pdbs.push(typed(v, &what)),
            "HorizontalPodAutoscaler" => f.hpas.push(typed(v, &what)),
            "NetworkPolicy" => f.network_policies.push(typed(v, &what)),
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

/// The labels of a Deployment's pods.
fn pod_labels(f: &Fleet, deployment: &str) -> std::collections::BTreeMap<String, String> {
    f.deployments
        .iter()
        .find(|d| name(*d) == deployment)
        .and_then(|d| d.spec.as_ref()?.template.metadata.as_ref()?.labels.clone())
        .unwrap_or_else(|| panic!("Deployment {deployment}'s pod labels"))
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
        // It reads its own Node once, for the zone label: it may not list the cluster's.
        if rule.resources.iter().flatten().any(|r| r == "nodes") {
            assert_eq!(rule.verbs, ["get"], "nodes: get only, not {:?}", rule.verbs);
        }
    }
    for rule in rules(&f, "weir-controller") {
        let writes = rule
            .verbs
            .iter()
            .any(|v| !["get", "list", "watch"].contains(&v.as_str()));
        if writes {
            let named = |n: &[&str]| {
                rule.resource_names.as_deref().is_some_and(|names| {
                    !names.is_empty() && names.iter().all(|x| n.contains(&x.as_str()))
                })
            };
            for r in rule.resources.iter().flatten() {
                // Besides status: the sidecars' policy ConfigMaps, patched by name only
                // (creating one is `create`, which RBAC cannot narrow by name), and the
                // gateways' Secret grants, likewise: Weir's own RoleBindings and Role,
                // binding Weir's own roles only.
                let sidecar_policies = r == "configmaps"
                    && (rule.verbs == ["create"]
                        || (rule.verbs == ["patch"] && named(&["weir-authz"])));
                let grants = ["weir-gateway-secrets", "weir-gateway-jwks"];
                let secret_grants = (["rolebindings", "roles"].contains(&r.as_str())
                    && rule.verbs == ["list", "create"])
                    || (r == "rolebindings" && rule.verbs == ["patch", "delete"] && named(&grants))
                    || (r == "roles"
                        && rule.verbs == ["patch", "delete", "bind"]
                        && named(&["weir-gateway-jwks"]))
                    || (r == "clusterroles"
                        && rule.verbs == ["bind"]
                        && named(&["weir-gateway-secrets"]));
                assert!(
                    r.ends_with("/status") || sidecar_policies || secret_grants,
                    "the controller may {:?} {r} ({:?})",
                    rule.verbs,
                    rule.resource_names
                );
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
    // POD_NAMESPACE: where the fleet Service (weir-gateway-internal) is looked up.
    for var in ["POD_NAME", "NODE_NAME", "POD_NAMESPACE"] {
        assert!(env.contains(&var), "{var} in {env:?}");
    }
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

#[test]
fn both_roles_read_namespace_labels() {
    // Translation matches allowedRoutes namespace selectors against Namespace labels.
    let f = fleet();
    for role in ["weir-gateway", "weir-controller"] {
        let reads = rules(&f, role).iter().any(|r| {
            r.api_groups.as_deref() == Some(&[String::new()])
                && r.resources.iter().flatten().any(|x| x == "namespaces")
                && ["get", "list", "watch"]
                    .iter()
                    .all(|v| r.verbs.iter().any(|x| x == v))
        });
        assert!(reads, "{role} may get, list and watch namespaces");
    }
}

/// The gateways face the internet: they read Secrets only through the RoleBindings the
/// controller keeps in the namespaces their Gateways use. Their ClusterRole grants none,
/// and no ClusterRoleBinding hands out `weir-gateway-secrets` cluster-wide.
#[test]
fn gateways_read_secrets_only_where_a_rolebinding_lets_them() {
    let f = fleet();
    let grants_secrets = |rules: &[PolicyRule]| {
        rules.iter().any(|r| {
            r.resources
                .iter()
                .flatten()
                .any(|x| x == "secrets" || x == "*")
        })
    };
    assert!(
        !grants_secrets(rules(&f, "weir-gateway")),
        "the gateway's ClusterRole must not grant Secrets"
    );
    let secrets = rules(&f, "weir-gateway-secrets");
    assert_eq!(secrets.len(), 1);
    assert_eq!(
        secrets[0].resources.as_deref(),
        Some(&["secrets".to_string()][..])
    );
    assert_eq!(secrets[0].verbs, ["get", "list", "watch"]);
    for b in &f.cluster_role_bindings {
        assert_ne!(
            b.role_ref.name,
            "weir-gateway-secrets",
            "ClusterRoleBinding {} would grant the gateways every Secret",
            name(b)
        );
    }
    assert_eq!(
        weir_controller::status::secret_access::NAME,
        "weir-gateway-secrets",
        "the controller binds the ClusterRole deploy/ defines"
    );
    // What the controller needs to keep those grants, and no more: it may create
    // RoleBindings and Roles anywhere (RBAC cannot narrow create by name), but change,
    // delete or bind only Weir's own.
    let controller = rules(&f, "weir-controller");
    let may = |resource: &str, verb: &str, name: &str| {
        controller.iter().any(|r| {
            r.api_groups
                .iter()
                .flatten()
                .any(|g| g == "rbac.authorization.k8s.io")
                && r.resources.iter().flatten().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
                && r.resource_names
                    .as_ref()
                    .is_none_or(|names| names.iter().any(|n| n == name))
        })
    };
    let jwks = weir_controller::status::secret_access::JWKS;
    for (resource, verb, name) in [
        ("rolebindings", "list", ""),
        ("rolebindings", "create", "any"),
        ("rolebindings", "patch", "weir-gateway-secrets"),
        ("rolebindings", "delete", "weir-gateway-secrets"),
        ("rolebindings", "patch", jwks),
        ("rolebindings", "delete", jwks),
        ("roles", "list", ""),
        ("roles", "create", "any"),
        ("roles", "patch", jwks),
        ("roles", "delete", jwks),
        ("roles", "bind", jwks),
        ("clusterroles", "bind", "weir-gateway-secrets"),
    ] {
        assert!(
            may(resource, verb, name),
            "the controller may {verb} {resource} {name}"
        );
    }
    for (resource, verb) in [
        ("rolebindings", "patch"),
        ("rolebindings", "delete"),
        ("roles", "patch"),
        ("roles", "bind"),
        ("clusterroles", "bind"),
        ("clusterroles", "escalate"),
        ("roles", "escalate"),
    ] {
        assert!(
            !may(resource, verb, "cluster-admin"),
            "the controller must not {verb} any {resource} but Weir's own"
        );
    }
}

/// Each kind the Kubernetes source watches must be readable by both roles: a kind the RBAC
/// forgets fails its list with 403, and the source never becomes ready. (The gateways read
/// Secrets namespace by namespace: see the test above.)
#[test]
fn both_roles_read_every_watched_kind() {
    let f = fleet();
    for role in ["weir-gateway", "weir-controller"] {
        for (group, resource) in weir_controller::source::kube::WATCHED_RESOURCES {
            if role == "weir-gateway" && resource == "secrets" {
                continue;
            }
            let reads = rules(&f, role).iter().any(|r| {
                r.api_groups.iter().flatten().any(|g| g == group)
                    && r.resources.iter().flatten().any(|x| x == resource)
                    && ["get", "list", "watch"]
                        .iter()
                        .all(|v| r.verbs.iter().any(|x| x == v))
            });
            assert!(reads, "{role} may get, list and watch {group}/{resource}");
        }
    }
}

#[test]
fn the_controller_may_patch_every_status_it_writes() {
    let f = fleet();
    let statuses = [
        ("gateway.networking.k8s.io", "gatewayclasses"),
        ("gateway.networking.k8s.io", "gateways"),
        ("gateway.networking.k8s.io", "httproutes"),
        ("gateway.networking.k8s.io", "grpcroutes"),
        ("gateway.networking.k8s.io", "backendtlspolicies"),
        ("weir.dev", "ratelimitpolicies"),
        ("weir.dev", "authorizationpolicies"),
    ];
    for (group, resource) in statuses {
        let status = format!("{resource}/status");
        let patches = rules(&f, "weir-controller").iter().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| *x == status)
                && r.verbs.iter().any(|v| v == "patch")
        });
        assert!(patches, "the controller may patch {group}/{status}");
    }
}

/// The examples are applied with `kubectl apply -f`, not through the kustomization, so they
/// are walked here: every document under `deploy/examples/` parses into its type too.
#[test]
fn every_example_parses_into_its_type() {
    let mut files = Vec::new();
    yaml_files(&deploy_dir().join("examples"), &mut files);
    let mut docs = Vec::new();
    for path in &files {
        documents(path, &mut docs);
    }
    let mut kinds = Vec::new();
    for (path, v) in &docs {
        let kind = v["kind"].as_str().unwrap_or("").to_string();
        let what = format!("{} {kind} {}", path.display(), v["metadata"]["name"]);
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(v, &what)),
            "GatewayClass" => drop(typed::<GatewayClass>(v, &what)),
            "Gateway" => drop(typed::<Gateway>(v, &what)),
            "HTTPRoute" => drop(typed::<HttpRoute>(v, &what)),
            "GRPCRoute" => drop(typed::<GrpcRoute>(v, &what)),
            "ReferenceGrant" => drop(typed::<ReferenceGrant>(v, &what)),
            "Service" => drop(typed::<Service>(v, &what)),
            "EndpointSlice" => drop(typed::<EndpointSlice>(v, &what)),
            "Secret" => drop(typed::<Secret>(v, &what)),
            "ConfigMap" => drop(typed::<ConfigMap>(v, &what)),
            "Deployment" => drop(typed::<Deployment>(v, &what)),
            "RateLimitPolicy" => drop(typed::<RateLimitPolicy>(v, &what)),
            "AuthorizationPolicy" => drop(typed::<AuthorizationPolicy>(v, &what)),
            "BackendTLSPolicy" => drop(typed::<BackendTlsPolicy>(v, &what)),
            other => panic!("{what}: no type checks kind {other:?}; add it here"),
        }
        kinds.push(kind);
    }
    let dirs: Vec<String> = files
        .iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(deploy_dir().join("examples")).ok()?;
            let mut parts = rel.components();
            let first = parts.next()?.as_os_str().to_string_lossy().into_owned();
            parts.next().map(|_| first)
        })
        .collect();
    for example in ["quickstart", "edge", "internal"] {
        assert!(
            dirs.iter().any(|d| d == example),
            "deploy/examples/{example}"
        );
    }
    for kind in [
        "Gateway",
        "HTTPRoute",
        "RateLimitPolicy",
        "BackendTLSPolicy",
        "Deployment",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "the examples have a {kind}"
        );
    }
}

/// The container port a Service port leads to: a number, or a named port of the container.
fn target_port(spec: &PodSpec, port: &k8s_openapi::api::core::v1::ServicePort) -> i32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match &port.target_port {
        None => port.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(named)) => {
            spec.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(named.as_str()))
                .unwrap_or_else(|| panic!("no container port named {named}"))
                .container_port
        }
    }
}

/// The listener ports of the Gateways in one example directory.
fn listener_ports(example: &str) -> Vec<i32> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir().join("examples").join(example), &mut files);
    let mut docs = Vec::new();
    for path in &files {
        documents(path, &mut docs);
    }
    let ports: Vec<i32> = docs
        .iter()
        .filter(|(_, v)| v["kind"] == "Gateway")
        .flat_map(|(_, v)| {
            v["spec"]["listeners"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|l| l["port"].as_i64().expect("a listener port") as i32)
        .collect();
    assert!(!ports.is_empty(), "deploy/examples/{example} has a Gateway");
    ports
}

/// Internal routes are reachable only from inside the cluster: the internal Gateway listens
/// on ports of its own, which the fleet's ClusterIP Service leads to and the edge's
/// LoadBalancer does not. Were they shared, a client outside could reach an internal route by
/// sending its Host header to the edge.
#[test]
fn the_edge_never_exposes_internal_listeners() {
    let f = fleet();
    let spec = pod(&f, "weir-gateway");
    let targets = |service: &str| -> Vec<i32> {
        let svc = f
            .services
            .iter()
            .find(|s| name(*s) == service)
            .unwrap_or_else(|| panic!("Service {service}"));
        svc.spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| target_port(spec, p))
            .collect()
    };
    let (edge, internal) = (targets("weir-gateway"), targets("weir-gateway-internal"));
    let (edge_listeners, internal_listeners) = (listener_ports("edge"), listener_ports("internal"));
    for port in &internal_listeners {
        assert!(
            !edge_listeners.contains(port),
            "the internal Gateway shares port {port} with the edge Gateway"
        );
        assert!(
            !edge.contains(port),
            "the edge LoadBalancer exposes the internal listener port {port}: {edge:?}"
        );
        assert!(
            internal.contains(port),
            "weir-gateway-internal leads to the internal listener port {port}: {internal:?}"
        );
    }
    for port in &edge {
        assert!(
            edge_listeners.contains(port),
            "the edge LoadBalancer exposes {port}, not an edge listener port {edge_listeners:?}"
        );
    }
    for port in &internal {
        assert!(
            internal_listeners.contains(port),
            "weir-gateway-internal leads to {port}, not an internal listener port"
        );
    }
}

/// `kubectl apply -f DIR` applies files in name order, documents in file order, and fails on
/// an object whose namespace does not exist yet. The examples meant for a cluster apply in one
/// go after `kubectl apply -k deploy/` (which makes weir-system).
#[test]
fn cluster_examples_apply_in_one_go() {
    for example in ["edge", "internal"] {
        let mut files = Vec::new();
        yaml_files(&deploy_dir().join("examples").join(example), &mut files);
        let mut docs = Vec::new();
        for path in &files {
            documents(path, &mut docs);
        }
        let mut namespaces = vec!["weir-system".to_string(), "default".to_string()];
        for (path, v) in &docs {
            if v["kind"] == "Namespace" {
                namespaces.push(v["metadata"]["name"].as_str().unwrap().to_string());
            } else if let Some(ns) = v["metadata"]["namespace"].as_str() {
                assert!(
                    namespaces.iter().any(|n| n == ns),
                    "{}: {} {} is applied before its Namespace {ns}",
                    path.display(),
                    v["kind"],
                    v["metadata"]["name"]
                );
            }
        }
    }
}

/// No private key is committed under deploy/: the examples' certificates and identities are
/// made at install time (`weir-controller tls-secret`, `weir-controller ca manifests`) into
/// `*.generated.yaml` files, which git ignores. Every file is read, JSON and all, not only
/// YAML: a key pasted into a dashboard or a README is as leaked.
#[test]
fn no_file_under_deploy_holds_a_private_key() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&deploy_dir(), &mut files);
    assert!(files.len() > 20, "{} files", files.len());
    let mut leaked = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy();
        // Made on this machine by the demo or the README's commands, and git-ignored.
        if name.ends_with(".generated.yaml") {
            continue;
        }
        let bytes = std::fs::read(path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        if text.contains("PRIVATE KEY-----") {
            leaked.push(path.display().to_string());
        }
    }
    assert!(leaked.is_empty(), "private keys committed in: {leaked:?}");
    // And what the exception lets through is never committed.
    let ignore = std::fs::read_to_string(deploy_dir().join("../.gitignore")).unwrap();
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "deploy/examples/**/*.generated.yaml"),
        ".gitignore must keep deploy/examples/**/*.generated.yaml out of git"
    );
}

/// Redis requires a password and admits only the gateways: the password comes from a
/// Secret made at install (never committed), the gateway reads the same key from a mounted
/// file, and a NetworkPolicy lets only gateway pods reach Redis's port.
#[test]
fn redis_needs_the_password_the_gateways_read_and_admits_only_them() {
    let f = fleet();
    let redis = pod(&f, "weir-redis");
    let c = &redis.containers[0];
    let args = c.args.clone().unwrap_or_default();
    let at = args
        .iter()
        .position(|a| a == "--requirepass")
        .expect("--requirepass");
    assert_eq!(args[at + 1], "$(REDIS_PASSWORD)");
    let secret_of = |env: &str| {
        let e = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == env)
            .unwrap_or_else(|| panic!("{env}"));
        let r = e
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("a Secret");
        (r.name.clone(), r.key.clone())
    };
    let secret = secret_of("REDIS_PASSWORD");
    assert_eq!(
        secret_of("REDISCLI_AUTH"),
        secret,
        "the probe authenticates too"
    );

    let gateway = pod(&f, "weir-gateway");
    let g = &gateway.containers[0];
    let args = g.args.clone().unwrap_or_default();
    let file = args
        .iter()
        .find_map(|a| a.strip_prefix("--redis-password-file="))
        .expect("--redis-password-file");
    let (dir, file_name) = file.rsplit_once('/').unwrap();
    let mount = g
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    let volume = gateway
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .and_then(|v| v.secret.as_ref())
        .expect("a Secret volume");
    assert_eq!(volume.secret_name.as_deref(), Some(secret.0.as_str()));
    let item = volume
        .items
        .iter()
        .flatten()
        .find(|i| i.path == file_name)
        .expect("the file");
    assert_eq!(
        item.key, secret.1,
        "the gateway reads the key Redis requires"
    );

    let policy = f
        .network_policies
        .iter()
        .find(|p| name(*p) == "weir-redis")
        .expect("a NetworkPolicy for Redis");
    let spec = policy.spec.as_ref().unwrap();
    let redis_labels = pod_labels(&f, "weir-redis");
    let selects = spec
        .pod_selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default();
    assert!(!selects.is_empty() && selects.iter().all(|(k, v)| redis_labels.get(k) == Some(v)));
    let ingress = spec.ingress.as_ref().expect("ingress rules");
    assert_eq!(ingress.len(), 1, "one way in");
    let from = ingress[0].from.as_ref().expect("from");
    let gateway_labels = pod_labels(&f, "weir-gateway");
    for peer in from {
        assert!(
            peer.ip_block.is_none() && peer.namespace_selector.is_none(),
            "only pods here"
        );
        let l = peer
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default();
        assert!(
            !l.is_empty() && l.iter().all(|(k, v)| gateway_labels.get(k) == Some(v)),
            "{l:?}"
        );
    }
}

/// The fleet's admin port is on the pod's address for the kubelet and Prometheus, but its
/// `/config` (routes, endpoints, certificate chains, policies) stays loopback-only: the
/// manifests must not open it.
#[test]
fn the_gateways_config_dump_stays_loopback_only() {
    let f = fleet();
    let args = pod(&f, "weir-gateway").containers[0]
        .args
        .clone()
        .unwrap_or_default();
    assert!(
        args.iter().any(|a| a.starts_with("--admin=0.0.0.0:")),
        "{args:?}"
    );
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--config-access") && !a.ends_with("=loopback")),
        "deploy/ opens /config to other pods: {args:?}"
    );
    let env = pod(&f, "weir-gateway").containers[0]
        .env
        .clone()
        .unwrap_or_default();
    assert!(
        !env.iter().any(|e| e.name == "WEIR_CONFIG_ACCESS"),
        "{env:?}"
    );
}
