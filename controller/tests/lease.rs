//! Leader hand-over on a Lease, through kube's client against a `tower-test` mock API that
//! keeps one Lease the way the API server does: create, get, strategic merge, and
//! server-side apply that refuses to move `holderIdentity` away from another field manager.

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};
use weir_controller::status::lease::{Timing, elect};

#[derive(Default)]
struct Lease {
    object: Option<Value>,
    version: u64,
    /// The field manager that set `spec.holderIdentity`.
    holder_owner: Option<String>,
}

type Shared = Arc<Mutex<Lease>>;

fn status(code: u16, reason: &str) -> (u16, Value) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "reason": reason, "code": code, "message": reason});
    (code, body)
}

fn answer(
    lease: &Shared,
    method: &str,
    query: &str,
    content_type: &str,
    body: Value,
) -> (u16, Value) {
    let mut l = lease.lock().unwrap();
    let manager = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("fieldManager="))
        .unwrap_or_default()
        .to_string();
    match method {
        "GET" => match &l.object {
            Some(o) => (200, o.clone()),
            None => status(404, "NotFound"),
        },
        "POST" if l.object.is_some() => status(409, "AlreadyExists"),
        "POST" => {
            l.version += 1;
            let mut o = body;
            o["metadata"]["resourceVersion"] = json!(l.version.to_string());
            l.object = Some(o.clone());
            (201, o)
        }
        "PATCH" => {
            let Some(mut o) = l.object.clone() else {
                return status(404, "NotFound");
            };
            let spec = body["spec"].as_object().cloned().unwrap_or_default();
            let holder = o["spec"]["holderIdentity"].clone();
            if content_type.starts_with("application/apply-patch")
                && !holder.is_null()
                && l.holder_owner.as_deref() != Some(manager.as_str())
                && spec.get("holderIdentity") != Some(&holder)
            {
                return status(409, "Conflict");
            }
            for (k, v) in spec {
                if k == "holderIdentity" {
                    l.holder_owner = (!v.is_null()).then(|| manager.clone());
                }
                if v.is_null() {
                    o["spec"].as_object_mut().map(|s| s.remove(&k));
                } else {
                    o["spec"][k] = v;
                }
            }
            l.version += 1;
            o["metadata"]["resourceVersion"] = json!(l.version.to_string());
            l.object = Some(o.clone());
            (200, o)
        }
        _ => status(405, "MethodNotAllowed"),
    }
}

/// A client of the shared mock Lease API.
fn client(lease: &Shared) -> kube::Client {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let lease = lease.clone();
    tokio::spawn(async move {
        while let Some((req, reply)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let content_type = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let query = parts.uri.query().unwrap_or("");
            let (code, out) = answer(&lease, parts.method.as_str(), query, content_type, body);
            let resp = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&out).unwrap()));
            reply.send_response(resp.unwrap());
        }
    });
    kube::Client::new(svc, "weir-system")
}

const FAST: Timing = Timing {
    duration_s: 2,
    grace_s: 1,
};

async fn becomes(rx: &mut watch::Receiver<bool>, want: bool, within: Duration) -> Duration {
    let began = Instant::now();
    tokio::time::timeout(within, rx.wait_for(|v| *v == want))
        .await
        .unwrap_or_else(|_| panic!("not {want} within {within:?}"))
        .unwrap();
    began.elapsed()
}

fn holder(lease: &Shared) -> Value {
    lease.lock().unwrap().object.as_ref().unwrap()["spec"]["holderIdentity"].clone()
}

#[tokio::test]
async fn one_leader_at_a_time_and_a_clean_stop_hands_over_at_once() {
    let lease: Shared = Arc::default();
    let (mut a, _task_a) = elect(client(&lease), "weir-system", "weir-controller", "a", FAST)
        .await
        .unwrap();
    becomes(&mut a, true, Duration::from_secs(5)).await;
    assert_eq!(holder(&lease), "a");

    let (mut b, task_b) = elect(client(&lease), "weir-system", "weir-controller", "b", FAST)
        .await
        .unwrap();
    // Three lease durations in which A renews: B never leads meanwhile.
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(6) {
        assert!(!*b.borrow_and_update(), "two leaders");
        assert_eq!(holder(&lease), "a");
        sleep(Duration::from_millis(100)).await;
    }

    // A stops cleanly (its receivers dropped): it releases, and B takes over well before
    // the Lease would have expired on its own.
    drop(a);
    let took = becomes(&mut b, true, Duration::from_secs(5)).await;
    assert_eq!(holder(&lease), "b");
    assert!(took < Duration::from_secs(4), "hand-over took {took:?}");

    // B crashes without releasing: C waits out the Lease, then leads.
    let (mut c, _task_c) = elect(client(&lease), "weir-system", "weir-controller", "c", FAST)
        .await
        .unwrap();
    sleep(Duration::from_millis(500)).await;
    assert!(!*c.borrow_and_update());
    task_b.abort();
    becomes(&mut c, true, Duration::from_secs(8)).await;
    assert_eq!(holder(&lease), "c");
}
