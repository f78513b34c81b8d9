//! `weir-controller check` and `render`, run as a real process.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir-controller"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("weir-controller runs")
}

/// A copy of `deploy/examples` with what is made at install time, never committed: the
/// Secret `script/demo` makes at start-up, the edge example's certificate, and the mesh CA
/// bundle and fleet SVID (the README's commands).
fn examples() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("deploy/examples"), dir.path());
    let hosts = ["example.com".to_string(), "*.example.com".to_string()];
    let (cert, key) = weir_controller::cli::certs::self_signed(&hosts, 1).unwrap();
    std::fs::write(
        dir.path().join("edge/certificate.generated.yaml"),
        weir_controller::cli::certs::secret_yaml("example-com-tls", "edge", &cert, &key),
    )
    .unwrap();
    let ca = weir_controller::cli::ca::Ca::init("cluster.local", 1).unwrap();
    let svid = ca.issue("weir-system", "weir-gateway", 1).unwrap();
    std::fs::write(
        dir.path().join("internal/mesh-identity.generated.yaml"),
        svid.manifests(&ca, "weir-system", "weir-gateway-svid", "weir-mesh-ca"),
    )
    .unwrap();
    let (cert, key) = weir_controller::cli::certs::self_signed(&["*.localhost".into()], 1).unwrap();
    std::fs::write(
        dir.path().join("quickstart/tls.generated.yaml"),
        weir_controller::cli::certs::secret_yaml("quickstart-tls", "quickstart", &cert, &key),
    )
    .unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else if !entry
            .file_name()
            .to_string_lossy()
            .ends_with(".generated.yaml")
        {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn examples_are_accepted_everywhere() {
    let dir = examples();
    let examples = dir.path();
    let out = run(&["check", examples.to_str().unwrap(), "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rows.len() >= 4, "{rows:?}");
    for row in &rows {
        for key in ["apiVersion", "kind", "name", "status"] {
            assert!(row.get(key).is_some(), "{key} missing in {row}");
        }
        let accepted = |conds: &Value| {
            conds
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Accepted" && c["status"] == "True")
        };
        let all_true = |conds: &Value| {
            conds.as_array().unwrap().iter().all(|c| {
                let good = if c["type"] == "Conflicted" {
                    "False"
                } else {
                    "True"
                };
                c["status"] == good
            })
        };
        match row["kind"].as_str().unwrap() {
            "GatewayClass" => assert!(accepted(&row["status"]["conditions"]), "{row}"),
            // Accepted and Enforced (a Shadow policy would read Enforced=False).
            "RateLimitPolicy" | "AuthorizationPolicy" => {
                assert!(all_true(&row["status"]["conditions"]), "{row}")
            }
            "BackendTLSPolicy" => {
                for a in row["status"]["ancestors"].as_array().unwrap() {
                    assert!(all_true(&a["conditions"]), "{row}");
                }
            }
            "Gateway" => {
                assert!(all_true(&row["status"]["conditions"]), "{row}");
                for l in row["status"]["listeners"].as_array().unwrap() {
                    assert!(all_true(&l["conditions"]), "listener in {row}");
                }
            }
            _ => {
                for p in row["status"]["parents"].as_array().unwrap() {
                    assert!(all_true(&p["conditions"]), "{row}");
                }
            }
        }
    }
    let text = run(&["check", examples.to_str().unwrap()]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("Gateway edge/edge: Accepted, Programmed"),
        "{text}"
    );
}

#[test]
fn a_refused_route_makes_check_fail_and_says_why() {
    let fixture = repo().join("controller/tests/fixtures/route-hostname-intersection.yaml");
    let out = run(&["check", fixture.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("HTTPRoute default/apex -> Gateway default/gw: Accepted=False (NoMatchingListenerHostname:"),
        "{text}"
    );
}

/// A `weir.dev/*` annotation typo is shown, but the route is served, so `check` passes.
#[test]
fn an_ignored_annotation_is_shown_without_failing_check() {
    let fixture = repo().join("controller/tests/fixtures/split-key.yaml");
    let out = run(&["check", fixture.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("HTTPRoute default/typo -> Gateway default/gw: Accepted, ResolvedRefs, weir.dev/AnnotationsIgnored=True (InvalidAnnotation: weir.dev/split-key \"query:user\": \"query\" is not header or cookie"),
        "{text}"
    );
    assert!(
        text.contains(
            "HTTPRoute default/by-header -> Gateway default/gw: Accepted, ResolvedRefs\n"
        ),
        "{text}"
    );
}

#[test]
fn unreadable_manifests_exit_2_naming_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  gatewayClassName: weir\n  listeners: [{name: http, port: \"eighty\", protocol: HTTP}]\n",
    )
    .unwrap();
    let out = run(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("gw.yaml document 2"), "{err}");
    assert!(err.contains("spec.listeners[0].port"), "{err}");
}

#[test]
fn render_prints_the_ir_without_private_keys() {
    let dir = examples();
    let out = run(&["render", dir.path().to_str().unwrap(), "-o", "json"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("PRIVATE KEY"), "a private key leaked");
    let config: weir_model::Config = serde_json::from_str(&text).unwrap();
    let https = config.listeners.iter().find(|l| l.name == "https").unwrap();
    assert_eq!(
        https.tls.as_ref().unwrap().certificates[0].key_pem,
        "<redacted>"
    );
}

#[test]
fn render_summarises_listeners_routes_and_backends() {
    let dir = examples();
    let out = run(&["render", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("HTTPS :443 edge/edge listener https (*.example.com)"),
        "{text}"
    );
    assert!(
        text.contains("  www.example.com /* -> HTTPRoute/shop/storefront/0"),
        "{text}"
    );
    assert!(
        text.contains("rule HTTPRoute/edge/https-redirect/0: filters [RequestRedirect]"),
        "{text}"
    );
}

/// `crds/` holds what `weir-controller crds` prints; regenerate it with
/// `cargo run -p weir-controller -- crds > crds/weir.dev.yaml` after changing the types.
#[test]
fn crds_directory_is_up_to_date() {
    let out = run(&["crds"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(repo().join("crds/weir.dev.yaml")).unwrap();
    assert!(
        committed == String::from_utf8(out.stdout).unwrap(),
        "crds/weir.dev.yaml is stale: run `cargo run -p weir-controller -- crds > crds/weir.dev.yaml`"
    );
}

#[test]
fn a_policy_past_its_review_date_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("controller/tests/fixtures/ratelimit-policies.yaml"),
        dir.path().join("base.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("old.yaml"),
        "apiVersion: weir.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: stale}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: blog}]\n  owner: {team: payments, contact: '#payments-oncall', reviewBy: '2020-01-01'}\n  limits: [{name: l, requests: 5, window: 1s}]\n",
    )
    .unwrap();
    let out = run(&["check", dir.path().to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("RateLimitPolicy default/stale: Accepted, Enforced, ReviewDue=True (ReviewDateExpired: owner payments (#payments-oncall) was to review this policy by 2020-01-01)"),
        "{text}"
    );
    // The gateway's policy, due in 2099, has no such condition.
    assert!(
        text.contains("RateLimitPolicy default/on-gateway: Accepted, Enforced\n"),
        "{text}"
    );
}
