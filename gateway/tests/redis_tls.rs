//! Redis behind TLS and a password, as a cluster should run it: a real `redis-server` with
//! `--tls-port` and `--requirepass`, and a real gateway reaching it over `rediss://`,
//! trusting the CA in `--redis-ca-file`, with the password from `--redis-password-file` or
//! the URL. Neither way does the password reach the log.

mod support;

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const PASSWORD: &str = "hunter2-not-in-logs";

/// A TLS-only redis-server on a free port, requiring `PASSWORD`.
struct TlsRedis {
    _proc: Proc,
    port: u16,
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (cert, key) = pki.leaf(&["localhost"]);
        let path = |n: &str| dir.path().join(n);
        std::fs::write(path("redis.crt"), cert).unwrap();
        std::fs::write(path("redis.key"), key).unwrap();
        std::fs::write(path("ca.crt"), pki.ca_pem()).unwrap();
        let port = free_port();
        let proc = Proc::spawn(
            "redis-server (TLS)",
            Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                ])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--requirepass",
                    PASSWORD,
                ])
                .arg("--tls-cert-file")
                .arg(path("redis.crt"))
                .arg("--tls-key-file")
                .arg(path("redis.key"))
                .arg("--tls-ca-cert-file")
                .arg(path("ca.crt"))
                .args(["--tls-auth-clients", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server with TLS did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis {
            _proc: proc,
            port,
            ca: path("ca.crt"),
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_shared_over_tls_with_a_password_that_is_never_logged() {
    let redis = TlsRedis::start();
    let (_app, port, m) = site();
    let files = tempfile::tempdir().unwrap();
    let ca = redis.ca.to_str().unwrap();

    // The password from a file (a mounted Secret).
    let pw = files.path().join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let url = format!("rediss://localhost:{}", redis.port);
    let from_file = Gateway::start_with(
        &m,
        &[
            "--redis",
            &url,
            "--redis-ca-file",
            ca,
            "--redis-password-file",
            pw.to_str().unwrap(),
        ],
    );
    assert_eq!(get(port, "quota", "/1", &[]).await.status, 200);
    assert_eq!(get(port, "quota", "/2", &[]).await.status, 429);
    from_file.wait_metric("weir_ratelimit_redis_calls_total", 1.0);
    assert_eq!(
        from_file.metric("weir_ratelimit_sync_errors_total"),
        0.0,
        "{}",
        from_file.log()
    );
    assert_eq!(from_file.metric("weir_ratelimit_breaker_open"), 0.0);
    let log = from_file.log();
    assert!(
        log.contains(&format!("rediss://localhost:{}", redis.port)),
        "{log}"
    );
    assert!(
        !log.contains(PASSWORD),
        "the password is in the log:\n{log}"
    );
    drop(from_file);

    // The password in the URL, logged as ***; the same limit, shared through Redis.
    let (_app, port, m) = site();
    let url = format!("rediss://:{PASSWORD}@localhost:{}", redis.port);
    let in_url = Gateway::start_with(&m, &["--redis", &url, "--redis-ca-file", ca]);
    // The first gateway's admit is counted in Redis: the one-a-minute limit is used up.
    assert_eq!(
        get(port, "quota", "/1", &[]).await.status,
        429,
        "{}",
        in_url.log()
    );
    in_url.wait_metric("weir_ratelimit_redis_calls_total", 1.0);
    assert_eq!(
        in_url.metric("weir_ratelimit_sync_errors_total"),
        0.0,
        "{}",
        in_url.log()
    );
    let log = in_url.log();
    assert!(log.contains(":***@localhost"), "{log}");
    assert!(
        !log.contains(PASSWORD),
        "the password is in the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_or_an_untrusted_server_is_a_counted_failure_not_a_leak() {
    let redis = TlsRedis::start();
    let files = tempfile::tempdir().unwrap();
    let wrong = files.path().join("wrong");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let right = files.path().join("right");
    std::fs::write(&right, PASSWORD).unwrap();
    let url = format!("rediss://localhost:{}", redis.port);
    for extra in [
        // Trusted server, wrong password.
        vec![
            "--redis-ca-file",
            redis.ca.to_str().unwrap(),
            "--redis-password-file",
            wrong.to_str().unwrap(),
        ],
        // Right password, but the server's CA is not trusted (the system roots are).
        vec!["--redis-password-file", right.to_str().unwrap()],
    ] {
        let (_app, port, m) = site();
        let mut args = vec!["--redis", url.as_str()];
        args.extend(extra.iter().copied());
        let gw = Gateway::start_with(&m, &args);
        // Requests are still answered, by each policy's failureMode.
        for i in 0..3 {
            let status = get(port, "quota", &format!("/{i}"), &[]).await.status;
            assert!(status == 200 || status == 429, "{status}");
        }
        gw.wait_metric("weir_ratelimit_sync_errors_total", 1.0);
        let log = gw.log();
        assert!(
            !log.contains("not-the-password") && !log.contains(PASSWORD),
            "{log}"
        );
    }
}

#[test]
fn bad_redis_flags_stop_the_start_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap();
    for (args, says) in [
        (vec!["--redis-password-file", empty], "need --redis"),
        (
            vec!["--redis", "redis://r:6379", "--redis-password-file", empty],
            "empty",
        ),
        (
            vec![
                "--redis",
                "redis://r:6379",
                "--redis-ca-file",
                "/nonexistent",
            ],
            "--redis-ca-file",
        ),
        (vec!["--redis", "http://u:secret-pw@r"], "expected redis://"),
    ] {
        let said = start_refused(&args);
        assert!(said.contains(says), "{args:?}: {said}");
        assert!(!said.contains("secret-pw"), "{said}");
    }
}
