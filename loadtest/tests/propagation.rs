//! The `--kube` path end to end, short of an API server: kube's client and watchers read a
//! stand-in API, and a route added on the HTTPRoute watch goes live in the gateway's
//! runtime, as the propagation benchmark measures.

use std::time::Duration;
use weir_loadtest::propagation::measure;

#[tokio::test]
async fn routes_added_on_the_watch_go_live() {
    // `measure` fails unless the initial list and every added route reach the runtime.
    let f = measure(25, 5, Duration::from_millis(10)).await.unwrap();
    assert_eq!((f.routes, f.events), (25, 5));
    assert!(
        f.p50_ms > 0.0 && f.p50_ms <= f.p99_ms && f.p99_ms <= f.max_ms,
        "{f:?}"
    );
}
