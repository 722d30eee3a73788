"""A small VirtualService -> Envoy static configuration translator, for the data-plane tests.

It follows Istio's translation for the features gitops-rollout renders, so a real Envoy can
show what the rendered routing does to requests:

- one Envoy route per match entry (entries of a rule are ORed), a catch-all when none;
- header, withoutHeaders (absence), uri, method and queryParams matches;
- one destination -> ``cluster`` with the rule's header operations first and the
  destination's after them (so the destination's ``set`` wins, as measured with Istio);
  several -> ``weighted_clusters`` with per-destination operations, the rule's on the route;
- a ``Host`` set becomes an authority rewrite (Istio does the same);
- ``rewrite.uriRegexRewrite`` -> ``regex_rewrite``;
- ``mirror`` + ``mirrorPercentage`` -> ``request_mirror_policies`` with a runtime fraction.

Gateways are not modelled: the test says which listener serves which VirtualServices, and
destination hosts map to 127.0.0.1 ports. Production never uses this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


@dataclass(frozen=True)
class Listener:
    """An Envoy listener on 127.0.0.1:`port` serving `virtual_services`."""

    name: str
    port: int
    virtual_services: Sequence[Mapping[str, Any]]


def cluster_name(destination: Mapping[str, Any]) -> str:
    port = (destination.get("port") or {}).get("number", 80)
    return f"outbound|{port}||{destination['host']}"


def _string_match(match: Mapping[str, str]) -> dict[str, Any]:
    if "exact" in match:
        return {"exact": match["exact"]}
    if "prefix" in match:
        return {"prefix": match["prefix"]}
    return {"safe_regex": {"regex": match["regex"]}}


def _header_matcher(name: str, match: Mapping[str, str], *, invert: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if match:
        out["string_match"] = _string_match(match)
    else:
        out["present_match"] = True
    if invert:
        out["invert_match"] = True
    return out


def _route_match(match: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    uri = match.get("uri")
    if uri is None:
        out["prefix"] = "/"
    elif "exact" in uri:
        out["path"] = uri["exact"]
    elif "prefix" in uri:
        out["prefix"] = uri["prefix"]
    else:
        out["safe_regex"] = {"regex": uri["regex"]}
    headers = [_header_matcher(k, v) for k, v in (match.get("headers") or {}).items()]
    headers += [
        _header_matcher(k, v, invert=True) for k, v in (match.get("withoutHeaders") or {}).items()
    ]
    if "method" in match:
        headers.append(_header_matcher(":method", match["method"]))
    if headers:
        out["headers"] = headers
    params = match.get("queryParams") or {}
    if params:
        out["query_parameters"] = [
            {"name": k, "string_match": _string_match(v)} for k, v in params.items()
        ]
    unsupported = set(match) - {"uri", "headers", "withoutHeaders", "method", "queryParams"}
    if unsupported:
        raise ValueError(f"the test translator does not model {sorted(unsupported)}")
    return out


def _operations(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Envoy header operations of one Istio ``headers`` block (authority kept apart)."""
    request = (headers or {}).get("request") or {}
    response = (headers or {}).get("response") or {}
    out: dict[str, Any] = {"request_headers_to_add": [], "response_headers_to_add": []}
    for name, value in (request.get("set") or {}).items():
        if name.lower() in ("host", ":authority"):
            out["host_rewrite_literal"] = value
        else:
            out["request_headers_to_add"].append(_set(name, value))
    if request.get("remove"):
        out["request_headers_to_remove"] = list(request["remove"])
    for name, value in (response.get("set") or {}).items():
        out["response_headers_to_add"].append(_set(name, value))
    return out


def _set(name: str, value: str) -> dict[str, Any]:
    return {"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _merge(first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    out = {k: list(v) if isinstance(v, list) else v for k, v in first.items()}
    for key, value in then.items():
        if isinstance(value, list):
            out[key] = [*out.get(key, []), *value]
        else:
            out[key] = value
    return {k: v for k, v in out.items() if v != []}


def _routes(rule: Mapping[str, Any]) -> list[dict[str, Any]]:
    destinations = rule["route"]
    rule_ops = _operations(rule.get("headers"))
    action: dict[str, Any] = {}
    route_ops: dict[str, Any]
    if len(destinations) == 1:
        only = destinations[0]
        ops = _merge(rule_ops, _operations(only.get("headers")))
        action["cluster"] = cluster_name(only["destination"])
        if "host_rewrite_literal" in ops:
            action["host_rewrite_literal"] = ops.pop("host_rewrite_literal")
        route_ops = ops
    else:
        clusters = []
        for destination in destinations:
            ops = {k: v for k, v in _operations(destination.get("headers")).items() if v != []}
            clusters.append(
                {"name": cluster_name(destination["destination"]), "weight": destination["weight"]}
                | ops
            )
        action["weighted_clusters"] = {"clusters": clusters}
        if "host_rewrite_literal" in rule_ops:
            action["host_rewrite_literal"] = rule_ops.pop("host_rewrite_literal")
        route_ops = {k: v for k, v in rule_ops.items() if v != []}
    rewrite = (rule.get("rewrite") or {}).get("uriRegexRewrite")
    if rewrite:
        action["regex_rewrite"] = {
            "pattern": {"regex": rewrite["match"]},
            "substitution": rewrite["rewrite"],
        }
    if "mirror" in rule:
        percent = float((rule.get("mirrorPercentage") or {}).get("value", 100.0))
        action["request_mirror_policies"] = [
            {
                "cluster": cluster_name(rule["mirror"]),
                "runtime_fraction": {
                    "default_value": {
                        "numerator": round(percent * 10_000),
                        "denominator": "MILLION",
                    }
                },
            }
        ]
    matches = rule.get("match") or [{}]
    return [
        {"name": rule.get("name", ""), "match": _route_match(m), "route": action, **route_ops}
        for m in matches
    ]


def virtual_host(service: Mapping[str, Any]) -> dict[str, Any]:
    spec = service["spec"]
    domains = []
    for host in spec["hosts"]:
        domains += [host] if host == "*" else [host, f"{host}:*"]
    return {
        "name": service["metadata"]["name"],
        "domains": domains,
        "routes": [route for rule in spec["http"] for route in _routes(rule)],
    }


def static_config(
    listeners: Sequence[Listener], endpoints: Mapping[str, int], *, admin_port: int
) -> dict[str, Any]:
    """Envoy bootstrap for `listeners`; `endpoints` maps cluster names to 127.0.0.1 ports."""
    return {
        "admin": {"address": _address(admin_port)},
        "static_resources": {
            "listeners": [_listener(listener) for listener in listeners],
            "clusters": [
                {
                    "name": name,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": name,
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}
                        ],
                    },
                }
                for name, port in sorted(endpoints.items())
            ],
        },
    }


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _listener(listener: Listener) -> dict[str, Any]:
    return {
        "name": listener.name,
        "address": _address(listener.port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": listener.name,
                            "route_config": {
                                "name": listener.name,
                                "virtual_hosts": [
                                    virtual_host(vs) for vs in listener.virtual_services
                                ],
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }
