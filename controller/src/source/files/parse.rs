//! Reading manifests into a [`Snapshot`].

use super::walk::{MAX_TOTAL_BYTES, Walk, read};
use crate::source::Snapshot;
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// The result of a successful load.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub snapshot: Snapshot,
    /// `apiVersion kind` of documents Weir does not read, with their count. Deployments and
    /// Roles often sit beside the Gateway API objects; they are not errors.
    pub ignored_kinds: BTreeMap<String, usize>,
    /// Files read, in the order they were read.
    pub files: Vec<PathBuf>,
}

/// Why a load was rejected. It lists every problem, not just the first, so that one edit can
/// fix them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{n} problem{} in manifests",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// One problem, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based document number within the file, when the problem is inside one.
    pub document: Option<usize>,
    /// `Kind namespace/name` of the object, when it could be read.
    pub object: Option<String>,
    /// Dotted path of the offending field (`spec.listeners[0].port`), when known.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(d) = self.document {
            write!(f, " document {d}")?;
        }
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        if let Some(field) = &self.field {
            write!(f, " field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Loads `path`: one file, or every `.yaml`, `.yml` and `.json` file below a directory, in
/// sorted order (see [`Walk`] for what is followed and skipped, and the size limits).
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let Walk {
        files,
        mut problems,
        ..
    } = Walk::new(path);
    let mut loader = Loader::default();
    let mut budget = MAX_TOTAL_BYTES;
    for file in &files {
        match read(file, &mut budget) {
            Ok(text) => loader.parse_file(file, &text),
            Err(message) => problems.push(file_problem(file, message)),
        }
    }
    problems.append(&mut loader.problems);
    if !problems.is_empty() {
        return Err(LoadError { problems });
    }
    Ok(Loaded {
        snapshot: loader.snapshot,
        ignored_kinds: loader.ignored,
        files,
    })
}

/// Parses manifests held in memory; `origin` names them in errors.
pub fn parse_str(origin: &Path, text: &str) -> Result<Loaded, LoadError> {
    let mut loader = Loader::default();
    loader.parse_file(origin, text);
    if !loader.problems.is_empty() {
        return Err(LoadError {
            problems: loader.problems,
        });
    }
    Ok(Loaded {
        snapshot: loader.snapshot,
        ignored_kinds: loader.ignored,
        files: vec![origin.to_path_buf()],
    })
}

pub(super) fn file_problem(file: &Path, message: String) -> Problem {
    Problem {
        file: file.to_path_buf(),
        document: None,
        object: None,
        field: None,
        message,
    }
}

pub(crate) fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

#[derive(Default)]
struct Loader {
    snapshot: Snapshot,
    ignored: BTreeMap<String, usize>,
    problems: Vec<Problem>,
    /// `Kind/namespace/name` → where it was first defined, to reject duplicates: with two
    /// definitions the result would depend on file order.
    seen: BTreeMap<String, (PathBuf, usize)>,
}

/// A document being parsed, for locating problems.
struct Doc<'a> {
    file: &'a Path,
    index: usize,
}

impl Loader {
    fn parse_file(&mut self, file: &Path, text: &str) {
        for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let doc = Doc { file, index: i + 1 };
            match <Value as serde::Deserialize>::deserialize(de) {
                Ok(Value::Null) => {}
                Ok(value) => self.add_value(&doc, value),
                Err(e) => {
                    self.problem(&doc, None, None, format!("invalid YAML: {e}"));
                    // After a syntax error the stream cannot be resynchronised.
                    break;
                }
            }
        }
    }

    fn problem(
        &mut self,
        doc: &Doc<'_>,
        object: Option<String>,
        field: Option<String>,
        message: String,
    ) {
        self.problems.push(Problem {
            file: doc.file.to_path_buf(),
            document: Some(doc.index),
            object,
            field,
            message,
        });
    }

    fn add_value(&mut self, doc: &Doc<'_>, value: Value) {
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        if api_version.is_empty() || kind.is_empty() {
            self.problem(
                doc,
                None,
                None,
                "not a Kubernetes object: `apiVersion` and `kind` are required".into(),
            );
            return;
        }
        let (group, _version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let kind = kind.to_string();
        let api_version = api_version.to_string();
        const GATEWAY: &str = "gateway.networking.k8s.io";
        let s = &mut self.snapshot;
        // Gateway API objects are read whatever their version (v1, v1beta1, v1alpha2): the
        // schemas are the same for the fields that versions share.
        let ok = match (group, kind.as_str()) {
            (GATEWAY, "GatewayClass") => {
                typed(doc, &value, &mut self.problems).map(|o| push(&mut s.gateway_classes, o))
            }
            (GATEWAY, "Gateway") => {
                typed(doc, &value, &mut self.problems).map(|o| push(&mut s.gateways, o))
            }
            (GATEWAY, "HTTPRoute") => {
                typed(doc, &value, &mut self.problems).map(|o| push(&mut s.http_routes, o))
            }
            (GATEWAY, "GRPCRoute") => {
                typed(doc, &value, &mut self.problems).map(|o| push(&mut s.grpc_routes, o))
            }
            (GATEWAY, "ReferenceGrant") => {
                typed(doc, &value, &mut self.problems).map(|o| push(&mut s.reference_grants, o))
            }
            ("", "Namespace") if api_version == "v1" => {
                typed(doc, &value, &mut self.problems).map(|o| push(&mut s.namespaces, o))
            }
            ("", "Service") if api_version == "v1" => {
                typed(doc, &value, &mut self.problems).map(|o| push(&mut s.services, o))
            }
            ("", "Secret") if api_version == "v1" => {
                typed(doc, &value, &mut self.problems).map(|o| push(&mut s.secrets, o))
            }
            ("", "ConfigMap") if api_version == "v1" => {
                typed(doc, &value, &mut self.problems).map(|o| push(&mut s.config_maps, o))
            }
            (GATEWAY, "BackendTLSPolicy") => {
                let list = &mut s.backend_tls_policies;
                typed(doc, &value, &mut self.problems).map(|o| push(list, o))
            }
            ("discovery.k8s.io", "EndpointSlice") => {
                typed(doc, &value, &mut self.problems).map(|o| push(&mut s.endpoint_slices, o))
            }
            ("weir.dev", "RateLimitPolicy") => {
                typed(doc, &value, &mut self.problems).map(|o| push(&mut s.rate_limit_policies, o))
            }
            ("weir.dev", "AuthorizationPolicy") => {
                let list = &mut s.authorization_policies;
                typed(doc, &value, &mut self.problems).map(|o| push(list, o))
            }
            ("", "List") if api_version == "v1" => {
                // `kubectl get -o yaml` output: read the items as documents of their own.
                if let Some(Value::Sequence(items)) = value.get("items") {
                    for item in items.clone() {
                        self.add_value(doc, item);
                    }
                }
                return;
            }
            _ => {
                *self
                    .ignored
                    .entry(format!("{api_version} {kind}"))
                    .or_default() += 1;
                return;
            }
        };
        if let Some(meta) = ok {
            self.check_unique(doc, &kind, meta);
        }
    }

    fn check_unique(&mut self, doc: &Doc<'_>, kind: &str, id: String) {
        let key = format!("{kind} {id}");
        if let Some((file, index)) = self.seen.get(&key) {
            let message = format!(
                "defined twice: first in {} document {index}",
                file.display()
            );
            self.problem(doc, Some(key), None, message);
        } else {
            self.seen.insert(key, (doc.file.to_path_buf(), doc.index));
        }
    }
}

/// Objects that carry `ObjectMeta`, so the loader can default the namespace as kubectl does.
trait Object: DeserializeOwned {
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    const NAMESPACED: bool = true;
}

macro_rules! object {
    ($($t:ty $(, cluster = $c:expr)?;)*) => {$(
        impl Object for $t {
            fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
            $(const NAMESPACED: bool = !$c;)?
        }
    )*};
}

object! {
    gateway_api::experimental::gatewayclasses::GatewayClass, cluster = true;
    gateway_api::experimental::gateways::Gateway;
    gateway_api::experimental::httproutes::HttpRoute;
    gateway_api::experimental::grpcroutes::GrpcRoute;
    gateway_api::experimental::referencegrants::ReferenceGrant;
    k8s_openapi::api::core::v1::Namespace, cluster = true;
    k8s_openapi::api::core::v1::Service;
    k8s_openapi::api::core::v1::Secret;
    k8s_openapi::api::core::v1::ConfigMap;
    k8s_openapi::api::discovery::v1::EndpointSlice;
    gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicy;
    crate::crd::RateLimitPolicy;
    crate::crd::AuthorizationPolicy;
}

/// Deserialises one document, defaults its namespace, and returns it with its
/// `namespace/name` id; a problem names the field that failed.
fn typed<T: Object>(
    doc: &Doc<'_>,
    value: &Value,
    problems: &mut Vec<Problem>,
) -> Option<(T, String)> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    let namespace = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str);
    let label = format!(
        "{kind} {}{}",
        namespace.map(|n| format!("{n}/")).unwrap_or_default(),
        name.unwrap_or("<unnamed>")
    );
    let mut obj: T = match serde_path_to_error::deserialize(value.clone()) {
        Ok(o) => o,
        Err(e) => {
            let path = e.path().to_string();
            problems.push(Problem {
                file: doc.file.to_path_buf(),
                document: Some(doc.index),
                object: Some(label),
                field: (path != ".").then_some(path),
                message: e.into_inner().to_string(),
            });
            return None;
        }
    };
    let meta = obj.meta_mut();
    let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
        problems.push(Problem {
            file: doc.file.to_path_buf(),
            document: Some(doc.index),
            object: Some(label),
            field: Some("metadata.name".into()),
            message: "is required".into(),
        });
        return None;
    };
    let id = if T::NAMESPACED {
        let ns = meta.namespace.get_or_insert_with(|| "default".into());
        format!("{ns}/{name}")
    } else {
        meta.namespace = None;
        name
    };
    Some((obj, id))
}

fn push<T>(list: &mut Vec<T>, (obj, id): (T, String)) -> String {
    list.push(obj);
    id
}

/// Kinds reported as ignored by earlier loads, so the log lists each one once.
#[derive(Debug, Default)]
pub(crate) struct IgnoredKinds(BTreeSet<String>);

impl IgnoredKinds {
    /// Returns the kinds in `loaded` not reported before.
    pub(crate) fn fresh<'a>(&mut self, loaded: &'a Loaded) -> Vec<&'a str> {
        loaded
            .ignored_kinds
            .keys()
            .filter(|k| self.0.insert((*k).clone()))
            .map(String::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, LoadError> {
        parse_str(Path::new("test.yaml"), text)
    }

    #[test]
    fn reads_every_known_kind_and_defaults_namespace() {
        let loaded = parse(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: weir}\nspec: {controllerName: weir.dev/gateway-controller}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  gatewayClassName: weir\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: apps}\nspec: {ports: [{port: 80}]}\n",
        )
        .unwrap();
        let s = &loaded.snapshot;
        assert_eq!(s.gateway_classes.len(), 1);
        assert_eq!(s.gateway_classes[0].metadata.namespace, None);
        assert_eq!(s.gateways[0].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(s.services[0].metadata.namespace.as_deref(), Some("apps"));
    }

    #[test]
    fn unknown_kinds_are_counted_not_errors() {
        let loaded = parse(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: b}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: c}\n",
        )
        .unwrap();
        assert!(loaded.snapshot.is_empty());
        assert_eq!(loaded.ignored_kinds.get("apps/v1 Deployment"), Some(&2));
        assert_eq!(loaded.ignored_kinds.get("v1 ServiceAccount"), Some(&1));
        let mut seen = IgnoredKinds::default();
        assert_eq!(seen.fresh(&loaded).len(), 2);
        assert!(seen.fresh(&loaded).is_empty(), "each kind is reported once");
    }

    #[test]
    fn backend_tls_policies_and_their_config_maps_are_read() {
        let loaded = parse(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: p}\nspec:\n  targetRefs: [{group: '', kind: Service, name: api}]\n  validation: {hostname: api.example.com, caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca, namespace: apps}\ndata: {ca.crt: PEM}\n",
        )
        .unwrap();
        let s = &loaded.snapshot;
        assert_eq!(s.backend_tls_policies.len(), 1);
        assert_eq!(
            s.backend_tls_policies[0].metadata.namespace.as_deref(),
            Some("default")
        );
        assert_eq!(s.config_maps[0].metadata.namespace.as_deref(), Some("apps"));
        assert!(loaded.ignored_kinds.is_empty());
    }

    #[test]
    fn a_bad_field_names_file_document_object_and_field() {
        let err = parse(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: edge}\nspec:\n  gatewayClassName: weir\n  listeners: [{name: http, port: eighty, protocol: HTTP}]\n",
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 1);
        let p = &err.problems[0];
        assert_eq!(p.document, Some(2));
        assert_eq!(p.object.as_deref(), Some("Gateway edge/gw"));
        assert_eq!(p.field.as_deref(), Some("spec.listeners[0].port"));
        let text = err.to_string();
        assert!(text.contains("test.yaml document 2"), "{text}");
    }

    #[test]
    fn broken_yaml_is_reported_with_its_document() {
        let err =
            parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [unclosed\n")
                .unwrap_err();
        assert_eq!(err.problems[0].document, Some(2));
        assert!(err.problems[0].message.starts_with("invalid YAML"));
    }

    #[test]
    fn duplicates_and_missing_names_are_rejected() {
        let err = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: default}\n---\napiVersion: v1\nkind: Service\nmetadata: {}\n",
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 2);
        assert!(err.problems[0].message.contains("defined twice"));
        assert_eq!(err.problems[1].field.as_deref(), Some("metadata.name"));
    }

    #[test]
    fn lists_are_expanded() {
        let loaded = parse(
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n",
        )
        .unwrap();
        assert_eq!(loaded.snapshot.namespaces.len(), 2);
    }

    #[test]
    fn directories_are_read_recursively_skipping_hidden_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::create_dir(dir.path().join(".hidden")).unwrap();
        let ns = |n: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n");
        std::fs::write(dir.path().join("a.yaml"), ns("a")).unwrap();
        std::fs::write(dir.path().join("sub/b.yml"), ns("b")).unwrap();
        std::fs::write(dir.path().join(".hidden/c.yaml"), ns("c")).unwrap();
        std::fs::write(dir.path().join("README.md"), "# not yaml: {").unwrap();
        let loaded = load(dir.path()).unwrap();
        let names: Vec<_> = loaded
            .snapshot
            .namespaces
            .iter()
            .map(|n| n.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let err = load(&dir.path().join("missing")).unwrap_err();
        assert!(err.problems[0].message.starts_with("cannot read"));
    }
}
