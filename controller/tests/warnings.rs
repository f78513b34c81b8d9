//! `StatusReport::warnings()`: what the gateway logs at WARN and lists in `/config` after a
//! reload. Each is read from the report's conditions, never from printed text.

use std::path::Path;
use weir_controller::source::files;
use weir_controller::translate;

fn warnings(fixture: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let loaded = files::load(&path).unwrap();
    translate(&loaded.snapshot).1.warnings()
}

#[test]
fn a_clean_config_has_no_warnings() {
    for fixture in [
        "matches.yaml",
        "backend-weights.yaml",
        "precedence-1-exact-path.yaml",
        "mesh-split.yaml",
        "certificate-valid.yaml",
    ] {
        assert_eq!(warnings(fixture), Vec::<String>::new(), "{fixture}");
    }
}

#[test]
fn each_problem_is_one_line_naming_the_object_condition_and_reason() {
    let w = warnings("backend-not-found.yaml");
    assert!(!w.is_empty());
    assert!(
        w.iter()
            .all(|l| l.starts_with("HTTPRoute ")
                && l.contains("ResolvedRefs=False (BackendNotFound: ")),
        "{w:#?}"
    );

    let w = warnings("listener-conflict-hostname.yaml");
    assert!(
        w.iter()
            .any(|l| l.contains("Conflicted=True (HostnameConflict: ")),
        "{w:#?}"
    );

    let w = warnings("gateway-no-valid-listener.yaml");
    assert!(
        w.iter().any(|l| l.starts_with("Gateway ") && l.contains("Accepted=False (ListenersNotValid: ")),
        "{w:#?}"
    );

    let w = warnings("gatewayclass-selection.yaml");
    assert!(w.iter().any(|l| l.contains(": not attached: ")), "{w:#?}");
}
