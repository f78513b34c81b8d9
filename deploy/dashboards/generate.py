#!/usr/bin/env python3
"""Writes Weir's Grafana dashboards (fleet, ratelimits, zones, mesh, sidecars .json) beside this file.

Edit the panels here and rerun. gateway/tests/dashboards.rs runs the first three's queries
against a real Prometheus that scraped a real gateway; sidecar/tests/dashboards.rs runs the
mesh and sidecar ones against one that scraped a fleet and two sidecars carrying mesh
traffic. Only the Python 3 standard library is used.
"""
import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "${datasource}"}
R = "$__rate_interval"
G = 'gateway=~"$gateway"'
FIVE_XX = 'code=~"5.."'


def panel(i, title, exprs, unit="short"):
    targets = [{"refId": chr(65 + j), "datasource": DS, "expr": e, "legendFormat": l}
               for j, (e, l) in enumerate(exprs)]
    return {"id": i, "type": "timeseries", "title": title, "datasource": DS,
            "gridPos": {"h": 8, "w": 12, "x": 0, "y": 0},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {}, "targets": targets}


def dashboard(uid, title, description, panels, variables):
    templating = [{"name": "datasource", "type": "datasource", "query": "prometheus",
                   "label": "Data source", "current": {}, "hide": 0}]
    for name, query, label in variables:
        templating.append({"name": name, "type": "query", "label": label, "datasource": DS,
                           "query": {"query": query, "refId": "V"}, "definition": query,
                           "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2,
                           "current": {"text": "All", "value": "$__all"}, "hide": 0})
    for n, p in enumerate(panels):
        p["gridPos"]["x"], p["gridPos"]["y"] = (n % 2) * 12, (n // 2) * 8
    return {"uid": uid, "title": title, "description": description, "tags": ["weir"],
            "editable": True, "schemaVersion": 39, "version": 1, "refresh": "10s",
            "time": {"from": "now-1h", "to": "now"}, "timezone": "",
            "templating": {"list": templating}, "annotations": {"list": []}, "panels": panels}


def req_rate(metric, extra=""):
    sel = ", ".join(s for s in (G, extra) if s)
    return f"rate({metric}{{{sel}}}[{R}])"


def or_zero(expr, by, metric):
    """`expr`, or 0 for each group that has traffic but no matching series: a panel shows 0,
    not "no data", for a route without errors."""
    return f"({expr} or sum by ({by}) ({metric}) * 0)"


REQ = req_rate("weir_requests_total")
fleet = dashboard(
    "weir-fleet", "Weir / Fleet overview",
    "Requests, errors and latency per Gateway and route; config reloads; connections.",
    [
        panel(1, "Requests per second, by Gateway and route",
              [(f"sum by (gateway, route) ({REQ})", "{{gateway}} {{route}}")], "reqps"),
        panel(2, "Error ratio (5xx), by route",
              [(or_zero(f"sum by (route) ({req_rate('weir_requests_total', FIVE_XX)})", "route", REQ)
                + f" / sum by (route) ({REQ})", "{{route}}")], "percentunit"),
        panel(3, "Latency p50 and p99, by route",
              [(f"histogram_quantile(0.5, sum by (route, le) ({req_rate('weir_request_duration_seconds_bucket')}))", "p50 {{route}}"),
               (f"histogram_quantile(0.99, sum by (route, le) ({req_rate('weir_request_duration_seconds_bucket')}))", "p99 {{route}}")], "s"),
        panel(4, "Responses per second, by status code",
              [(f"sum by (code) ({REQ})", "{{code}}")], "reqps"),
        panel(5, "Config generation, reload errors, objects that did not compile",
              [("max(weir_config_generation)", "generation"),
               ("sum(increase(weir_config_reload_errors_total[1h]))", "reload errors (1h)"),
               ("max(weir_config_compile_problems)", "did not compile")]),
        panel(6, "Open client connections",
              [("sum(weir_downstream_connections)", "connections")]),
    ],
    [("gateway", "label_values(weir_requests_total, gateway)", "Gateway")])

DEC = f"rate(weir_ratelimit_decisions_total[{R}])"
ratelimits = dashboard(
    "weir-ratelimits", "Weir / Rate limits",
    "RateLimitPolicy decisions by policy and decision, shadow-mode denials, Redis health and the breaker.",
    [
        panel(1, "Decisions per second, by policy and decision",
              [(f"sum by (policy, decision) ({DEC})", "{{policy}} {{decision}}")], "reqps"),
        panel(2, "Shadow-mode denials per second (would have been 429)",
              [(or_zero(f'sum by (policy) (rate(weir_ratelimit_decisions_total{{decision="shadow_limited"}}[{R}]))', "policy", DEC), "{{policy}}")], "reqps"),
        panel(3, "Redis: sync rounds and failures per second",
              [(f"sum(rate(weir_ratelimit_sync_duration_seconds_count[{R}]))", "rounds"),
               (f"sum(rate(weir_ratelimit_sync_errors_total[{R}]))", "failures")], "ops"),
        panel(4, "Redis: sync round p99",
              [(f"histogram_quantile(0.99, sum by (le) (rate(weir_ratelimit_sync_duration_seconds_bucket[{R}])))", "p99")], "s"),
        panel(5, "Breaker open (1), and live gateways sharing the limits",
              [("max(weir_ratelimit_breaker_open)", "breaker open"),
               ("max(weir_ratelimit_live_gateways)", "live gateways")]),
        panel(6, "Time a request spends in the limiter, p99",
              [(f"histogram_quantile(0.99, sum by (le) (rate(weir_ratelimit_check_duration_seconds_bucket[{R}])))", "p99")], "s"),
    ], [])

ZONE = f"rate(weir_zone_requests_total[{R}])"
zones = dashboard(
    "weir-zones", "Weir / Zones",
    "Zone affinity: the share of each Service's requests kept in the gateway's zone, and the spill to others.",
    [
        panel(1, "In-zone share, by Service",
              [(or_zero(f'sum by (service) (rate(weir_zone_requests_total{{locality="local"}}[{R}]))', "service", ZONE)
                + f" / sum by (service) ({ZONE})", "{{service}}")], "percentunit"),
        panel(2, "Cross-zone requests per second (spill), by Service",
              [(or_zero(f'sum by (service) (rate(weir_zone_requests_total{{locality="cross"}}[{R}]))', "service", ZONE), "{{service}}")], "reqps"),
        panel(3, "Body bytes per second, by Service, locality and direction",
              [(f"sum by (service, locality, direction) (rate(weir_zone_bytes_total[{R}]))", "{{service}} {{locality}} {{direction}}")], "Bps"),
        panel(4, "Requests per second, by Service and locality",
              [(f"sum by (service, locality) ({ZONE})", "{{service}} {{locality}}")], "reqps"),
    ], [])

MESH = f'rate(weir_requests_total{{destination!=""}}[{R}])'
MESH_BUCKETS = f'rate(weir_request_duration_seconds_bucket{{destination!=""}}[{R}])'
mesh = dashboard(
    "weir-mesh", "Weir / Mesh edges",
    "East-west traffic through the fleet, per edge: the caller's verified identity (source) to the Service it called (destination).",
    [
        panel(1, "Requests per second, by source and destination",
              [(f"sum by (source, destination) ({MESH})", "{{source}} → {{destination}}")], "reqps"),
        panel(2, "Error ratio (5xx), by source and destination",
              [(or_zero(f'sum by (source, destination) (rate(weir_requests_total{{destination!="", code=~"5.."}}[{R}]))', "source, destination", MESH)
                + f" / sum by (source, destination) ({MESH})", "{{source}} → {{destination}}")], "percentunit"),
        panel(3, "Latency p50 and p99, by source and destination",
              [(f"histogram_quantile(0.5, sum by (source, destination, le) ({MESH_BUCKETS}))", "p50 {{source}} → {{destination}}"),
               (f"histogram_quantile(0.99, sum by (source, destination, le) ({MESH_BUCKETS}))", "p99 {{source}} → {{destination}}")], "s"),
        panel(4, "Rate-limited share (429), by source and destination",
              [(or_zero(f'sum by (source, destination) (rate(weir_requests_total{{destination!="", code="429"}}[{R}]))', "source, destination", MESH)
                + f" / sum by (source, destination) ({MESH})", "{{source}} → {{destination}}")], "percentunit"),
        panel(5, "Requests reaching each app's sidecar, by peer",
              [(f"sum by (instance, peer) (rate(weir_sidecar_inbound_requests_total[{R}]))", "{{instance}} from {{peer}}")], "reqps"),
        panel(6, "Authorization decisions per second, by policy and decision (fleet and sidecars)",
              [(f"sum by (policy, decision) (rate(weir_authz_decisions_total[{R}]))", "{{policy}} {{decision}}")], "reqps"),
        panel(7, "Refused share (403), by source and destination; tokens refused (401) per second",
              [(or_zero(f'sum by (source, destination) (rate(weir_requests_total{{destination!="", code="403"}}[{R}]))', "source, destination", MESH)
                + f" / sum by (source, destination) ({MESH})", "403 {{source}} → {{destination}}"),
               (f"sum(rate(weir_authz_invalid_tokens_total[{R}]))", "401 invalid tokens")], "percentunit"),
    ], [])

SC_CONN = f"rate(weir_sidecar_inbound_connections_total[{R}])"
sidecars = dashboard(
    "weir-sidecars", "Weir / Sidecars",
    "The mini sidecars: inbound handshakes and refusals, identity rotations and expiry, the outbound path to the fleet.",
    [
        panel(1, "Inbound connections per second (handshakes attempted), by pod and port",
              [(f"sum by (instance, port) ({SC_CONN})", "{{instance}} :{{port}}")], "cps"),
        panel(2, "Refused inbound connections per second, by reason",
              [(or_zero(f"sum by (reason) (rate(weir_sidecar_inbound_refused_total[{R}]))", "reason", "weir_sidecar_inbound_refused_total"), "{{reason}}")], "cps"),
        panel(3, "Identity loads in the last hour, by result (rotations and failures)",
              [("sum by (result) (increase(weir_sidecar_identity_reloads_total[1h]))", "{{result}}")]),
        panel(4, "Days until the presented certificate expires, by pod",
              [("min by (instance) (weir_sidecar_identity_not_after_seconds - time()) / 86400", "{{instance}}")], "d"),
        panel(5, "Outbound requests per second, by status class",
              [(f"sum by (code_class) (rate(weir_sidecar_outbound_requests_total[{R}]))", "{{code_class}}")], "reqps"),
        panel(6, "Outbound: upstream failures per second, and connections opened to the fleet (1h)",
              [(f"sum(rate(weir_sidecar_outbound_upstream_errors_total[{R}]))", "failures"),
               ("sum(increase(weir_sidecar_outbound_upstream_connections_total[1h]))", "connections opened")]),
    ], [])

here = Path(__file__).resolve().parent
for name, d in (("fleet.json", fleet), ("ratelimits.json", ratelimits), ("zones.json", zones),
                ("mesh.json", mesh), ("sidecars.json", sidecars)):
    (here / name).write_text(json.dumps(d, indent=1) + "\n")
