//! Request framing a hostile client chooses, as raw bytes against the real `weir-gateway`,
//! with a `weir-echo` behind it that counts what it was handed:
//!
//! - request smuggling (Content-Length with Transfer-Encoding, differing Content-Lengths,
//!   transfer codings other than `chunked`, Transfer-Encoding on HTTP/1.0, bad chunk
//!   sizes, obs-fold, bare LF): 400 or a closed connection, and the backend gets exactly the
//!   one request it should, with the right body, or none;
//! - oversized request lines and heads: 414 and 431, at the default and at set limits,
//!   on HTTP/1.1 and HTTP/2;
//! - `Upgrade: h2c` from a client never reaches a backend.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::raw;
use support::*;

/// What the backend counted after one raw exchange: (requests begun, bodies read to the
/// end, their bytes).
fn backend_saw(echo: &Echo) -> (u64, u64, u64) {
    let s = echo.stats();
    let n = |k: &str| s[k].as_u64().unwrap();
    (n("requests"), n("complete_bodies"), n("body_bytes"))
}

/// A client's bytes and what must follow from them.
struct Case {
    name: &'static str,
    bytes: &'static [u8],
    /// The body the backend may be handed whole, if any request may reach it.
    forwarded_body: Option<u64>,
}

#[test]
fn smuggling_attempts_are_refused_and_the_backend_sees_at_most_the_one_request() {
    let app = Echo::start("app");
    let port = free_port();
    let _gw = Gateway::start(&one_route(port, &app));
    let cases = [
        Case {
            name: "Content-Length with Transfer-Encoding",
            bytes: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            forwarded_body: None,
        },
        Case {
            name: "Transfer-Encoding with Content-Length",
            bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            forwarded_body: None,
        },
        Case {
            name: "differing duplicate Content-Length",
            bytes: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 39\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            forwarded_body: None,
        },
        Case {
            name: "Transfer-Encoding: chunked, identity",
            bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            forwarded_body: None,
        },
        Case {
            name: "Transfer-Encoding: identity",
            bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\nContent-Length: 4\r\n\r\nabcd",
            forwarded_body: None,
        },
        Case {
            name: "two Transfer-Encoding fields",
            bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            forwarded_body: None,
        },
        Case {
            name: "Transfer-Encoding on HTTP/1.0",
            bytes: b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            forwarded_body: None,
        },
        Case {
            name: "Transfer-Encoding with a space before the colon",
            bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
            forwarded_body: None,
        },
        Case {
            name: "an invalid chunk size",
            bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            forwarded_body: None,
        },
        Case {
            name: "an overflowing chunk size",
            bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000000000004\r\nabcd\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            forwarded_body: None,
        },
        Case {
            name: "a chunk size line ended by a bare LF",
            bytes: b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\nabcd\r\n0\r\n\r\n",
            forwarded_body: None,
        },
        Case {
            name: "obs-fold",
            bytes: b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n",
            forwarded_body: None,
        },
        Case {
            name: "bare LF line endings",
            bytes: b"GET / HTTP/1.1\nHost: h\nContent-Length: 39\n\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
            forwarded_body: None,
        },
        Case {
            name: "a bare LF inside the head",
            bytes: b"GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n",
            forwarded_body: None,
        },
        Case {
            name: "a negative Content-Length",
            bytes: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            forwarded_body: None,
        },
        // The control: identical duplicate Content-Lengths are one length (RFC 9110 §8.6).
        Case {
            name: "identical duplicate Content-Length",
            bytes: b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
            forwarded_body: Some(4),
        },
    ];
    for case in cases {
        app.reset();
        let got = raw::exchange(port, case.bytes);
        let (requests, complete, bytes) = backend_saw(&app);
        let name = case.name;
        match case.forwarded_body {
            None => {
                let statuses = got.statuses();
                assert!(
                    statuses == [400] || (statuses.is_empty() && got.closed),
                    "{name}: the client got {:?}",
                    got.text()
                );
                assert!(got.closed, "{name}: the connection stayed open");
                // A request whose body framing breaks after its head was forwarded may
                // have begun at the backend; none may have been handed a whole body.
                assert!(requests <= 1, "{name}: the backend got {requests} requests");
                assert_eq!(complete, 0, "{name}: the backend read a whole body");
            }
            Some(len) => {
                assert_eq!(got.statuses(), [200], "{name}: {}", got.text());
                assert_eq!((requests, complete, bytes), (1, 1, len), "{name}");
            }
        }
        assert!(
            !got.text().contains("/smuggled"),
            "{name}: a smuggled request was answered"
        );
    }
}

#[test]
fn an_h2c_upgrade_is_not_forwarded() {
    let app = Echo::start("app");
    let port = free_port();
    let _gw = Gateway::start(&one_route(port, &app));
    let mut s = raw::connect(port);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    use std::io::Write;
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n")
        .unwrap();
    let got = raw::read_until(&mut s, raw::has_response);
    assert_eq!(got.statuses(), [200], "{}", got.text());
    let text = got.text();
    let body: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    let headers = body["headers"].as_object().unwrap();
    for name in ["upgrade", "http2-settings", "connection"] {
        assert!(
            !headers.contains_key(name),
            "the backend got {name}: {headers:?}"
        );
    }
    // The connection is still HTTP/1.1 and still the gateway's: another request works.
    s.write_all(b"GET /again HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let again = raw::read_until(&mut s, raw::has_response);
    assert_eq!(again.statuses(), [200], "{}", again.text());
}

#[test]
fn oversized_heads_get_414_and_431_at_the_default_limits() {
    let app = Echo::start("app");
    let port = free_port();
    let gw = Gateway::start(&one_route(port, &app));
    // Default: 64 KiB of head, 100 fields.
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(70 * 1024));
    let got = raw::exchange(port, long_uri.as_bytes());
    assert_eq!(got.statuses(), [414], "{}", got.text());
    assert!(got.closed);

    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let got = raw::exchange(port, big.as_bytes());
    assert_eq!(got.statuses(), [431], "{}", got.text());

    let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..100 {
        many += &format!("X-F{i}: v\r\n");
    }
    many += "\r\n";
    let got = raw::exchange(port, many.as_bytes());
    assert_eq!(got.statuses(), [431], "101 fields: {}", got.text());

    // Inside both limits: served. (Not 100 fields: the gateway adds four forwarding and
    // trace fields, and the echo, like hyper, takes 100 at most.)
    let mut fits = String::from("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n");
    for i in 0..92 {
        fits += &format!("X-F{i}: v\r\n");
    }
    fits += &format!("X-Big: {}\r\n\r\n", "a".repeat(60 * 1024));
    let got = raw::exchange(port, fits.as_bytes());
    assert_eq!(got.statuses(), [200], "{:.300}", got.text());

    assert_eq!(app.count("requests"), 1);
    assert!(gw.metric("weir_downstream_refused_total{reason=\"uri_too_long\"}") >= 1.0);
    assert!(gw.metric("weir_downstream_refused_total{reason=\"too_many_headers\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn header_limits_are_flags_and_hold_on_http2_too() {
    let app = Echo::start("app");
    let port = free_port();
    let _gw = Gateway::start_with(
        &one_route(port, &app),
        &["--max-header-bytes", "4096", "--max-headers", "10"],
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(5000)
    );
    assert_eq!(raw::exchange(port, big.as_bytes()).statuses(), [431]);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..10 {
        many += &format!("X-F{i}: v\r\n");
    }
    assert_eq!(
        raw::exchange(port, format!("{many}\r\n").as_bytes()).statuses(),
        [431]
    );

    // HTTP/2 (h2c): the same limits.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut client, conn) = ::h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let send =
        |client: &mut ::h2::client::SendRequest<bytes::Bytes>, fields: usize, size: usize| {
            let mut req = http::Request::get("http://h/").body(()).unwrap();
            for i in 0..fields {
                req.headers_mut().insert(
                    format!("x-f{i}").parse::<http::HeaderName>().unwrap(),
                    "v".parse().unwrap(),
                );
            }
            if size > 0 {
                req.headers_mut()
                    .insert("x-big", "a".repeat(size).parse().unwrap());
            }
            client.send_request(req, true).unwrap().0
        };
    let ok = send(&mut client, 3, 0).await.unwrap();
    assert_eq!(ok.status(), 200);
    let many = send(&mut client, 12, 0).await.unwrap();
    assert_eq!(many.status(), 431);
    // Over the header list size: h2 answers 431 itself, or refuses the stream.
    match send(&mut client, 0, 5000).await {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert_eq!(e.reason(), Some(::h2::Reason::REFUSED_STREAM), "{e}"),
    }
}
