//! A rolling restart under load loses no request.
//!
//! Two `weir-gateway` replicas (A and B) serve the same route to one `weir-echo` backend.
//! The test plays the Kubernetes Service in front of them: a client-side balancer that
//! round-robins requests over the replicas in its endpoint list, with concurrent workers
//! on kept-alive connections, some of them slow. Each replica in turn is restarted the
//! way a Deployment's rollout does it: the endpoints controller drops the terminating pod
//! from the list, the preStop sleep gives that change time to spread, the kubelet sends
//! SIGTERM, the gateway drains and exits, and the new pod joins the list once ready.
//!
//! Every response must be a 200 with no transport error, and each replica generation must
//! have served requests, so the test cannot pass vacuously.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// `--drain-seconds`: longer than any slow request, so a drain never cuts one off.
const DRAIN: Duration = Duration::from_secs(2);
/// deploy/base/gateway.yaml's 5 s preStop sleep, scaled down.
const PRE_STOP: Duration = Duration::from_millis(300);
/// A slow request: longer than the preStop sleep, so it is still running at SIGTERM.
const SLOW: Duration = Duration::from_secs(1);
const FAST_WORKERS: usize = 6;
const SLOW_WORKERS: usize = 2;

/// The test's Service: the ready endpoints, as (pod name, listener port), and what the
/// workers saw. A pod name names one process, so the old and the new A count apart.
#[derive(Default)]
struct Service {
    endpoints: Mutex<Vec<(String, u16)>>,
    next: AtomicUsize,
    stop: AtomicBool,
    ids: AtomicU64,
    served: Mutex<HashMap<String, u64>>,
    failures: Mutex<Vec<String>>,
    /// Slow requests under way: id -> (pod, start).
    slow_in_flight: Mutex<HashMap<u64, (String, Instant)>>,
    slow_ok: Mutex<HashSet<u64>>,
}

impl Service {
    fn pick(&self) -> (String, u16) {
        let eps = self.endpoints.lock().unwrap();
        eps[self.next.fetch_add(1, Relaxed) % eps.len()].clone()
    }

    /// The slow requests to `pod` under way that started at most `max_age` ago.
    fn slow_on(&self, pod: &str, max_age: Duration) -> Vec<u64> {
        let in_flight = self.slow_in_flight.lock().unwrap();
        let on_pod = in_flight
            .iter()
            .filter(|(_, (p, t))| p == pod && t.elapsed() <= max_age);
        on_pod.map(|(id, _)| *id).collect()
    }
}

async fn worker(svc: Arc<Service>, client: reqwest::Client, slow: bool) {
    let path = format!("/?delay={}ms", if slow { SLOW.as_millis() } else { 0 });
    while !svc.stop.load(Relaxed) {
        let (pod, port) = svc.pick();
        let id = svc.ids.fetch_add(1, Relaxed);
        if slow {
            let entry = (pod.clone(), Instant::now());
            svc.slow_in_flight.lock().unwrap().insert(id, entry);
        }
        let result = async {
            let resp = client
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await?;
            let status = resp.status().as_u16();
            resp.bytes().await?;
            Ok::<_, reqwest::Error>(status)
        }
        .await;
        svc.slow_in_flight.lock().unwrap().remove(&id);
        match result {
            Ok(200) => {
                *svc.served.lock().unwrap().entry(pod).or_default() += 1;
                if slow {
                    svc.slow_ok.lock().unwrap().insert(id);
                }
            }
            Ok(status) => svc
                .failures
                .lock()
                .unwrap()
                .push(format!("{pod}: {status}")),
            Err(e) => svc.failures.lock().unwrap().push(format!("{pod}: {e:?}")),
        }
    }
}

/// Starts a replica off the async runtime (startup polls /readyz with blocking sleeps).
async fn start(manifests: &str) -> Gateway {
    let m = manifests.to_string();
    let drain = DRAIN.as_secs().to_string();
    tokio::task::spawn_blocking(move || Gateway::start_with(&m, &["--drain-seconds", &drain]))
        .await
        .unwrap()
}

/// Restarts `old` (serving `port` as pod `pod`) the Kubernetes way; returns the new replica.
#[allow(clippy::print_stderr)] // the exit time is reported for the record
async fn roll(svc: &Service, mut old: Gateway, pod: &str, new_pod: &str, port: u16) -> Gateway {
    // Wait for a slow request to this pod that will outlast the preStop sleep, so one is
    // surely in flight at SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(10);
    while svc.slow_on(pod, (SLOW - PRE_STOP) / 2).is_empty() {
        assert!(Instant::now() < deadline, "no slow request reached {pod}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The pod is terminating: the endpoints controller drops it, then preStop sleeps.
    svc.endpoints.lock().unwrap().retain(|(p, _)| p != pod);
    tokio::time::sleep(PRE_STOP).await;
    old.proc().sigterm();
    let sigterm = Instant::now();
    let in_flight = svc.slow_on(pod, Duration::MAX);
    assert!(!in_flight.is_empty(), "no slow request on {pod} at SIGTERM");

    // Readiness goes off at once, while those requests are still being served.
    let admin = old.admin;
    loop {
        let ready = tokio::task::spawn_blocking(move || blocking_get(admin, "/readyz"));
        if let Some((503, _)) = ready.await.unwrap() {
            break;
        }
        assert!(
            sigterm.elapsed() < SLOW / 2,
            "{pod} still ready after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let running = svc.slow_on(pod, Duration::MAX);
    assert!(!running.is_empty(), "{pod}: readiness off only once idle");

    let (old, status) = tokio::task::spawn_blocking(move || {
        let status = old.proc().wait();
        (old, status)
    })
    .await
    .unwrap();
    let took = sigterm.elapsed();
    eprintln!("{pod} exited {took:?} after SIGTERM");
    assert!(
        status.success(),
        "{pod} exit {status:?}; log:\n{}",
        old.log()
    );
    // Idle kept-alive connections (the client's, to a pod it no longer picks) hold the
    // gateway until the drain deadline: it does not close them at SIGTERM.
    assert!(took < DRAIN + Duration::from_secs(1), "{pod} took {took:?}");
    let cut = in_flight
        .iter()
        .any(|id| !svc.slow_ok.lock().unwrap().contains(id));
    assert!(!cut, "{pod} cut a slow request in flight at SIGTERM");

    // The new pod joins the endpoints once ready; it listens on the same port.
    let m = std::fs::read_to_string(old.dir().join("manifests.yaml")).unwrap();
    let new = start(&m).await;
    let endpoint = (new_pod.to_string(), port);
    svc.endpoints.lock().unwrap().push(endpoint);
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::print_stderr)] // the request counts are reported for the record
async fn rolling_restart_under_load_fails_no_request() {
    let app = Echo::start("app");
    // On one host the replicas cannot share a port as pods share one on their own IPs,
    // so each gets its own; otherwise their manifests are the same.
    let manifests = |port| {
        let mut m = gateway(&[http_listener("http", port)]);
        m += &service("app", &[&app]);
        m + &route("r", "  rules:\n  - backendRefs: [{name: app, port: 80}]\n")
    };
    let (port_a, port_b) = (free_port(), free_port());
    let (a, b) = (
        start(&manifests(port_a)).await,
        start(&manifests(port_b)).await,
    );

    let svc = Arc::new(Service::default());
    *svc.endpoints.lock().unwrap() = vec![("a-1".into(), port_a), ("b-1".into(), port_b)];
    let client = client();
    let workers: Vec<_> = (0..FAST_WORKERS + SLOW_WORKERS)
        .map(|i| tokio::spawn(worker(svc.clone(), client.clone(), i >= FAST_WORKERS)))
        .collect();

    let began = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _a = roll(&svc, a, "a-1", "a-2", port_a).await;
    let _b = roll(&svc, b, "b-1", "b-2", port_b).await;
    // Let the new B serve for a while too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    svc.stop.store(true, Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let served = svc.served.lock().unwrap().clone();
    let total: u64 = served.values().sum();
    eprintln!("served {served:?} ({total} in {:?})", began.elapsed());
    let failures = svc.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    assert!(total > 500, "only {total} requests: {served:?}");
    for pod in ["a-1", "a-2", "b-1", "b-2"] {
        assert!(
            served.get(pod).copied().unwrap_or(0) > 0,
            "{pod}: {served:?}"
        );
    }
}
