//! Route and backend filters through a real `weir-gateway`: header modifiers, redirects,
//! rewrites and mirrors.

mod support;

use std::time::{Duration, Instant};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn header_modifiers_set_add_and_remove() {
    let app = Echo::start("app");
    let port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("app", &[&app]);
    m += &route(
        "h",
        r#"  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Env, value: prod}]
        add: [{name: X-Tags, value: weir}]
        remove: [X-Debug]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: Strict-Transport-Security, value: max-age=31536000}]
        add: [{name: X-Echo-Pod, value: via-weir}]
        remove: [X-Echo-Service]
    backendRefs:
    - name: app
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: X-Backend, value: app}]}
"#,
    );
    let _gw = Gateway::start(&m);
    let r = get(
        port,
        "h",
        "/",
        &[("x-env", "dev"), ("x-tags", "a"), ("x-debug", "1")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.seen_header("x-env").as_deref(),
        Some("prod"),
        "set overwrites"
    );
    assert_eq!(
        r.seen_header("x-tags").as_deref(),
        Some("a,weir"),
        "add appends comma-joined"
    );
    assert!(r.json()["headers"]["x-debug"].is_null(), "remove removes");
    assert_eq!(
        r.seen_header("x-backend").as_deref(),
        Some("app"),
        "backendRef filter"
    );
    assert_eq!(r.headers["strict-transport-security"], "max-age=31536000");
    assert_eq!(r.headers["x-echo-pod"], "app-pod,via-weir");
    assert!(r.headers.get("x-echo-service").is_none());
    // Without the header, add simply sets it.
    let r = get(port, "h", "/", &[]).await;
    assert_eq!(r.seen_header("x-tags").as_deref(), Some("weir"));
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_follow_the_spec() {
    let port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    let rule = |path: &str, redirect: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {redirect}}}]\n"
        )
    };
    let rules = [
        rule("/to-https", "{scheme: https, statusCode: 301}"),
        rule("/keep-port", "{hostname: other.example.com}"),
        rule(
            "/explicit-port",
            "{scheme: https, port: 8443, statusCode: 308}",
        ),
        rule("/default-port", "{scheme: http, port: 80, statusCode: 307}"),
        rule(
            "/full",
            "{path: {type: ReplaceFullPath, replaceFullPath: /elsewhere}, statusCode: 303}",
        ),
        rule(
            "/old",
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}",
        ),
    ];
    m += &route("r", &format!("  rules:\n{}", rules.concat()));
    let _gw = Gateway::start(&m);
    let loc = |r: &Reply| r.headers["location"].to_str().unwrap().to_string();

    let r = get(port, "shop.example.com", "/to-https/a?b=1", &[]).await;
    assert_eq!(
        (r.status, loc(&r)),
        (301, "https://shop.example.com/to-https/a?b=1".into())
    );
    // Neither scheme nor port: the listener's port is kept; default status 302.
    let r = get(port, "shop.example.com:1234", "/keep-port", &[]).await;
    assert_eq!(
        (r.status, loc(&r)),
        (302, format!("http://other.example.com:{port}/keep-port"))
    );
    let r = get(port, "shop.example.com", "/explicit-port", &[]).await;
    assert_eq!(
        (r.status, loc(&r)),
        (308, "https://shop.example.com:8443/explicit-port".into())
    );
    let r = get(port, "shop.example.com", "/default-port", &[]).await;
    assert_eq!(
        (r.status, loc(&r)),
        (307, "http://shop.example.com/default-port".into())
    );
    let r = get(port, "shop.example.com", "/full/x?q=1", &[]).await;
    assert_eq!(
        (r.status, loc(&r)),
        (303, format!("http://shop.example.com:{port}/elsewhere?q=1"))
    );
    let r = get(port, "shop.example.com", "/old/page", &[]).await;
    assert_eq!(loc(&r), format!("http://shop.example.com:{port}/new/page"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrites_change_host_and_path() {
    let app = Echo::start("app");
    let port = free_port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("app", &[&app]);
    m += &route(
        "rw",
        r#"  rules:
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: app, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api/v1}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: internal.svc, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]
    backendRefs: [{name: app, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}}]
    backendRefs: [{name: app, port: 80}]
"#,
    );
    let _gw = Gateway::start(&m);
    let path = |r: Reply| r.json()["path"].as_str().unwrap().to_string();
    assert_eq!(path(get(port, "x", "/strip-prefix", &[]).await), "/");
    assert_eq!(
        path(get(port, "x", "/strip-prefix/a/b?c=1", &[]).await),
        "/a/b?c=1"
    );
    let r = get(port, "x", "/api/v1/users", &[]).await;
    assert_eq!(r.json()["host"], "internal.svc");
    assert_eq!(
        r.seen_header("x-forwarded-host").as_deref(),
        Some("x"),
        "the original host is kept"
    );
    assert_eq!(path(r), "/v2/users");
    assert_eq!(
        path(get(port, "x", "/full/anything?k=v", &[]).await),
        "/replaced?k=v"
    );
}

async fn mirror_count(echo: &Echo) -> u64 {
    let r = reqwest::get(format!("http://{}/__echo/stats", echo.addr))
        .await
        .unwrap();
    r.json::<serde_json::Value>().await.unwrap()["requests"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn mirrors_copy_a_share_and_never_delay() {
    install_crypto();
    let (app, shadow) = (Echo::start("app"), Echo::start("shadow"));
    let port = free_port();
    let dead = free_port();
    // A black hole: connections are accepted by the kernel and never answered.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("app", &[&app]);
    m += &service("shadow", &[&shadow]);
    for (name, p) in [("dead", dead), ("hole", hole_port)] {
        m += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-0, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {p}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n"
        );
    }
    m += &route(
        "mirror",
        r#"  rules:
  - matches: [{path: {value: /all}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}}}]
    backendRefs: [{name: app, port: 80}]
  - matches: [{path: {value: /half}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, percent: 50}}]
    backendRefs: [{name: app, port: 80}]
  - matches: [{path: {value: /bad-mirrors}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: hole, port: 80}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: dead, port: 80}}}
    backendRefs: [{name: app, port: 80}]
"#,
    );
    let _gw = Gateway::start(&m);

    for _ in 0..20 {
        let r = send(&client(), reqwest::Method::POST, port, "m", "/all", &[]).await;
        assert_eq!(r.service(), "app", "the real request goes to the backend");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while mirror_count(&shadow).await < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mirror_count(&shadow).await, 20, "every request mirrored");

    let _ = reqwest::Client::new()
        .post(format!("http://{}/__echo/reset", shadow.addr))
        .send()
        .await;
    for _ in 0..400 {
        get(port, "m", "/half", &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let half = mirror_count(&shadow).await;
    assert!(
        (140..=260).contains(&half),
        "about half mirrored: {half}/400"
    );

    // A mirror that never answers and one that refuses connections change nothing for the
    // client: every original is answered at once.
    let start = Instant::now();
    for _ in 0..20 {
        let r = send(
            &client(),
            reqwest::Method::POST,
            port,
            "m",
            "/bad-mirrors",
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "the original is answered");
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "mirrors never delay the original: {:?}",
        start.elapsed()
    );
    drop(hole);
}
