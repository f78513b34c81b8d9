//! Traces (`--otlp-endpoint`) through a real `weir-gateway`, a real echo backend and a real
//! OTLP/HTTP receiver that decodes each export: every request is a span whose ids match
//! the `traceparent` the backend got, sampling follows the client's flag, and the span
//! says what happened (route, backend, endpoint, status, retries, the rate limit).

mod support;

use std::time::Duration;
use support::*;
use weir_loadtest::otlp::{Receiver, Span};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// The trace id, parent span id and flags of the `traceparent` the backend got.
fn seen(reply: &Reply) -> (String, String, String) {
    let tp = reply
        .seen_header("traceparent")
        .expect("the backend got a traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

async fn span_of(otlp: &Receiver, trace: &str, path: &str) -> Span {
    otlp.wait(
        &format!("for {path} in trace {trace}"),
        Duration::from_secs(20),
        |s| s.trace_id == trace && s.attributes.get("url.path").is_some_and(|p| p == path),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_request_is_a_span_whose_ids_the_backend_got() {
    let (app, port, m) = site();
    let otlp = Receiver::start().await;
    let gw = Gateway::start_with(&m, &["--otlp-endpoint", &otlp.url()]);

    // A client that traces: the gateway's span is its child, and the backend's parent.
    let client = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let traced = get(port, "shop", "/traced", &[("traceparent", &client)]).await;
    assert_eq!(traced.status, 200, "{}", gw.log());
    let (trace, parent, flags) = seen(&traced);
    assert_eq!(trace, CLIENT_TRACE);
    assert_eq!(flags, "01");
    let span = span_of(&otlp, CLIENT_TRACE, "/traced").await;
    assert_eq!(
        span.span_id, parent,
        "the backend's parent is the gateway's span"
    );
    assert_eq!(span.parent_span_id, CLIENT_SPAN);
    assert_eq!(span.service, "weir-gateway");
    assert_eq!(span.kind, 2, "SERVER");
    assert_eq!(span.name, "GET default/shop");
    let attr = |k: &str| span.attributes.get(k).cloned().unwrap_or_default();
    assert_eq!(attr("http.route"), "default/shop");
    assert_eq!(attr("weir.gateway"), "default/gw");
    assert_eq!(attr("weir.backend"), "default/app:80");
    assert_eq!(attr("weir.endpoint"), app.addr.to_string());
    assert_eq!(attr("weir.zone"), "zone-a");
    assert_eq!(attr("http.response.status_code"), "200");
    assert_eq!(attr("weir.retries"), "0");
    assert_eq!(attr("server.address"), "shop");
    assert_eq!(span.status, 0, "a 200 is no error");
    assert!(span.end_unix_nano > span.start_unix_nano);

    // No traceparent: the trace starts at the gateway, sampled (the default ratio is 1).
    let fresh = get(port, "shop", "/fresh", &[]).await;
    let (trace, parent, flags) = seen(&fresh);
    assert_eq!(flags, "01");
    let span = span_of(&otlp, &trace, "/fresh").await;
    assert_eq!(span.span_id, parent);
    assert_eq!(span.parent_span_id, "", "a root span");

    // A refusal and a 404 are spans too, with what decided them.
    assert_eq!(get(port, "quota", "/first", &[]).await.status, 200);
    let refused = get(port, "quota", "/second", &[("traceparent", &client)]).await;
    assert_eq!(refused.status, 429);
    let span = span_of(&otlp, CLIENT_TRACE, "/second").await;
    assert_eq!(span.attributes["weir.rate_limit"], "limited");
    assert_eq!(span.attributes["http.response.status_code"], "429");
    assert!(!span.attributes.contains_key("weir.endpoint"));
    let lost = get(port, "nowhere", "/lost", &[("traceparent", &client)]).await;
    assert_eq!(lost.status, 404);
    let span = span_of(&otlp, CLIENT_TRACE, "/lost").await;
    assert_eq!(span.name, "GET");

    // A client that does not sample: nor does the gateway, and the backend is told so.
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let quiet = format!("00-{unsampled_trace}-b7ad6b7169203331-00");
    let reply = get(port, "shop", "/quiet", &[("traceparent", &quiet)]).await;
    let (trace, parent, flags) = seen(&reply);
    assert_eq!((trace.as_str(), flags.as_str()), (unsampled_trace, "00"));
    assert_ne!(
        parent, "b7ad6b7169203331",
        "still the gateway's own span id"
    );
    // Spans leave in the order requests end: once a later one has arrived, the unsampled
    // one would have too.
    let later = get(port, "shop", "/later", &[("traceparent", &client)]).await;
    assert_eq!(later.status, 200);
    span_of(&otlp, CLIENT_TRACE, "/later").await;
    assert!(
        otlp.spans().iter().all(|s| s.trace_id != unsampled_trace),
        "an unsampled trace was exported"
    );
    assert_eq!(
        gw.metric("weir_trace_spans_total"),
        otlp.spans().len() as f64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sampling_ratio_applies_to_traces_that_start_here() {
    let (_app, port, m) = site();
    let otlp = Receiver::start().await;
    let gw = Gateway::start_with(
        &m,
        &["--otlp-endpoint", &otlp.url(), "--trace-sampling", "0"],
    );
    for i in 0..5 {
        let reply = get(port, "shop", &format!("/root/{i}"), &[]).await;
        assert_eq!(seen(&reply).2, "00", "{}", gw.log());
    }
    // A sampled parent still wins: the client started the trace and decided.
    let client = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply = get(port, "shop", "/child", &[("traceparent", &client)]).await;
    assert_eq!(seen(&reply).2, "01");
    span_of(&otlp, CLIENT_TRACE, "/child").await;
    let spans = otlp.spans();
    assert_eq!(
        spans.len(),
        1,
        "only the client's sampled trace: {spans:#?}"
    );
}

#[test]
fn a_bad_collector_url_or_ratio_is_refused_at_start() {
    for (args, says) in [
        (
            vec!["--otlp-endpoint", "ftp://collector:4318"],
            "--otlp-endpoint",
        ),
        (
            vec![
                "--otlp-endpoint",
                "http://c:4318",
                "--trace-sampling",
                "1.5",
            ],
            "--trace-sampling",
        ),
    ] {
        let stderr = start_refused(&args);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
