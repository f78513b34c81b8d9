//! `weir-sidecar-bench` end to end at a trickle: every phase runs against the real
//! processes (echo, two sidecars, SVIDs rotated) and no request fails. Figures are not
//! checked: this machine is shared, and speed belongs to the benchmark.

use std::time::Duration;
use weir_loadtest::procs::{echo_bin, sidecar_bin};
use weir_loadtest::sidecar::mesh::MeshOptions;
use weir_loadtest::sidecar::{self, DIRECT, Options, SIDECARS, report};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_runs_every_phase_without_a_failed_request() {
    let sidecar = sidecar_bin().unwrap();
    let echo = echo_bin().unwrap();
    assert_eq!(sidecar.parent(), echo.parent());
    let work = tempfile::tempdir().unwrap();
    let opts = Options {
        mesh: MeshOptions {
            bin_dir: echo.parent().unwrap().to_path_buf(),
            work_dir: work.path().to_path_buf(),
            ca_dir: None,
            sidecar_threads: None,
            sidecar_in_port: None,
            via: None,
            keep_logs: true,
        },
        rate: 20.0,
        secs: 1.0,
        memory_rate: 20.0,
        memory_secs: 1.0,
        rotation_rate: 20.0,
        rotation_secs: 2.5,
        rotate_every: Duration::from_secs(1),
        nginx: false,
        envoy: false,
    };
    let report = sidecar::run(&opts, |_| {}).await.unwrap();
    let names: Vec<&str> = report.paths.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, [DIRECT, SIDECARS]);
    assert!(report.paths.iter().all(|p| p.requests >= 15), "{report:?}");
    assert_eq!(report.failed(), 0, "{report:?}");
    let r = &report.rotation;
    assert!(r.rotations >= 1, "{r:?}");
    assert_eq!((r.handshake_errors, r.reload_errors), (0.0, 0.0), "{r:?}");
    assert!(report.idle.iter().all(|m| m.rss > 0), "{report:?}");
    // The tables render from what was measured.
    assert!(report::paths(&report).contains(SIDECARS));
    assert_eq!(report::rows(&report, &opts).len(), 5);
}
