//! `weir-controller inject`: the sidecar, its identity volume and the port wiring, added to
//! Deployments, idempotently, leaving other documents alone.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::io::Write;
use std::process::{Command, Stdio};

const INPUT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: payments, namespace: payments}
spec:
  selector: {matchLabels: {app: payments}}
  template:
    metadata: {labels: {app: payments}}
    spec:
      containers:
      - name: app
        image: example/payments:1
        ports:
        - {name: http, containerPort: 8080}
        - {containerPort: 9090}
        readinessProbe: {httpGet: {path: /ready, port: http}}
---
apiVersion: v1
kind: Service
metadata: {name: payments, namespace: payments}
spec:
  selector: {app: payments}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

fn inject(input: &str, extra: &[&str]) -> (String, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir-controller"))
        .args(["inject", "-", "--allow", "spiffe://cluster.local/ns/shop/*"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (text(out.stdout), text(out.stderr), out.status.success())
}

/// The documents of kind `kind`.
fn of_kind<T: serde::de::DeserializeOwned>(yaml: &str, kind: &str) -> Vec<T> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| v["kind"].as_str() == Some(kind))
        .map(|v| serde_yaml::from_value(v).unwrap())
        .collect()
}

fn docs(yaml: &str) -> (Deployment, Service) {
    let d = of_kind(yaml, "Deployment").pop().unwrap();
    let s = of_kind(yaml, "Service").pop().unwrap();
    (d, s)
}

#[test]
fn the_sidecar_takes_over_named_ports_and_mounts_its_identity() {
    let (out, warnings, ok) = inject(INPUT, &["--http-proxy"]);
    assert!(ok, "{warnings}");
    let (d, svc) = docs(&out);
    let pod = d.spec.unwrap().template.spec.unwrap();
    let sidecar = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(sidecar.name, "weir-sidecar");
    assert_eq!(
        sidecar.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );
    let args = sidecar.args.clone().unwrap();
    assert!(
        args.contains(&"--inbound=15100=8080,strict".to_string()),
        "{args:?}"
    );
    assert!(args.contains(&"--allow=spiffe://cluster.local/ns/shop/*".to_string()));
    // Outbound calls go to the fleet's mesh listener, which must prove the fleet's identity.
    assert!(
        args.contains(&"--upstream=weir-gateway-internal.weir-system:15443".to_string())
            && args.contains(
                &"--upstream-id=spiffe://cluster.local/ns/weir-system/sa/weir-gateway".to_string()
            ),
        "{args:?}"
    );
    let (inbound_only, _, _) = inject(INPUT, &["--fleet", "none"]);
    assert!(!inbound_only.contains("--upstream"), "{inbound_only}");
    // The Service's targetPort `http` now names the sidecar's port; the app's moved aside.
    let http = sidecar
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .unwrap();
    assert_eq!(http.container_port, 15100);
    let app = &pod.containers[0];
    let names: Vec<_> = app.ports.iter().flatten().map(|p| p.name.clone()).collect();
    assert_eq!(names, [Some("http-app".to_string()), None]);
    assert_eq!(
        app.env.as_ref().unwrap()[0].value.as_deref(),
        Some("http://127.0.0.1:15001")
    );
    let volume = &pod.volumes.as_ref().unwrap()[0];
    assert_eq!(
        volume.csi.as_ref().unwrap().driver,
        "spiffe.csi.cert-manager.io"
    );
    // The unnamed port cannot be rewired, and the user is told.
    assert!(warnings.contains("port 9090 has no name"), "{warnings}");
    // Other documents pass through.
    assert_eq!(svc.metadata.name.as_deref(), Some("payments"));

    // The kubelet's probe follows the app's port to its new name.
    let probe = app
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        probe.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http-app".into())
    );
    // The namespace's policies, for the Services that select the pod's labels.
    assert!(
        args.contains(&"--authz-file=/var/run/weir/authz/policies.json".to_string())
            && args.contains(&"--workload-labels=app=payments".to_string()),
        "{args:?}"
    );
    let authz = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "weir-authz")
        .unwrap();
    let cm = authz.config_map.as_ref().unwrap();
    assert_eq!((cm.name.as_str(), cm.optional), ("weir-authz", Some(true)));

    // Other pods may reach the sidecar's ports, and the port it could not take over; not
    // the app's own port 8080, which would skip the sidecar.
    let policies: Vec<NetworkPolicy> = of_kind(&out, "NetworkPolicy");
    assert_eq!(policies.len(), 1);
    let spec = policies[0].spec.as_ref().unwrap();
    assert_eq!(
        spec.pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["app"],
        "payments"
    );
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_string()][..])
    );
    let ingress = spec.ingress.as_ref().unwrap();
    assert_eq!(ingress.len(), 1);
    assert!(
        ingress[0].from.is_none(),
        "from any pod, on these ports only"
    );
    let mut ports: Vec<String> = ingress[0]
        .ports
        .iter()
        .flatten()
        .map(|p| format!("{:?}", p.port.as_ref().unwrap()))
        .collect();
    ports.sort();
    assert_eq!(ports, ["Int(15020)", "Int(15100)", "Int(9090)"]);
    assert!(warnings.contains("stays open to other pods"), "{warnings}");
    let (without, _, _) = inject(INPUT, &["--no-network-policy"]);
    assert!(of_kind::<NetworkPolicy>(&without, "NetworkPolicy").is_empty());

    // Injecting the output again changes nothing.
    let (again, _, ok) = inject(&out, &["--http-proxy"]);
    assert!(ok);
    assert_eq!(again, out);
}

#[test]
fn a_bad_mode_is_refused() {
    let (_, err, ok) = inject(INPUT, &["--mode", "lenient"]);
    assert!(!ok);
    assert!(err.contains("--mode must be strict or permissive"), "{err}");
}

/// The sidecars' PodMonitor (deploy/dashboards) scrapes the admin port by the name
/// `inject` gives it, so the mesh and sidecar dashboards have data.
#[test]
fn the_sidecar_podmonitor_scrapes_the_port_inject_names() {
    let (out, err, ok) = inject(INPUT, &[]);
    assert!(ok, "{err}");
    let (deployment, _) = docs(&out);
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let sidecar = pod
        .init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .find(|c| c.name == "weir-sidecar")
        .expect("the sidecar container");
    let admin = sidecar
        .ports
        .iter()
        .flatten()
        .find(|p| p.container_port == 15020)
        .and_then(|p| p.name.clone())
        .expect("a named admin port");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/dashboards/podmonitor.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let monitors: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let sidecars = monitors
        .iter()
        .find(|m| m["metadata"]["name"] == "weir-sidecars")
        .expect("a PodMonitor for the sidecars");
    assert_eq!(
        sidecars["spec"]["podMetricsEndpoints"][0]["port"],
        admin.as_str()
    );
    assert_eq!(sidecars["spec"]["namespaceSelector"]["any"], true);
}
