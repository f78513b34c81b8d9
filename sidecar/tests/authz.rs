//! AuthorizationPolicy at the sidecar, for calls that do not cross the fleet: the policies
//! `weir-controller sidecar-policies` writes for the namespace, read from `--authz-file`
//! by a real `weir-sidecar`, with real mTLS callers.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::client::{self, Proto};
use support::{Echo, Pki, Sidecar, eventually, free_port, id};
use weir_loadtest::procs;

const GATEWAY: (&str, &str) = ("weir-system", "gateway");

/// The Service `payments` (port 80 → the sidecar's inbound port) and its policies: only
/// checkout may call, on /api/ through port 80; and nobody from `dev`.
fn manifests(inbound: u16, also_allowed: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: payments, namespace: payments}}
spec:
  selector: {{app: payments}}
  ports: [{{name: http, port: 80, targetPort: {inbound}}}]
---
apiVersion: weir.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: callers, namespace: payments}}
spec:
  targetRefs: [{{kind: Service, name: payments}}]
  rules:
  - from: [{{principals: ["spiffe://weir.test/ns/shop/sa/checkout"{also_allowed}]}}]
    to: [{{ports: [80], paths: ["/api/*"]}}]
---
apiVersion: weir.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: no-dev, namespace: payments}}
spec:
  targetRefs: [{{kind: Namespace, name: payments}}]
  action: DENY
  rules: [{{from: [{{namespaces: [dev]}}]}}]
"#
    )
}

/// Writes `policies.json` for namespace `payments` with the real CLI, atomically.
fn write_policies(dir: &Path, manifests: &str) {
    let m = dir.join("manifests.yaml");
    std::fs::write(&m, manifests).unwrap();
    let out = Command::new(procs::controller_bin().unwrap())
        .args(["sidecar-policies", "--namespace", "payments"])
        .arg(&m)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp = dir.join(".policies.json.tmp");
    std::fs::write(&tmp, &out.stdout).unwrap();
    std::fs::rename(&tmp, dir.join("policies.json")).unwrap();
}

struct Pod {
    pki: Pki,
    _app: Echo,
    sidecar: Sidecar,
    port: u16,
    me: String,
    dir: tempfile::TempDir,
}

impl Pod {
    fn start() -> Pod {
        let pki = Pki::new();
        let identity = pki.svid("payments", "payments", "payments");
        let app = Echo::start();
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        write_policies(dir.path(), &manifests(port, ""));
        let file = dir.path().join("policies.json");
        let sidecar = Sidecar::start(
            &identity,
            &[
                "--inbound",
                &format!("{port}={},permissive", app.port),
                "--allow",
                "spiffe://weir.test/*",
                "--identity-setter",
                &id(GATEWAY.0, GATEWAY.1),
                "--authz-file",
                file.to_str().unwrap(),
                "--workload-labels",
                "app=payments,version=v1",
            ],
        );
        Pod {
            pki,
            _app: app,
            sidecar,
            port,
            me: id("payments", "payments"),
            dir,
        }
    }

    fn client(&self, ns: &str, sa: &str) -> PathBuf {
        self.pki.svid(&format!("{ns}-{sa}"), ns, sa)
    }

    async fn get(&self, svid: &Path, path: &str) -> Result<u16, String> {
        let mut conn = client::mtls(self.port, svid, &self.me, Proto::H1).await?;
        Ok(conn.get(path, &[]).await?.status)
    }

    fn decisions(&self, policy: &str, decision: &str) -> f64 {
        self.sidecar.metric(
            "weir_authz_decisions_total",
            &[("policy", policy), ("decision", decision)],
        )
    }
}

#[tokio::test]
async fn the_sidecar_enforces_its_services_policies_on_direct_calls() {
    let pod = Pod::start();
    assert_eq!(
        pod.sidecar.metric("weir_sidecar_authz_policies", &[]),
        2.0,
        "the Service's policy and the namespace's"
    );
    let checkout = pod.client("shop", "checkout");
    let web = pod.client("shop", "web");
    let dev = pod.client("dev", "tool");
    let gateway = pod.client(GATEWAY.0, GATEWAY.1);

    // Allowed: checkout, on /api/ (port 80 of the Service leads to this inbound port).
    assert_eq!(pod.get(&checkout, "/api/charges").await, Ok(200));
    // Same caller, a path the policy does not allow: 403 for this request only.
    let mut conn = client::mtls(pod.port, &checkout, &pod.me, Proto::H2)
        .await
        .unwrap();
    let r = conn.get("/admin", &[]).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (403, "forbidden\n"));
    assert_eq!(conn.get("/api/x", &[]).await.unwrap().status, 200);
    assert_eq!(pod.decisions("payments/callers", "denied"), 1.0);
    // Counted by caller, for the service graph's edge from checkout.
    assert_eq!(
        pod.sidecar.metric(
            "weir_sidecar_inbound_denied_total",
            &[("peer", "spiffe://weir.test/ns/shop/sa/checkout")],
        ),
        1.0
    );

    // A caller the ALLOW policy cannot match whatever it asks is refused at the handshake,
    // though --allow admits its identity; so is one the DENY policy names outright; so is
    // plaintext, which has no identity to match.
    assert!(pod.get(&web, "/api/charges").await.is_err());
    assert!(pod.get(&dev, "/api/charges").await.is_err());
    let plain = async {
        let mut c = client::plain(pod.port).await?;
        c.get("/api/charges", &[]).await
    };
    assert!(plain.await.is_err());
    assert!(eventually(Duration::from_secs(5), || {
        pod.sidecar.metric(
            "weir_sidecar_inbound_refused_total",
            &[("reason", "policy")],
        ) == 3.0
    }));
    assert_eq!(pod.decisions("payments/no-dev", "denied"), 1.0);

    // The fleet (an identity setter) relays requests it already authorized: not decided
    // again here.
    assert_eq!(pod.get(&gateway, "/admin").await, Ok(200));

    // A policy change reaches the running sidecar: web is allowed now.
    write_policies(
        pod.dir.path(),
        &manifests(pod.port, r#", "spiffe://weir.test/ns/shop/sa/web""#),
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            pod.sidecar
                .metric("weir_sidecar_authz_reloads_total", &[("result", "ok")])
                >= 2.0
        }),
        "{}",
        pod.sidecar.log()
    );
    assert_eq!(pod.get(&web, "/api/charges").await, Ok(200));

    // A file that does not parse keeps the last good policies.
    std::fs::write(pod.dir.path().join("policies.json"), "{not json").unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        pod.sidecar
            .metric("weir_sidecar_authz_reloads_total", &[("result", "error")])
            == 1.0
    }));
    assert_eq!(pod.get(&web, "/api/charges").await, Ok(200));
    assert!(pod.get(&dev, "/api/charges").await.is_err());
}

/// End-user tokens at the sidecar: verified with the JWKS the controller copied into the
/// policies file, 401 when they do not verify, and kept from the app.
#[tokio::test]
async fn the_sidecar_verifies_end_user_tokens() {
    use jsonwebtoken::Algorithm;
    use weir_loadtest::jwt::Issuer;

    let issuer = Issuer::new("https://issuer.test").unwrap();
    let pki = Pki::new();
    let identity = pki.svid("payments", "payments", "payments");
    let app = Echo::start();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let manifests = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: payments, namespace: payments}}
spec: {{selector: {{app: payments}}, ports: [{{port: 80, targetPort: {port}}}]}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: issuer-jwks, namespace: payments}}
data:
  jwks: '{}'
---
apiVersion: weir.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: users, namespace: payments}}
spec:
  targetRefs: [{{kind: Service, name: payments}}]
  jwt: [{{issuer: "https://issuer.test", jwksRef: {{name: issuer-jwks}}, fromHeader: x-user-token}}]
  rules: [{{from: [{{requestPrincipals: ["https://issuer.test/alice"]}}]}}]
"#,
        issuer.jwks()
    );
    write_policies(dir.path(), &manifests);
    let file = dir.path().join("policies.json");
    let sidecar = Sidecar::start(
        &identity,
        &[
            "--inbound",
            &format!("{port}={},strict", app.port),
            "--allow",
            "spiffe://weir.test/*",
            "--authz-file",
            file.to_str().unwrap(),
            "--workload-labels",
            "app=payments",
        ],
    );
    let caller = pki.svid("shop", "shop", "checkout");
    let me = id("payments", "payments");
    let call = |token: String| {
        let caller = caller.clone();
        let me = me.clone();
        async move {
            let mut c = client::mtls(port, &caller, &me, Proto::H1).await.unwrap();
            c.get("/", &[("x-user-token", token.as_str())])
                .await
                .unwrap()
        }
    };
    // A rule on a request principal cannot be decided at the handshake: the caller gets in,
    // and each request is decided by its token.
    let r = call(issuer.token(Algorithm::EdDSA, "alice", "any", serde_json::json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.seen("x-user-token").is_empty(),
        "the app does not get the token"
    );
    let r = call(issuer.token(Algorithm::RS256, "bob", "any", serde_json::json!({}))).await;
    assert_eq!(r.status, 403);
    let stranger = Issuer::new("https://issuer.test").unwrap();
    let r = call(stranger.token(Algorithm::ES256, "alice", "any", serde_json::json!({}))).await;
    assert_eq!(r.status, 401);
    assert_eq!(sidecar.metric("weir_authz_invalid_tokens_total", &[]), 1.0);
}
