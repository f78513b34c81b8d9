//! One client connection whose requests take both HTTP/1 paths, against the real
//! `weir-gateway`: origin-form targets are served by Weir's own server side
//! (`proxy/client_h1.rs`), an absolute-form target by Pingora's `HttpProxy`, and the
//! connection carries on from one to the other in both directions.

mod support;

use std::io::Write;
use std::time::Duration;
use support::raw;
use support::*;

#[test]
fn one_connection_carries_requests_through_both_paths() {
    let app = Echo::start("app");
    let port = free_port();
    let _gw = Gateway::start(&one_route(port, &app));
    let mut s = raw::connect(port);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for (request, path) in [
        ("GET /own HTTP/1.1\r\nHost: h\r\n\r\n", "/own"),
        (
            "GET http://h/absolute HTTP/1.1\r\nHost: h\r\n\r\n",
            "/absolute",
        ),
        ("GET /own-again HTTP/1.1\r\nHost: h\r\n\r\n", "/own-again"),
        (
            "GET http://h/absolute-again HTTP/1.1\r\nHost: h\r\n\r\n",
            "/absolute-again",
        ),
    ] {
        s.write_all(request.as_bytes()).unwrap();
        let got = raw::read_until(&mut s, raw::has_response);
        let text = got.text();
        assert!(!got.closed, "{request:?} closed the connection: {text}");
        assert_eq!(got.statuses(), [200], "{request:?}: {text}");
        assert!(
            text.contains(&format!("\"path\":\"{path}\"")),
            "{request:?} reached the backend as {text}"
        );
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nconnection: keep-alive\r\n"),
            "{request:?}: {text}"
        );
    }
    assert_eq!(app.stats()["requests"].as_u64(), Some(4));
}
