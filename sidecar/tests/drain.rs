//! Graceful drain, with real processes: after SIGTERM a sidecar answers `/healthz` with 503,
//! refuses new connections, lets the requests in flight finish (HTTP/1 with `Connection:
//! close`, HTTP/2 after a GOAWAY), and exits once its connections are done, long before its
//! drain timeout. Inbound (mTLS from a peer) and outbound (plain from the app) alike.

mod support;

use std::path::PathBuf;
use std::time::Duration;
use support::client::{self, Conn, Proto, Reply};
use support::{Echo, Pki, Sidecar, eventually, free_port, id};
use tokio::task::JoinHandle;

/// Long beyond the test: the sidecar must exit because it is idle, not because time ran out.
const DRAIN_TIMEOUT: &str = "30s";
/// Still running when SIGTERM arrives.
const SLOW: &str = "/slow?delay=2s";

fn slow(mut conn: Conn) -> JoinHandle<(Result<Reply, String>, Conn)> {
    tokio::spawn(async move { (conn.get(SLOW, &[]).await, conn) })
}

/// Checks one slow request's answer and that its connection is finished with afterwards.
async fn finished(request: JoinHandle<(Result<Reply, String>, Conn)>, proto: Proto) {
    let (reply, mut conn) = request.await.unwrap();
    let reply = reply.expect("the request in flight is answered");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["path"], SLOW, "the whole body arrived");
    if proto == Proto::H1 {
        assert_eq!(reply.headers["connection"], "close", "{:?}", reply.headers);
    }
    // HTTP/1: the server closed after that response; HTTP/2: GOAWAY refuses new streams.
    assert!(
        conn.get("/", &[]).await.is_err(),
        "{proto:?} connection still open"
    );
}

fn refused(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
}

/// SIGTERM, then what every drain must show: 503 from /healthz at once and no new
/// connections on `port`.
fn drain_starts(sidecar: &Sidecar, port: u16) {
    sidecar.sigterm();
    assert!(
        eventually(Duration::from_secs(2), || sidecar
            .admin_get("/healthz")
            .is_some_and(|(status, _)| status == 503)),
        "/healthz still healthy while draining\n{}",
        sidecar.log()
    );
    assert!(
        eventually(Duration::from_secs(2), || refused(port)),
        "port {port} still accepts connections while draining"
    );
}

fn exits_idle(sidecar: &mut Sidecar) {
    let status = sidecar.wait_exit(Duration::from_secs(20));
    let log = sidecar.log();
    let status = status.unwrap_or_else(|| panic!("still running after the drain\n{log}"));
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("drained: every connection closed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_requests_in_flight_finish_and_the_sidecar_exits_once_idle() {
    let pki = Pki::new();
    let app = Echo::start();
    let port = free_port();
    let mut sidecar = Sidecar::start(
        &pki.svid("web", "shop", "web"),
        &[
            "--inbound",
            &format!("{port}={}", app.port),
            "--allow",
            "spiffe://weir.test/ns/shop/*",
            "--drain-timeout",
            DRAIN_TIMEOUT,
        ],
    );
    let front: PathBuf = pki.svid("front", "shop", "front");
    let me = id("shop", "web");
    let connect = |proto| client::mtls(port, &front, &me, proto);
    // An idle keep-alive connection must not hold the drain up.
    let mut idle = connect(Proto::H1).await.unwrap();
    assert_eq!(idle.get("/", &[]).await.unwrap().status, 200);
    let h1 = slow(connect(Proto::H1).await.unwrap());
    let h2 = slow(connect(Proto::H2).await.unwrap());
    let (port_label, front_id) = (port.to_string(), id("shop", "front"));
    let forwarded = [("port", port_label.as_str()), ("peer", front_id.as_str())];
    assert!(eventually(Duration::from_secs(5), || sidecar
        .metric("weir_sidecar_inbound_requests_total", &forwarded)
        == 3.0));

    drain_starts(&sidecar, port);
    finished(h1, Proto::H1).await;
    finished(h2, Proto::H2).await;
    assert!(idle.get("/", &[]).await.is_err(), "idle connection kept");
    exits_idle(&mut sidecar);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_requests_in_flight_finish_and_the_sidecar_exits_once_idle() {
    let pki = Pki::new();
    let app = Echo::start();
    let (b, b_port) = Sidecar::callee(
        &pki.svid("payments", "pay", "payments"),
        app.port,
        &["--allow", &id("shop", "front")],
    );
    let (mut a, out) = Sidecar::caller(
        &pki.svid("front", "shop", "front"),
        &format!("127.0.0.1:{b_port}"),
        &id("pay", "payments"),
        &[
            "--allow",
            "spiffe://weir.test/*",
            "--drain-timeout",
            DRAIN_TIMEOUT,
        ],
    );
    let h1 = slow(client::plain_with(out, Proto::H1).await.unwrap());
    let h2 = slow(client::plain_with(out, Proto::H2).await.unwrap());
    // Both are in flight once the echo behind B has them; B counts them as it forwards.
    let b_port_label = b_port.to_string();
    assert!(eventually(Duration::from_secs(5), || b.metric(
        "weir_sidecar_inbound_requests_total",
        &[("port", b_port_label.as_str())]
    ) == 2.0));

    drain_starts(&a, out);
    finished(h1, Proto::H1).await;
    finished(h2, Proto::H2).await;
    exits_idle(&mut a);
}
