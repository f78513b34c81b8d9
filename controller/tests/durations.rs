//! The one duration grammar (`weir_model::duration`, which the sidecar and the IR use
//! without Kubernetes crates) must read GEP-2257 exactly as the `gateway-api` crate does, so
//! that a timeout accepted in a route is accepted on the sidecar's command line and the
//! other way round.

use proptest::prelude::*;
use std::str::FromStr;

fn agree(text: &str) {
    let ours = weir_model::duration::parse(text).map(|d| d.as_millis());
    let theirs = gateway_api::Duration::from_str(text).map(|d| d.as_millis());
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{text:?}"),
        (Err(_), Err(_)) => {}
        _ => panic!("{text:?}: weir-model says {ours:?}, gateway-api says {theirs:?}"),
    }
}

#[test]
fn the_usual_values_read_alike() {
    for text in [
        "0s",
        "1ms",
        "10s",
        "500ms",
        "1m30s",
        "1h",
        "2h45m",
        "1h2m3s4ms",
        "99999s",
        "100000s",
        "",
        "10",
        "1.5s",
        "-1s",
        "1d",
        "1s1s",
        "1s1m",
        "1h1h",
        "1S",
        " 1s",
        "0h0m0s0ms",
    ] {
        agree(text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Strings built from digits and unit letters, where the two grammars could differ.
    #[test]
    fn any_string_of_digits_and_units_reads_alike(text in "([0-9]{0,6}(h|m|s|ms|us|d|)){0,5}") {
        agree(&text);
    }
}
