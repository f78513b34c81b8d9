use super::*;
use weir_model::authz::{AuthzRule, Source};
use weir_model::{ObjectName, RouteKind, Rule, RuleId};

fn config_naming(ids: &[&str]) -> Config {
    let mut c = Config::default();
    let route = ObjectName::new("default", "r");
    c.rules.insert(
        RuleId::new(RouteKind::Http, &route, 0),
        Rule {
            kind: RouteKind::Http,
            route,
            index: 0,
            name: None,
            filters: vec![],
            backends: vec![],
            timeouts: Default::default(),
            rate_limit: None,
            authz: ids.iter().map(|s| s.to_string()).collect(),
            session_persistence: None,
            split_key: None,
            retry: None,
        },
    );
    c
}

fn input<'a>(principal: Option<&'a str>, headers: &'a http::HeaderMap) -> Input<'a> {
    Input {
        principal,
        client_ip: None,
        method: "GET",
        target: "/",
        port: 80,
        headers,
    }
}

#[test]
fn a_policy_missing_from_the_config_denies_rather_than_opens() {
    let config = config_naming(&["default/ghost"]);
    let mut problems = Problems::default();
    let (policies, index) = compile(&config, &mut problems);
    assert_eq!(problems.into_vec().len(), 1);
    let rule = indexes(&index, &["default/ghost".to_string()]);
    let metrics = Metrics::new();
    let headers = http::HeaderMap::new();
    let v = check(&policies, &[], &rule, &input(None, &headers), &metrics).unwrap();
    assert!(!v.allowed);
}

#[test]
fn requests_without_policies_are_not_decided_and_decisions_are_counted() {
    let mut config = config_naming(&["default/callers"]);
    config.authz.policies.insert(
        "default/callers".into(),
        AuthzPolicy {
            id: "default/callers".into(),
            action: AuthzAction::Allow,
            shadow: false,
            rules: vec![AuthzRule {
                from: vec![Source {
                    principals: vec!["spiffe://td/ns/a/sa/b".into()],
                    ..Source::default()
                }],
                ..AuthzRule::default()
            }],
            jwt: vec![],
        },
    );
    let mut problems = Problems::default();
    let (policies, index) = compile(&config, &mut problems);
    assert!(problems.into_vec().is_empty());
    let rule = indexes(&index, &["default/callers".to_string()]);
    let metrics = Metrics::new();
    let headers = http::HeaderMap::new();
    assert_eq!(
        check(&policies, &[], &[], &input(None, &headers), &metrics),
        None
    );
    let yes = check(
        &policies,
        &[],
        &rule,
        &input(Some("spiffe://td/ns/a/sa/b"), &headers),
        &metrics,
    );
    assert_eq!(
        yes,
        Some(Verdict {
            allowed: true,
            unauthenticated: false,
            by: Some((0, Decision::Allowed))
        })
    );
    let no = check(&policies, &[], &rule, &input(None, &headers), &metrics);
    assert_eq!(
        no,
        Some(Verdict {
            allowed: false,
            unauthenticated: false,
            by: Some((0, Decision::Denied))
        })
    );
    let count = |d: &str| {
        metrics
            .authz_decisions
            .with_label_values(&["default/callers", "ALLOW", d])
            .get()
    };
    assert_eq!((count("allowed"), count("denied")), (1, 1));
}
