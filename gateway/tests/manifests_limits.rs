//! Manifests the file source refuses: a file over the size cap and symlink loops in the
//! watched directory. Each is reported in `/config` and the log while the last good config
//! keeps serving, and once it is removed the next good change applies.

mod support;

use std::fs::File;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};
use support::*;

fn manifests(port: u16, app: &Echo, routes: &[&str]) -> String {
    let mut m = gateway(&[http_listener("http", port)]);
    m += &service("app", &[app]);
    for r in routes {
        m += &route(
            r,
            &format!(
                "  rules:\n  - matches: [{{path: {{type: Exact, value: /{r}}}}}]\n    backendRefs: [{{name: app, port: 80}}]\n"
            ),
        );
    }
    m
}

/// Waits until `/config` reports an error containing every one of `parts`, and returns it.
fn wait_for_error(gw: &Gateway, parts: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let error = gw.config()["error"].as_str().unwrap_or("").to_owned();
        if parts.iter().all(|p| error.contains(p)) {
            return error;
        }
        assert!(
            Instant::now() < deadline,
            "no error naming {parts:?}; /config error: {error:?}\nlog:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The refusal is logged with the same words, and the last good config keeps serving.
async fn still_serving(gw: &Gateway, port: u16, generation: u64, parts: &[&str], path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = gw.log();
        // The error spans lines: the summary, then one line per problem.
        if log.contains("last good config keeps serving") && parts.iter().all(|p| log.contains(p)) {
            break;
        }
        assert!(Instant::now() < deadline, "{parts:?} not logged:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.generation(), generation);
    assert_eq!(get(port, "h", path, &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_files_and_symlink_loops_are_refused_and_the_last_good_config_serves() {
    let app = Echo::start("app");
    let port = free_port();
    let gw = Gateway::start(&manifests(port, &app, &["one"]));
    assert_eq!(get(port, "h", "/one", &[]).await.status, 200);
    let generation = gw.generation();

    // A file over the cap (sparse: its size is refused before anything is read).
    let big = gw.dir().join("big.yaml");
    File::create(&big).unwrap().set_len((16 << 20) + 1).unwrap();
    let big_name = big.display().to_string();
    let parts = [big_name.as_str(), "over the 16 MiB limit for one file"];
    wait_for_error(&gw, &parts);
    still_serving(&gw, port, generation, &parts, "/one").await;

    std::fs::remove_file(&big).unwrap();
    let generation = gw.write_and_wait(&manifests(port, &app, &["one", "two"]));
    assert!(gw.config()["error"].is_null(), "{}", gw.config());
    assert_eq!(get(port, "h", "/two", &[]).await.status, 200);

    // A directory link back to the manifests directory itself.
    let up = gw.dir().join("up");
    symlink(".", &up).unwrap();
    let up_name = format!("{}: symlink loop", up.display());
    let parts = [up_name.as_str()];
    wait_for_error(&gw, &parts);
    still_serving(&gw, port, generation, &parts, "/two").await;

    std::fs::remove_file(&up).unwrap();
    let generation = gw.write_and_wait(&manifests(port, &app, &["one", "two", "three"]));
    assert!(gw.config()["error"].is_null(), "{}", gw.config());
    assert_eq!(get(port, "h", "/three", &[]).await.status, 200);

    // A link to itself.
    let own = gw.dir().join("own.yaml");
    symlink("own.yaml", &own).unwrap();
    let own_name = format!("symlink loop: {0} -> {0}", own.display());
    let parts = [own_name.as_str()];
    wait_for_error(&gw, &parts);
    still_serving(&gw, port, generation, &parts, "/three").await;

    std::fs::remove_file(&own).unwrap();
    gw.write_and_wait(&manifests(port, &app, &["four"]));
    assert!(gw.config()["error"].is_null(), "{}", gw.config());
    assert_eq!(get(port, "h", "/four", &[]).await.status, 200);
    assert_eq!(get(port, "h", "/one", &[]).await.status, 404);
}
