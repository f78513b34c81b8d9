//! `weir-controller inject`: adds the mini sidecar to Deployments, as `linkerd inject` does,
//! without iptables: the sidecar takes over each named container port, so Services that
//! target ports by name reach the sidecar's mTLS listener, which forwards to the app.
//!
//! Without iptables nothing stops another pod from dialling the app's own port, skipping
//! the sidecar and whatever `x-weir-caller-identity` it would have written. So each
//! Deployment also gets a NetworkPolicy that admits, from other pods, only the sidecar's
//! ports (and ports the sidecar could not take over, with a warning). The kubelet's probes
//! are not affected: traffic from a pod's own node is always allowed, whatever the policy,
//! so probes naming a moved port are pointed at the app's new port name.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    CSIVolumeSource, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
    HTTPGetAction, PodSpec, Probe, ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The sidecar's container name; an existing one is replaced, so injecting twice is a no-op.
pub const CONTAINER: &str = "weir-sidecar";
const VOLUME: &str = "weir-identity";
const IDENTITY_DIR: &str = "/var/run/weir/identity";
/// The namespace's `weir-authz` ConfigMap (written by `weir-controller run`), optional.
const AUTHZ_VOLUME: &str = "weir-authz";
const AUTHZ_DIR: &str = "/var/run/weir/authz";
/// Marks the NetworkPolicy inject made for a Deployment, so that injecting again replaces it.
const INJECTED_FOR: &str = "weir.dev/injected-for";
/// Sidecar inbound ports are allocated from here, one per app port taken over.
const FIRST_PORT: i32 = 15100;
const ADMIN_PORT: i32 = 15020;
/// The outbound listener the app's `HTTP_PROXY` points at.
pub const OUTBOUND: &str = "http://127.0.0.1:15001";

#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    /// `strict` or `permissive`.
    pub mode: String,
    /// SPIFFE IDs (or `prefix*`) allowed to call the workload.
    pub allow: Vec<String>,
    /// Peers trusted to set the caller-identity header (the gateway fleet).
    pub identity_setter: String,
    /// Also point the app's `HTTP_PROXY` at the sidecar's outbound listener.
    pub http_proxy: bool,
    /// The fleet's mesh listener (`host:port`) that outbound calls go to over mTLS; its
    /// SPIFFE ID must be `identity_setter`. `None` leaves the sidecar inbound-only.
    pub fleet: Option<String>,
    /// The OTLP/HTTP collector the sidecar exports its request spans to, if any.
    pub otlp_endpoint: Option<String>,
    /// Emit a NetworkPolicy per Deployment that closes the app's own ports to other pods.
    pub network_policy: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {doc}: {source}")]
    Yaml {
        doc: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("--mode must be strict or permissive, not {0:?}")]
    Mode(String),
}

/// Injects every Deployment in a multi-document YAML stream; other documents pass through.
/// Returns the YAML and warnings for ports that cannot be taken over.
pub fn inject(input: &str, opts: &Options) -> Result<(String, Vec<String>), InjectError> {
    if opts.mode != "strict" && opts.mode != "permissive" {
        return Err(InjectError::Mode(opts.mode.clone()));
    }
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let yaml = |source| InjectError::Yaml { doc: i + 1, source };
        let value = serde_yaml::Value::deserialize(doc).map_err(yaml)?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str());
        let ours = value
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(|l| l.get(INJECTED_FOR))
            .is_some();
        if kind == Some("NetworkPolicy") && ours {
            // Made by an earlier injection: made again below, from the Deployment as it is.
            continue;
        }
        if kind != Some("Deployment") {
            out.push(serde_yaml::to_string(&value).map_err(yaml)?);
            continue;
        }
        let mut d: Deployment = serde_yaml::from_value(value).map_err(yaml)?;
        let name = d.metadata.name.clone().unwrap_or_default();
        let mut open = None;
        if let Some(spec) = d.spec.as_mut() {
            let labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone());
            if let Some(pod) = spec.template.spec.as_mut() {
                let injected = inject_pod(pod, &labels.unwrap_or_default(), opts);
                warnings.extend(
                    injected
                        .warnings
                        .iter()
                        .map(|w| format!("Deployment {name}: {w}")),
                );
                open = Some(injected.open_ports);
            }
        }
        out.push(serde_yaml::to_string(&d).map_err(yaml)?);
        if let (true, Some(ports)) = (opts.network_policy, open) {
            let policy = network_policy(&d, &ports);
            out.push(serde_yaml::to_string(&policy).map_err(yaml)?);
        }
    }
    Ok((out.join("---\n"), warnings))
}

/// What injecting a pod did.
struct Injected {
    warnings: Vec<String>,
    /// The ports other pods may reach: the sidecar's, and app ports it could not take over.
    open_ports: Vec<i32>,
}

/// A NetworkPolicy for the Deployment's pods admitting only `ports` from other pods.
fn network_policy(d: &Deployment, ports: &[i32]) -> NetworkPolicy {
    let name = d.metadata.name.clone().unwrap_or_default();
    let selector = d
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(format!("weir-sidecar-{name}")),
            namespace: d.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([(INJECTED_FOR.to_string(), name)])),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(
                    ports
                        .iter()
                        .map(|p| NetworkPolicyPort {
                            port: Some(IntOrString::Int(*p)),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                from: None,
            }]),
            ..Default::default()
        }),
    }
}

fn inject_pod(pod: &mut PodSpec, labels: &BTreeMap<String, String>, opts: &Options) -> Injected {
    let mut warnings = Vec::new();
    let mut open_ports = Vec::new();
    // Port names the sidecar took over, and the app's new names for them, for probes.
    let mut moved: BTreeMap<String, String> = BTreeMap::new();
    // Undo an earlier injection first: ports return to their names, then are taken again.
    let init = pod.init_containers.get_or_insert_with(Vec::new);
    let injected_before = init.iter().any(|c| c.name == CONTAINER);
    init.retain(|c| c.name != CONTAINER);
    let mut sidecar_ports = Vec::new();
    let mut inbound = Vec::new();
    for c in &mut pod.containers {
        for p in c.ports.iter_mut().flatten() {
            if let Some(original) = p.name.as_ref().and_then(|n| n.strip_suffix("-app"))
                && injected_before
            {
                p.name = Some(original.to_string());
            }
            if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let Some(name) = p.name.clone() else {
                warnings.push(format!(
                    "container {} port {} has no name, so Services cannot be moved to the sidecar, and it stays open to other pods; name it",
                    c.name, p.container_port
                ));
                open_ports.push(p.container_port);
                continue;
            };
            let port = FIRST_PORT + sidecar_ports.len() as i32;
            inbound.push(format!(
                "--inbound={port}={},{}",
                p.container_port, opts.mode
            ));
            sidecar_ports.push(ContainerPort {
                name: Some(name.clone()),
                container_port: port,
                protocol: Some("TCP".into()),
                ..Default::default()
            });
            // Port names are at most 15 characters.
            let renamed: String = name.chars().take(11).collect();
            p.name = Some(format!("{renamed}-app"));
            moved.insert(name, format!("{renamed}-app"));
        }
        if opts.http_proxy {
            let env = c.env.get_or_insert_with(Vec::new);
            env.retain(|e| e.name != "HTTP_PROXY");
            env.push(EnvVar {
                name: "HTTP_PROXY".into(),
                value: Some(OUTBOUND.into()),
                ..Default::default()
            });
        }
    }
    // A probe naming a moved port keeps probing the app, by its new name (the sidecar's
    // port under the old name may be strict mTLS, which the kubelet does not speak).
    for c in &mut pod.containers {
        for probe in [
            &mut c.liveness_probe,
            &mut c.readiness_probe,
            &mut c.startup_probe,
        ]
        .into_iter()
        .flatten()
        {
            let port = probe
                .http_get
                .as_mut()
                .map(|h| &mut h.port)
                .or(probe.tcp_socket.as_mut().map(|t| &mut t.port));
            if let Some(IntOrString::String(name)) = port {
                let original = name.strip_suffix("-app").filter(|_| injected_before);
                let original = original.map(str::to_owned).unwrap_or_else(|| name.clone());
                if let Some(new) = moved.get(&original) {
                    *name = new.clone();
                }
            }
        }
    }
    sidecar_ports.push(ContainerPort {
        name: Some("weir-admin".into()),
        container_port: ADMIN_PORT,
        ..Default::default()
    });
    open_ports.extend(sidecar_ports.iter().map(|p| p.container_port));
    let mut args = vec![
        format!("--identity-dir={IDENTITY_DIR}"),
        format!("--admin=0.0.0.0:{ADMIN_PORT}"),
    ];
    args.extend(inbound);
    args.extend(opts.allow.iter().map(|a| format!("--allow={a}")));
    args.push(format!("--identity-setter={}", opts.identity_setter));
    if let Some(fleet) = &opts.fleet {
        args.push(format!("--upstream={fleet}"));
        args.push(format!("--upstream-id={}", opts.identity_setter));
    }
    if let Some(endpoint) = &opts.otlp_endpoint {
        args.push(format!("--otlp-endpoint={endpoint}"));
    }
    // The AuthorizationPolicies of the Services that select these labels.
    args.push(format!("--authz-file={AUTHZ_DIR}/policies.json"));
    if !labels.is_empty() {
        let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        args.push(format!("--workload-labels={}", pairs.join(",")));
    }
    let quantity = |q: &str| Quantity(q.into());
    // A native sidecar (an init container that keeps running): it is up before the app
    // starts and outlives it at shutdown, so neither side sees the other missing.
    init.push(Container {
        name: CONTAINER.into(),
        image: Some(opts.image.clone()),
        command: Some(vec!["weir-sidecar".into()]),
        args: Some(args),
        restart_policy: Some("Always".into()),
        ports: Some(sidecar_ports),
        volume_mounts: Some(vec![
            VolumeMount {
                name: VOLUME.into(),
                mount_path: IDENTITY_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: AUTHZ_VOLUME.into(),
                mount_path: AUTHZ_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(ADMIN_PORT),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity("10m")),
                ("memory".into(), quantity("16Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), quantity("64Mi"))])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != VOLUME && v.name != AUTHZ_VOLUME);
    // cert-manager's csi-driver-spiffe writes tls.crt, tls.key and ca.crt for the pod's
    // ServiceAccount and renews them in place; the sidecar reloads them.
    volumes.push(Volume {
        name: VOLUME.into(),
        csi: Some(CSIVolumeSource {
            driver: "spiffe.csi.cert-manager.io".into(),
            read_only: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    // Optional: a namespace without policies has no ConfigMap, and its sidecars none.
    volumes.push(Volume {
        name: AUTHZ_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: "weir-authz".into(),
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    Injected {
        warnings,
        open_ports,
    }
}
