//! Invalid command lines exit with status 2 and name what is wrong, before binding anything.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir-sidecar"))
        .arg("--identity-dir")
        .arg(dir.path())
        .args(["--admin", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_arguments_exit_2_with_the_reason() {
    let allow = ["--allow", "spiffe://weir.test/*"];
    let cases: &[(&[&str], &str)] = &[
        (
            &["--inbound", "15006", "--allow", "spiffe://weir.test/*"],
            "PORT=APP_PORT",
        ),
        (
            &["--inbound", "15006=8080,lenient", allow[0], allow[1]],
            "lenient",
        ),
        (
            &["--inbound", "15006=8080", "--allow", "weir.test/ns/a"],
            "not a SPIFFE ID",
        ),
        (
            &["--inbound", "15006=8080", "--allow", "spiffe://weir.test*"],
            "whole trust domain",
        ),
        (&["--inbound", "15006=8080"], "--allow is required"),
        (
            &["--inbound", "1=2", "--inbound", "1=3", allow[0], allow[1]],
            "twice",
        ),
        (&[allow[0], allow[1]], "--inbound"),
        (
            &[
                "--inbound",
                "1=2",
                "--identity-setter",
                "x",
                allow[0],
                allow[1],
            ],
            "not a SPIFFE",
        ),
        (
            &[
                "--inbound",
                "1=2",
                allow[0],
                allow[1],
                "--outbound",
                "localhost:1",
            ],
            "neither an address",
        ),
        (
            &[
                "--inbound",
                "1=2",
                allow[0],
                allow[1],
                "--outbound",
                "127.0.0.1:9",
            ],
            "needs --upstream",
        ),
        (
            &["--inbound", "1=2", allow[0], allow[1], "--upstream", "gw:0"],
            "not 1-65535",
        ),
        (
            &[
                "--inbound",
                "1=2",
                allow[0],
                allow[1],
                "--upstream",
                "gw:15008",
            ],
            "--upstream-id is required",
        ),
        (
            &[
                "--inbound",
                "1=2",
                allow[0],
                allow[1],
                "--upstream",
                "gw:15008",
                "--upstream-id",
                "spiffe://weir.test*",
            ],
            "whole trust domain",
        ),
        (
            &[
                "--inbound",
                "15001=2",
                allow[0],
                allow[1],
                "--upstream",
                "gw:15008",
                "--upstream-id",
                "spiffe://weir.test/ns/weir-system/*",
            ],
            "is an --inbound port",
        ),
    ];
    for (args, why) in cases {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(why),
            "{args:?} should say {why:?}: {stderr}"
        );
    }

    let (code, stderr) = Command::new(env!("CARGO_BIN_EXE_weir-sidecar"))
        .args([
            "--identity-dir",
            "/nonexistent/weir",
            "--inbound",
            "1=2",
            allow[0],
            allow[1],
        ])
        .output()
        .map(|o| {
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not a directory"), "{stderr}");
}
