//! YAML fixtures: each file under `tests/fixtures/` holds Kubernetes manifests and one
//! `kind: Expect` document with what translation must produce, for the IR (`config`) and
//! for the status (`status`). See `tests/fixtures/README.md` for the format.
//!
//! The manifests are read by the real file source, so the same file can be fed to
//! `weir-controller check`; the Expect document is an unknown kind there and is ignored.

use serde_json::Value;
use std::path::{Path, PathBuf};
use weir_controller::source::files;
use weir_controller::translate;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The Expect document of a fixture.
fn expectation(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    let mut found = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v.get("kind").and_then(Value::as_str) == Some("Expect") {
            found.push(v);
        }
    }
    assert_eq!(
        found.len(),
        1,
        "{}: exactly one Expect document",
        path.display()
    );
    found.pop().unwrap()
}

/// `expected` must be contained in `actual`: objects by key, arrays element-wise with equal
/// length, scalars equal. A `conditions` object `{Type: "Status/Reason"}` is compared with a
/// condition list by type (`{Type: null}`: no such condition). Returns the first difference.
fn contained(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let here = format!("{path}.{k}");
                match (k.as_str(), ev, a.get(k)) {
                    ("conditions", Value::Object(want), Some(Value::Array(conds))) => {
                        for (t, spec) in want {
                            if spec.is_null() {
                                if let Some(c) = conds.iter().find(|c| c["type"] == t.as_str()) {
                                    return Err(format!("{here}.{t}: want none, got {c}"));
                                }
                                continue;
                            }
                            let c = conds
                                .iter()
                                .find(|c| c["type"] == t.as_str())
                                .ok_or_else(|| format!("{here}: no {t} condition in {conds:?}"))?;
                            let got = format!(
                                "{}/{}",
                                c["status"].as_str().unwrap(),
                                c["reason"].as_str().unwrap()
                            );
                            let spec = spec.as_str().unwrap();
                            let ok = if spec.contains('/') {
                                got == spec
                            } else {
                                got.starts_with(&format!("{spec}/"))
                            };
                            if !ok {
                                return Err(format!(
                                    "{here}.{t}: want {spec}, got {got} ({})",
                                    c["message"]
                                ));
                            }
                        }
                    }
                    (_, Value::Null, None) => {}
                    (_, ev, Some(av)) => contained(ev, av, &here)?,
                    (_, _, None) => return Err(format!("{here}: missing in {}", actual)),
                }
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Err(format!(
                    "{path}: want {} items, got {}: {}",
                    e.len(),
                    a.len(),
                    actual
                ));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                contained(ev, av, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (e, a) if e == a => Ok(()),
        (e, a) => Err(format!("{path}: want {e}, got {a}")),
    }
}

/// Checks that hold for every fixture, whatever it is about.
fn invariants(
    path: &Path,
    snapshot: &weir_controller::source::Snapshot,
    config: &weir_model::Config,
    status: &[weir_controller::cli::check::ObjectStatus],
) {
    let name = path.display();
    // Every condition carries the generation of its object.
    for row in status {
        let generation = generation_of(snapshot, row.kind, row.namespace.as_deref(), &row.name);
        let mut conds = Vec::new();
        collect_conditions(&row.status, &mut conds);
        assert!(
            !conds.is_empty(),
            "{name}: {} {} has no conditions",
            row.kind,
            row.name
        );
        for c in conds {
            assert_eq!(
                c["observedGeneration"], generation,
                "{name}: {} {}: {c}",
                row.kind, row.name
            );
        }
    }
    // Every reference inside the IR resolves.
    for l in &config.listeners {
        for h in &l.hosts {
            for e in &h.routes {
                assert!(
                    config.rules.contains_key(&e.rule),
                    "{name}: dangling {}",
                    e.rule
                );
            }
        }
    }
    for rule in config.rules.values() {
        for b in &rule.backends {
            if let weir_model::BackendRef::Service(k) = &b.backend {
                assert!(
                    config.backends.contains_key(k),
                    "{name}: dangling backend {k}"
                );
            }
        }
    }
}

fn generation_of(
    s: &weir_controller::source::Snapshot,
    kind: &str,
    ns: Option<&str>,
    name: &str,
) -> i64 {
    let m = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.name.as_deref() == Some(name) && meta.namespace.as_deref() == ns
    };
    let g = match kind {
        "GatewayClass" => s
            .gateway_classes
            .iter()
            .find(|o| m(&o.metadata))
            .and_then(|o| o.metadata.generation),
        "Gateway" => s
            .gateways
            .iter()
            .find(|o| m(&o.metadata))
            .and_then(|o| o.metadata.generation),
        "HTTPRoute" => s
            .http_routes
            .iter()
            .find(|o| m(&o.metadata))
            .and_then(|o| o.metadata.generation),
        "GRPCRoute" => s
            .grpc_routes
            .iter()
            .find(|o| m(&o.metadata))
            .and_then(|o| o.metadata.generation),
        "RateLimitPolicy" => s
            .rate_limit_policies
            .iter()
            .find(|o| m(&o.metadata))
            .and_then(|o| o.metadata.generation),
        "AuthorizationPolicy" => s
            .authorization_policies
            .iter()
            .find(|o| m(&o.metadata))
            .and_then(|o| o.metadata.generation),
        "BackendTLSPolicy" => s
            .backend_tls_policies
            .iter()
            .find(|o| m(&o.metadata))
            .and_then(|o| o.metadata.generation),
        other => panic!("unexpected kind {other}"),
    };
    g.unwrap_or(1)
}

fn collect_conditions<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "conditions" {
                    out.extend(v.as_array().into_iter().flatten());
                } else {
                    collect_conditions(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_conditions(v, out)),
        _ => {}
    }
}

fn run_fixture(path: &Path) -> Result<(), String> {
    let expect = expectation(path);
    let loaded = files::load(path).map_err(|e| e.to_string())?;
    let (config, mut report) = translate(&loaded.snapshot);
    report.stamp(jiff::Timestamp::UNIX_EPOCH);
    let rows = weir_controller::cli::check::rows(&report);
    invariants(path, &loaded.snapshot, &config, &rows);

    if expect.get("config").is_none() || expect.get("status").is_none() {
        return Err("the Expect document must assert on both `config` and `status`".into());
    }
    let config_json = serde_json::to_value(&config).unwrap();
    contained(&expect["config"], &config_json, "config")?;

    for want in expect["status"].as_array().ok_or("status must be a list")? {
        let kind = want["kind"].as_str().ok_or("status entry needs kind")?;
        let name = want["name"].as_str().ok_or("status entry needs name")?;
        let ns = match kind {
            "GatewayClass" => None,
            _ => Some(
                want.get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("default"),
            ),
        };
        let row = rows
            .iter()
            .find(|r| r.kind == kind && r.name == name && r.namespace.as_deref() == ns);
        let label = format!(
            "{kind} {}{name}",
            ns.map(|n| format!("{n}/")).unwrap_or_default()
        );
        match (
            want.get("absent").and_then(Value::as_bool).unwrap_or(false),
            row,
        ) {
            (true, None) => {}
            (true, Some(r)) => {
                return Err(format!("{label}: expected no status, got {}", r.status));
            }
            (false, None) => return Err(format!("{label}: no status written")),
            (false, Some(r)) => contained(&want["status"], &r.status, &label)?,
        }
    }
    if let Some(unattached) = expect.get("unattached") {
        let got: Vec<String> = report
            .unattached_routes
            .keys()
            .map(|(k, id)| format!("{k} {id}"))
            .collect();
        let want: Vec<String> =
            serde_json::from_value(unattached.clone()).map_err(|e| e.to_string())?;
        if got != want {
            return Err(format!("unattached: want {want:?}, got {got:?}"));
        }
    }
    if let Some(all) = expect.get("allAccepted").and_then(Value::as_bool)
        && weir_controller::cli::check::all_accepted(&report) != all
    {
        return Err(format!("allAccepted: want {all}"));
    }
    Ok(())
}

#[test]
fn fixtures() {
    let files = fixture_files();
    assert!(files.len() >= 30, "fixtures went missing: {}", files.len());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            run_fixture(f)
                .err()
                .map(|e| format!("{}: {e}", f.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The harness itself must be able to fail: a wrong expectation is reported.
#[test]
fn containment_reports_differences() {
    let actual = serde_json::json!({"a": [1, {"b": 2, "c": 3}], "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}]});
    assert!(contained(&serde_json::json!({"a": [1, {"b": 2}]}), &actual, "").is_ok());
    assert!(contained(&serde_json::json!({"a": [1]}), &actual, "").is_err());
    assert!(contained(&serde_json::json!({"a": [1, {"b": 9}]}), &actual, "").is_err());
    assert!(
        contained(
            &serde_json::json!({"conditions": {"Accepted": "True/Accepted"}}),
            &actual,
            ""
        )
        .is_ok()
    );
    assert!(
        contained(
            &serde_json::json!({"conditions": {"Accepted": "True"}}),
            &actual,
            ""
        )
        .is_ok()
    );
    assert!(
        contained(
            &serde_json::json!({"conditions": {"Accepted": "False"}}),
            &actual,
            ""
        )
        .is_err()
    );
    assert!(
        contained(
            &serde_json::json!({"conditions": {"Programmed": "True"}}),
            &actual,
            ""
        )
        .is_err()
    );
    assert!(
        contained(
            &serde_json::json!({"conditions": {"Programmed": null}}),
            &actual,
            ""
        )
        .is_ok()
    );
    assert!(
        contained(
            &serde_json::json!({"conditions": {"Accepted": null}}),
            &actual,
            ""
        )
        .is_err()
    );
    assert!(contained(&serde_json::json!({"missing": 1}), &actual, "").is_err());
}
