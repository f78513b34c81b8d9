use super::*;
use std::collections::BTreeMap;

const CHECKOUT: &str = "spiffe://cluster.local/ns/shop/sa/checkout";
const REFUNDS: &str = "spiffe://cluster.local/ns/refunds/sa/worker";
const OTHER: &str = "spiffe://cluster.local/ns/dev/sa/tool";

fn policy(id: &str, action: AuthzAction, rules: Vec<AuthzRule>) -> AuthzPolicy {
    AuthzPolicy {
        id: id.into(),
        action,
        shadow: false,
        rules,
        jwt: vec![],
    }
}

fn from_principals(p: &[&str]) -> AuthzRule {
    AuthzRule {
        from: vec![Source {
            principals: p.iter().map(|s| s.to_string()).collect(),
            ..Source::default()
        }],
        ..AuthzRule::default()
    }
}

/// The example: checkout or the refunds namespace, GET/POST on /api/v1/*, tenant acme.
fn payments() -> AuthzPolicy {
    policy(
        "payments/payments-callers",
        AuthzAction::Allow,
        vec![AuthzRule {
            from: vec![
                Source {
                    principals: vec![CHECKOUT.into()],
                    ..Source::default()
                },
                Source {
                    namespaces: vec!["refunds".into()],
                    ..Source::default()
                },
            ],
            to: vec![Operation {
                methods: vec!["GET".into(), "POST".into()],
                paths: vec!["/api/v1/*".into()],
                ..Operation::default()
            }],
            when: vec![Condition {
                header: Some("x-tenant".into()),
                claim: None,
                values: vec!["acme".into()],
                not_values: vec![],
            }],
        }],
    )
}

struct Call<'a> {
    principal: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    headers: http::HeaderMap,
}

impl<'a> Call<'a> {
    fn new(principal: Option<&'a str>, method: &'a str, path: &'a str) -> Self {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-tenant", "acme".parse().unwrap());
        Call {
            principal,
            method,
            path,
            headers,
        }
    }
}

/// The decision and what each policy recorded.
fn decide(policies: &[AuthzPolicy], call: &Call<'_>) -> (bool, Vec<(String, Decision)>) {
    let path = normalize_path(call.path);
    let req = Request {
        principal: call.principal,
        ip: Some("10.0.0.7".parse().unwrap()),
        method: call.method,
        path: &path,
        ports: &[8080],
        headers: &call.headers,
        auth: None,
    };
    let mut recorded = Vec::new();
    let ok = evaluate(
        0..policies.len(),
        |i| &policies[i],
        &req,
        |i, d| recorded.push((policies[i].id.clone(), d)),
    );
    (ok, recorded)
}

#[test]
fn no_policy_allows_everything() {
    assert!(decide(&[], &Call::new(None, "DELETE", "/x")).0);
}

#[test]
fn allow_list_admits_its_callers_only() {
    let p = [payments()];
    let (ok, rec) = decide(&p, &Call::new(Some(CHECKOUT), "GET", "/api/v1/charges"));
    assert!(ok);
    assert_eq!(
        rec,
        [("payments/payments-callers".into(), Decision::Allowed)]
    );
    assert!(decide(&p, &Call::new(Some(REFUNDS), "POST", "/api/v1/refund")).0);
    // Wrong caller, method, path, tenant, or no identity at all.
    assert!(!decide(&p, &Call::new(Some(OTHER), "GET", "/api/v1/charges")).0);
    assert!(!decide(&p, &Call::new(Some(CHECKOUT), "DELETE", "/api/v1/charges")).0);
    assert!(!decide(&p, &Call::new(Some(CHECKOUT), "GET", "/admin")).0);
    assert!(!decide(&p, &Call::new(None, "GET", "/api/v1/charges")).0);
    let mut other_tenant = Call::new(Some(CHECKOUT), "GET", "/api/v1/charges");
    other_tenant
        .headers
        .insert("x-tenant", "globex".parse().unwrap());
    let (ok, rec) = decide(&p, &other_tenant);
    assert!(!ok);
    assert_eq!(
        rec,
        [("payments/payments-callers".into(), Decision::Denied)]
    );
}

#[test]
fn dot_segments_do_not_escape_a_path_rule() {
    let p = [payments()];
    assert!(!decide(&p, &Call::new(Some(CHECKOUT), "GET", "/api/v1/../../admin")).0);
    let deny = [policy(
        "ns/no-admin",
        AuthzAction::Deny,
        vec![AuthzRule {
            to: vec![Operation {
                paths: vec!["/admin*".into()],
                ..Operation::default()
            }],
            ..AuthzRule::default()
        }],
    )];
    for sneaky in ["/x/../admin", "/%61dmin/users", "//admin", "/./admin?q=1"] {
        assert!(
            !decide(&deny, &Call::new(None, "GET", sneaky)).0,
            "{sneaky}"
        );
    }
    assert!(decide(&deny, &Call::new(None, "GET", "/public")).0);
}

#[test]
fn deny_wins_over_allow() {
    let deny = policy(
        "payments/no-dev",
        AuthzAction::Deny,
        vec![AuthzRule {
            from: vec![Source {
                namespaces: vec!["shop".into()],
                ..Source::default()
            }],
            ..AuthzRule::default()
        }],
    );
    let p = [payments(), deny];
    let (ok, rec) = decide(&p, &Call::new(Some(CHECKOUT), "GET", "/api/v1/charges"));
    assert!(!ok);
    assert_eq!(rec, [("payments/no-dev".into(), Decision::Denied)]);
}

#[test]
fn an_allow_policy_without_rules_denies_all() {
    let p = [policy("ns/nothing", AuthzAction::Allow, vec![])];
    assert!(!decide(&p, &Call::new(Some(CHECKOUT), "GET", "/")).0);
    // An empty rule matches everything.
    let p = [policy(
        "ns/all",
        AuthzAction::Allow,
        vec![AuthzRule::default()],
    )];
    assert!(decide(&p, &Call::new(None, "GET", "/")).0);
}

#[test]
fn any_matching_allow_policy_suffices() {
    let p = [
        payments(),
        policy(
            "payments/ops",
            AuthzAction::Allow,
            vec![from_principals(&[OTHER])],
        ),
    ];
    let (ok, rec) = decide(&p, &Call::new(Some(OTHER), "DELETE", "/anything"));
    assert!(ok);
    assert_eq!(rec, [("payments/ops".into(), Decision::Allowed)]);
    let (ok, rec) = decide(&p, &Call::new(Some(REFUNDS), "DELETE", "/x"));
    assert!(!ok);
    assert_eq!(
        rec.len(),
        2,
        "each ALLOW policy that did not match is counted: {rec:?}"
    );
}

#[test]
fn not_principals_star_means_no_identity() {
    let p = [policy(
        "ns/require-mtls",
        AuthzAction::Deny,
        vec![AuthzRule {
            from: vec![Source {
                not_principals: vec!["*".into()],
                ..Source::default()
            }],
            ..AuthzRule::default()
        }],
    )];
    assert!(!decide(&p, &Call::new(None, "GET", "/")).0);
    assert!(decide(&p, &Call::new(Some(OTHER), "GET", "/")).0);
    // And a principal pattern never matches a caller without one.
    let p = [policy(
        "ns/any-id",
        AuthzAction::Allow,
        vec![from_principals(&["*"])],
    )];
    assert!(!decide(&p, &Call::new(None, "GET", "/")).0);
    assert!(decide(&p, &Call::new(Some(OTHER), "GET", "/")).0);
}

#[test]
fn patterns_and_ip_blocks() {
    let p = [policy(
        "ns/p",
        AuthzAction::Allow,
        vec![
            from_principals(&["*/sa/checkout"]),
            AuthzRule {
                from: vec![Source {
                    ip_blocks: vec!["10.0.0.0/24".parse().unwrap()],
                    not_ip_blocks: vec!["10.0.0.7/32".parse().unwrap()],
                    ..Source::default()
                }],
                ..AuthzRule::default()
            },
        ],
    )];
    assert!(decide(&p, &Call::new(Some(CHECKOUT), "GET", "/")).0);
    // 10.0.0.7 is in the block but excluded.
    assert!(!decide(&p, &Call::new(Some(OTHER), "GET", "/")).0);
}

#[test]
fn shadow_policies_only_record() {
    let mut deny = policy(
        "ns/shadow-deny",
        AuthzAction::Deny,
        vec![from_principals(&[OTHER])],
    );
    deny.shadow = true;
    let (ok, rec) = decide(&[deny], &Call::new(Some(OTHER), "GET", "/"));
    assert!(ok);
    assert_eq!(rec, [("ns/shadow-deny".into(), Decision::ShadowDenied)]);

    let mut allow = payments();
    allow.shadow = true;
    let p = [allow];
    let (ok, rec) = decide(&p, &Call::new(Some(OTHER), "GET", "/api/v1/x"));
    assert!(ok);
    assert_eq!(
        rec,
        [("payments/payments-callers".into(), Decision::ShadowDenied)]
    );
    let (ok, rec) = decide(&p, &Call::new(Some(CHECKOUT), "GET", "/api/v1/x"));
    assert!(ok);
    assert_eq!(
        rec,
        [("payments/payments-callers".into(), Decision::ShadowAllowed)]
    );
}

#[test]
fn audit_records_and_changes_nothing() {
    let p = [policy(
        "ns/audit",
        AuthzAction::Audit,
        vec![from_principals(&[OTHER])],
    )];
    let (ok, rec) = decide(&p, &Call::new(Some(OTHER), "GET", "/"));
    assert!(ok);
    assert_eq!(rec, [("ns/audit".into(), Decision::Audited)]);
}

#[test]
fn headers_with_not_values() {
    let p = [policy(
        "ns/h",
        AuthzAction::Deny,
        vec![AuthzRule {
            when: vec![Condition {
                header: Some("x-env".into()),
                claim: None,
                values: vec![],
                not_values: vec!["prod".into()],
            }],
            ..AuthzRule::default()
        }],
    )];
    // Without the header, "not prod" holds: denied.
    assert!(!decide(&p, &Call::new(None, "GET", "/")).0);
    let mut prod = Call::new(None, "GET", "/");
    prod.headers.insert("x-env", "prod".parse().unwrap());
    assert!(decide(&p, &prod).0);
}

#[test]
fn handshake_decides_principal_only_rules() {
    let allow = payments();
    let deny = policy(
        "ns/deny-dev",
        AuthzAction::Deny,
        vec![AuthzRule {
            from: vec![Source {
                namespaces: vec!["dev".into()],
                ..Source::default()
            }],
            ..AuthzRule::default()
        }],
    );
    let p = [allow, deny];
    let admit = |principal: Option<&str>| {
        let mut rec = Vec::new();
        let ok = admit_peer(
            0..p.len(),
            |i| &p[i],
            &Peer {
                principal,
                ip: None,
            },
            |i, d| rec.push((p[i].id.clone(), d)),
        );
        (ok, rec)
    };
    // Checkout may make some requests: decided per request.
    assert_eq!(admit(Some(CHECKOUT)), (true, vec![]));
    // dev is denied outright, by the DENY policy.
    assert_eq!(
        admit(Some(OTHER)),
        (false, vec![("ns/deny-dev".into(), Decision::Denied)])
    );
    // An unknown caller cannot match the ALLOW policy's sources.
    let stranger = "spiffe://cluster.local/ns/web/sa/front";
    assert_eq!(
        admit(Some(stranger)),
        (
            false,
            vec![("payments/payments-callers".into(), Decision::Denied)]
        )
    );
}

#[test]
fn normalize() {
    for (raw, want) in [
        ("/a/b?x=1", "/a/b"),
        ("/a//b", "/a/b"),
        ("/a/./b/../c", "/a/c"),
        ("/../..", "/"),
        ("/a/b/..", "/a/"),
        ("/%7euser/%2Fx%2f", "/~user/%2Fx%2F"),
        ("*", "*"),
        ("/caf\u{e9}/%41", "/caf\u{e9}/A"),
    ] {
        assert_eq!(normalize_path(raw), want, "{raw}");
    }
    assert!(matches!(
        normalize_path("/plain/path"),
        std::borrow::Cow::Borrowed(_)
    ));
}

#[test]
fn sidecar_policies_pick_the_workloads_services() {
    let mut sp = Policies::default();
    sp.policies
        .insert("payments/payments-callers".into(), payments());
    sp.policies.insert(
        "payments/ns-wide".into(),
        policy("payments/ns-wide", AuthzAction::Deny, vec![]),
    );
    sp.namespaces
        .insert("payments".into(), vec!["payments/ns-wide".into()]);
    sp.services.push(ServicePolicies {
        service: crate::ObjectName::new("payments", "payments"),
        selector: BTreeMap::from([("app".into(), "payments".into())]),
        ports: vec![ServicePort {
            port: 80,
            target_ports: vec![8080],
        }],
        policies: vec!["payments/payments-callers".into()],
    });
    let labels = BTreeMap::from([
        ("app".to_string(), "payments".to_string()),
        ("version".to_string(), "v2".to_string()),
    ]);
    let ids: Vec<&str> = sp
        .workload_policies(Some("payments"), &labels)
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(ids, ["payments/ns-wide", "payments/payments-callers"]);
    assert_eq!(
        sp.addressed_ports(Some("payments"), &labels, 8080),
        [8080, 80]
    );
    let other = BTreeMap::from([("app".to_string(), "ledger".to_string())]);
    assert_eq!(sp.workload_policies(Some("payments"), &other).len(), 1);
    assert!(sp.workload_policies(Some("shop"), &labels).is_empty());
    assert!(sp.for_namespace("shop").is_empty());
    assert_eq!(sp.for_namespace("payments"), sp);
}

#[test]
fn request_principals_and_claims_read_the_verified_token() {
    let p = [policy(
        "ns/users",
        AuthzAction::Allow,
        vec![AuthzRule {
            from: vec![Source {
                request_principals: vec!["https://idp.test/*".into()],
                ..Source::default()
            }],
            when: vec![Condition {
                header: None,
                claim: Some(vec!["realm".into(), "roles".into()]),
                values: vec!["buyer".into()],
                not_values: vec![],
            }],
            ..AuthzRule::default()
        }],
    )];
    let headers = http::HeaderMap::new();
    let decide = |auth: Option<&Verified>| {
        let req = Request {
            principal: None,
            ip: None,
            method: "GET",
            path: "/",
            ports: &[80],
            headers: &headers,
            auth,
        };
        evaluate(0..1, |i| &p[i], &req, |_, _| {})
    };
    let token = |roles: serde_json::Value| Verified {
        principal: "https://idp.test/alice".into(),
        claims: serde_json::json!({"realm": {"roles": roles}})
            .as_object()
            .unwrap()
            .clone(),
    };
    assert!(decide(Some(&token(serde_json::json!(["viewer", "buyer"])))));
    assert!(decide(Some(&token(serde_json::json!("buyer")))));
    assert!(!decide(Some(&token(serde_json::json!(["viewer"])))));
    assert!(!decide(None), "no token, no request principal");
    // A handshake cannot know the token: such a rule never refuses a peer outright.
    let peer = Peer {
        principal: None,
        ip: None,
    };
    assert!(admit_peer(0..1, |i| &p[i], &peer, |_, _| {}));
}
