//! Policy ancestor status (BackendTLSPolicy): the `ancestors` list is shared by every
//! controller, keyed by ancestorRef and controllerName, so Weir replaces its own entries and
//! keeps the others as observed, the way route parents are merged.

use super::plan::{StatusPatch, Target, carry, key, push};
use crate::CONTROLLER_NAME;
use crate::source::Snapshot;
use crate::translate::StatusReport;
use gateway_api::apis::standard::backendtlspolicies::BackendTlsPolicyStatus;

pub(super) fn plan(out: &mut Vec<StatusPatch>, snapshot: &Snapshot, report: &StatusReport) {
    for policy in &snapshot.backend_tls_policies {
        let seen = policy.status.clone().unwrap_or_default();
        let had_mine = seen
            .ancestors
            .iter()
            .any(|a| a.controller_name == CONTROLLER_NAME);
        let mut mine = report
            .backend_tls_policies
            .get(&key(policy))
            .map(|s| s.ancestors.clone())
            .unwrap_or_default();
        if mine.is_empty() && !had_mine {
            continue;
        }
        for a in &mut mine {
            let old = seen
                .ancestors
                .iter()
                .find(|o| o.controller_name == CONTROLLER_NAME && o.ancestor_ref == a.ancestor_ref);
            if let Some(old) = old {
                carry(a.conditions.iter_mut(), old.conditions.iter());
            }
        }
        let others = seen
            .ancestors
            .iter()
            .filter(|a| a.controller_name != CONTROLLER_NAME)
            .cloned();
        let want = BackendTlsPolicyStatus {
            ancestors: others.chain(mine).collect(),
        };
        push(out, Target::BackendTlsPolicy, policy, &want, &policy.status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::files::parse_str;
    use serde_json::json;
    use std::path::Path;

    const MANIFESTS: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: weir}
spec: {controllerName: weir.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: weir
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec: {type: ExternalName, externalName: api.example.com, ports: [{name: https, port: 443}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: api, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: api, namespace: default}
spec:
  targetRefs: [{group: '', kind: Service, name: api}]
  validation: {hostname: api.example.com, wellKnownCACertificates: System}
";

    fn ancestor(controller: &str, gateway: &str, time: &str) -> serde_json::Value {
        json!({
            "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "default", "name": gateway},
            "controllerName": controller,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                            "observedGeneration": 1, "lastTransitionTime": time}],
        })
    }

    #[test]
    fn weirs_ancestors_replace_its_own_and_keep_other_controllers() {
        let mut snapshot = parse_str(Path::new("t.yaml"), MANIFESTS).unwrap().snapshot;
        let (_, mut report) = crate::translate(&snapshot);
        report.stamp(jiff::Timestamp::from_second(2_000_000_000).unwrap());
        // Seen: another controller's entry, and Weir's for a Gateway it no longer serves.
        let seen = json!({"ancestors": [
            ancestor("example.net/other", "theirs", "2020-01-01T00:00:00Z"),
            ancestor(CONTROLLER_NAME, "gone", "2020-01-01T00:00:00Z"),
            ancestor(CONTROLLER_NAME, "gw", "2021-01-01T00:00:00Z"),
        ]});
        snapshot.backend_tls_policies[0].status = Some(serde_json::from_value(seen).unwrap());
        let mut out = Vec::new();
        plan(&mut out, &snapshot, &report);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].target, Target::BackendTlsPolicy);
        let ancestors = out[0].status["ancestors"].as_array().unwrap();
        let names: Vec<&str> = ancestors
            .iter()
            .map(|a| a["ancestorRef"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["theirs", "gw"]);
        // Accepted stayed True: its transition time is the one observed.
        assert_eq!(
            ancestors[1]["conditions"][0]["lastTransitionTime"],
            "2021-01-01T00:00:00Z"
        );
        let body = out[0].body();
        assert_eq!(body["kind"], "BackendTLSPolicy");
        assert_eq!(body["apiVersion"], "gateway.networking.k8s.io/v1");

        // Once written, nothing more to write.
        snapshot.backend_tls_policies[0].status =
            Some(serde_json::from_value(out[0].status.clone()).unwrap());
        let mut again = Vec::new();
        plan(&mut again, &snapshot, &report);
        assert!(again.is_empty(), "{again:?}");
    }
}
