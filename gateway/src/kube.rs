//! What a gateway in a cluster learns about itself: its zone from its Node, and the fleet's
//! spread over zones from the internal Service's EndpointSlices (one endpoint per replica).

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use std::collections::BTreeMap;
use tracing::warn;
use weir_controller::source::Snapshot;

/// The well-known label a cloud's node controller sets.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// This gateway's zone: its Node's zone label. `None` (with a warning) when the Node cannot
/// be read; zone affinity is then off, which is safe, rather than the gateway not starting.
pub async fn node_zone(client: Client, node: &str) -> Option<String> {
    match Api::<Node>::all(client).get(node).await {
        Ok(n) => {
            let zone = n.metadata.labels.and_then(|mut l| l.remove(ZONE_LABEL));
            if zone.is_none() {
                warn!(
                    node,
                    "the node has no {ZONE_LABEL} label: zone affinity is off"
                );
            }
            zone.filter(|z| !z.is_empty())
        }
        Err(e) => {
            warn!(node, error = %e, "cannot read this gateway's node: zone affinity is off");
            None
        }
    }
}

/// Ready gateway replicas per zone, from the EndpointSlices of the fleet's Service `ns/name`.
/// `None` when the Service has no ready endpoint with a zone (not deployed that way, or
/// still starting): callers then keep assuming an even spread.
pub fn fleet_from_slices(snapshot: &Snapshot, ns: &str, name: &str) -> Option<Vec<(String, f64)>> {
    let slices = snapshot.endpoint_slices.iter().filter(|s| {
        s.metadata.namespace.as_deref() == Some(ns)
            && s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .is_some_and(|svc| svc == name)
    });
    // A replica with several addresses (dual stack) appears in one slice per family:
    // count each address family separately and keep the larger count.
    let mut by_family: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    for s in slices {
        let family = by_family.entry(s.address_type.as_str()).or_default();
        for e in s.endpoints.iter().flatten() {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if let (true, Some(zone)) = (ready, e.zone.as_deref()) {
                *family.entry(zone).or_default() += 1.0;
            }
        }
    }
    let widest = by_family
        .into_values()
        .max_by(|a, b| a.values().sum::<f64>().total_cmp(&b.values().sum::<f64>()))?;
    (!widest.is_empty()).then(|| {
        widest
            .into_iter()
            .map(|(z, n)| (z.to_string(), n))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, family: &str, endpoints: &[(&str, bool)]) -> serde_json::Value {
        let eps: Vec<_> = endpoints
            .iter()
            .enumerate()
            .map(|(i, (zone, ready))| {
                serde_json::json!({"addresses": [format!("10.0.0.{i}")], "zone": zone, "conditions": {"ready": ready}})
            })
            .collect();
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "weir-system",
                         "labels": {"kubernetes.io/service-name": "weir-gateway-internal"}},
            "addressType": family, "endpoints": eps
        })
    }

    /// A client whose API server answers each GET with `reply` (status, JSON body).
    fn api(reply: (u16, serde_json::Value)) -> Client {
        use kube::client::Body;
        let (svc, mut handle) =
            tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                assert_eq!(req.uri().path(), "/api/v1/nodes/node-1");
                let body = Body::from(serde_json::to_vec(&reply.1).unwrap());
                let resp = http::Response::builder()
                    .status(reply.0)
                    .body(body)
                    .unwrap();
                send.send_response(resp);
            }
        });
        Client::new(svc, "default")
    }

    #[tokio::test]
    async fn the_zone_is_the_nodes_label_and_its_absence_turns_affinity_off() {
        let node = serde_json::json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-1", "labels": {ZONE_LABEL: "eu-west-1b"}}});
        assert_eq!(
            node_zone(api((200, node)), "node-1").await.as_deref(),
            Some("eu-west-1b")
        );
        let bare =
            serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}});
        assert_eq!(node_zone(api((200, bare)), "node-1").await, None);
        let forbidden = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "nodes is forbidden", "reason": "Forbidden", "code": 403});
        assert_eq!(node_zone(api((403, forbidden)), "node-1").await, None);
    }

    #[test]
    fn the_fleet_is_ready_replicas_per_zone() {
        let mut snap = Snapshot::default();
        for s in [
            slice(
                "a",
                "IPv4",
                &[("z1", true), ("z1", true), ("z2", true), ("z3", false)],
            ),
            slice("b", "IPv4", &[("z3", true)]),
            // The same replicas' IPv6 addresses must not count them twice.
            slice("c", "IPv6", &[("z1", true), ("z2", true)]),
        ] {
            snap.endpoint_slices
                .push(serde_json::from_value(s).unwrap());
        }
        let fleet = fleet_from_slices(&snap, "weir-system", "weir-gateway-internal").unwrap();
        assert_eq!(
            fleet,
            [
                ("z1".to_string(), 2.0),
                ("z2".into(), 1.0),
                ("z3".into(), 1.0)
            ]
        );
        assert_eq!(
            fleet_from_slices(&snap, "other", "weir-gateway-internal"),
            None
        );
    }
}
