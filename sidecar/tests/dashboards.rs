//! The mesh and sidecar Grafana dashboards (deploy/dashboards/mesh.json, sidecars.json)
//! against a real `prometheus` that scrapes a real fleet and two real sidecars carrying
//! mesh traffic: every panel's query must run and return a number. (The gateway's own
//! dashboards are checked in gateway/tests/dashboards.rs.)

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::client;
use support::mesh::MeshPath;
use weir_loadtest::procs;

const DASHBOARDS: [&str; 2] = ["mesh.json", "sidecars.json"];

#[tokio::test(flavor = "multi_thread")]
async fn every_mesh_and_sidecar_panel_returns_data_from_a_real_prometheus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dashboards");
    let queries = procs::panel_queries(&dir, &DASHBOARDS).unwrap();
    assert!(queries.len() >= 10, "{} panel queries", queries.len());

    // A policy in Shadow mode on the called Service: every call is a decision to count,
    // and none is refused.
    let path = MeshPath::start_with(&[], &[], |_| {
        "---\napiVersion: weir.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: trial, namespace: pay}\nspec:\n  targetRefs: [{kind: Service, name: payments}]\n  mode: Shadow\n  rules: [{from: [{namespaces: [refunds]}]}]\n".to_string()
    });
    let (out, b_port) = (path.out, path.b_port);

    // Mesh calls through both sidecars and the fleet, and plaintext knocking on B's STRICT
    // port, all along: each rate needs traffic between two scrapes.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut caller = client::plain(out).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                let reply = caller
                    .get_uri("http://payments.pay:8080/dash", &[])
                    .await
                    .unwrap();
                assert_eq!(reply.status, 200);
                if let Ok(mut knock) = client::plain(b_port).await {
                    let _ = knock.get("/", &[]).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    let prom_dir = tempfile::tempdir().unwrap();
    let targets = [path.gateway.admin, path.a.admin, path.b.admin].map(|t| t.to_string());
    let prom = procs::Prometheus::start(prom_dir.path(), &targets).unwrap();
    let empty = tokio::task::block_in_place(|| {
        prom.wait_scraped(3, Duration::from_secs(60)).unwrap();
        prom.panels_without_data(&queries, Duration::from_secs(60))
    });
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );
}
