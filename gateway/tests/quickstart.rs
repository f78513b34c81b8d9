//! The quickstart of `script/demo`, served as the demo serves it (ports moved to free ones):
//! HTTP redirects to HTTPS, and the HTTPS route splits 90/10 between stable and canary.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn quickstart_redirects_and_splits_ninety_ten() {
    let (stable, canary) = (Echo::start("app-stable"), Echo::start("app-canary"));
    let (http, https) = (free_port(), free_port());
    let m = example("quickstart", &["gateway.yaml", "app.yaml", "backends.yaml"]);
    let m = m
        .replace("port: 8080", &format!("port: {http}"))
        .replace("port: 8443", &format!("port: {https}"))
        .replace("port: 9001", &format!("port: {}", stable.addr.port()))
        .replace("port: 9002", &format!("port: {}", canary.addr.port()));
    let pki = Pki::new();
    let m = format!(
        "{m}\n{}",
        pki.secret("quickstart-tls", &["app.localhost", "*.localhost"])
            .replace(
                "metadata: {name: quickstart-tls}",
                "metadata: {name: quickstart-tls, namespace: quickstart}"
            )
    );
    let _gw = Gateway::start(&m);

    let r = get(http, "app.localhost", "/hello?x=1", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.headers["location"],
        format!("https://app.localhost:{https}/hello?x=1")
    );

    let client = pki.client(&["app.localhost"], https, true);
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let resp = client
            .get(format!("https://app.localhost:{https}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["strict-transport-security"],
            "max-age=31536000"
        );
        let service = resp.headers()["x-echo-service"]
            .to_str()
            .unwrap()
            .to_string();
        *counts.entry(service).or_insert(0) += 1;
    }
    assert_eq!(counts["app-stable"], 90, "{counts:?}");
    assert_eq!(counts["app-canary"], 10, "{counts:?}");
}
