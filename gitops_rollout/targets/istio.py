"""Istio networking objects as typed values, and the rules every Istio target shares.

Targets describe how one version is reached (a `Backend`: destination, request headers that
select it, an optional URI rewrite); `plan_rules` turns a `RoutePlan` into VirtualService rules
in the order ROUTING.md fixes: override-header rules, then one rule per matched candidate (each
policy match clause its own match entry, never merged), then the default rule (the primary, a
weighted split, or the primary with a mirror). Every destination sets the version response
header. Objects are written as ``networking.istio.io/v1``; schema validation is left to the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from gitops_rollout.inventory.model import ModelVersion
from gitops_rollout.policy import CanaryStrategy, MatchClause, RolloutPolicy
from gitops_rollout.policy import StringMatch as PolicyStringMatch
from gitops_rollout.targets.base import Manifest, TargetError, object_name
from gitops_rollout.targets.k8s import (
    Container,
    Deployment,
    ObjectMeta,
    Service,
    ServicePortSpec,
)
from gitops_rollout.transitions import RoutePlan

API_VERSION = "networking.istio.io/v1"

Pairs = tuple[tuple[str, str], ...]


# ---------------------------------------------------------------------------------------------
# VirtualService pieces


@dataclass(frozen=True)
class StringMatch:
    how: Literal["exact", "prefix", "regex"]
    value: str

    @staticmethod
    def of(match: PolicyStringMatch) -> StringMatch:
        if match.exact is not None:
            return StringMatch("exact", match.exact)
        if match.prefix is not None:
            return StringMatch("prefix", match.prefix)
        assert match.regex is not None  # the policy model guarantees exactly one
        return StringMatch("regex", match.regex)

    def to_dict(self) -> Manifest:
        return {self.how: self.value}


@dataclass(frozen=True)
class Match:
    """One HTTPMatchRequest: every field given must match (entries of a rule's list are ORed)."""

    headers: tuple[tuple[str, StringMatch], ...] = ()
    without_headers: tuple[str, ...] = ()
    """Header names that must be absent."""
    uri: StringMatch | None = None
    method: StringMatch | None = None
    query_params: tuple[tuple[str, StringMatch], ...] = ()
    source_labels: Pairs = ()

    @staticmethod
    def of(clause: MatchClause, *, uri_prefix: str | None) -> Match:
        uri = StringMatch.of(clause.uri) if clause.uri is not None else None
        if uri is None and uri_prefix:
            uri = StringMatch("prefix", uri_prefix)
        return Match(
            headers=tuple((k, StringMatch.of(v)) for k, v in clause.headers.items()),
            uri=uri,
            method=StringMatch.of(clause.method) if clause.method is not None else None,
            query_params=tuple((k, StringMatch.of(v)) for k, v in clause.query_params.items()),
            source_labels=tuple(clause.source_labels.items()),
        )

    def to_dict(self) -> Manifest:
        out: Manifest = {}
        if self.headers:
            out["headers"] = {k: m.to_dict() for k, m in self.headers}
        if self.without_headers:
            # An empty StringMatch tests for presence; under withoutHeaders, for absence.
            out["withoutHeaders"] = {k: {} for k in self.without_headers}
        if self.uri is not None:
            out["uri"] = self.uri.to_dict()
        if self.method is not None:
            out["method"] = self.method.to_dict()
        if self.query_params:
            out["queryParams"] = {k: m.to_dict() for k, m in self.query_params}
        if self.source_labels:
            out["sourceLabels"] = dict(self.source_labels)
        return out


@dataclass(frozen=True)
class HeaderOps:
    request_set: Pairs = ()
    request_remove: tuple[str, ...] = ()
    response_set: Pairs = ()

    def to_dict(self) -> Manifest | None:
        request: Manifest = {}
        if self.request_set:
            request["set"] = dict(self.request_set)
        if self.request_remove:
            request["remove"] = list(self.request_remove)
        out: Manifest = {}
        if request:
            out["request"] = request
        if self.response_set:
            out["response"] = {"set": dict(self.response_set)}
        return out or None


@dataclass(frozen=True)
class Destination:
    host: str
    port: int | None = None

    def to_dict(self) -> Manifest:
        out: Manifest = {"host": self.host}
        if self.port is not None:
            out["port"] = {"number": self.port}
        return out


@dataclass(frozen=True)
class RouteDestination:
    destination: Destination
    headers: HeaderOps = HeaderOps()
    weight: int | None = None

    def to_dict(self) -> Manifest:
        out: Manifest = {"destination": self.destination.to_dict()}
        headers = self.headers.to_dict()
        if headers:
            out["headers"] = headers
        if self.weight is not None:
            out["weight"] = self.weight
        return out


@dataclass(frozen=True)
class RegexRewrite:
    """Rewrite the path with an RE2 expression (``\\1`` refers to a group)."""

    match: str
    rewrite: str


@dataclass(frozen=True)
class HttpRule:
    route: tuple[RouteDestination, ...]
    name: str = ""
    match: tuple[Match, ...] = ()
    rewrite: RegexRewrite | None = None
    headers: HeaderOps = HeaderOps()
    mirror: Destination | None = None
    mirror_percent: float | None = None

    def __post_init__(self) -> None:
        # The invariants ROUTING.md promises for every rule we write.
        if not self.route:
            raise ValueError("a rule needs at least one destination")
        weights = [d.weight for d in self.route]
        if len(self.route) == 1:
            if weights[0] not in (None, 100):
                raise ValueError(f"a single destination takes all traffic, not {weights[0]}")
        elif any(w is None or w <= 0 for w in weights) or sum(w or 0 for w in weights) != 100:
            raise ValueError(f"weights {weights} must be positive integers summing to 100")

    def to_dict(self) -> Manifest:
        out: Manifest = {}
        if self.name:
            out["name"] = self.name
        if self.match:
            out["match"] = [m.to_dict() for m in self.match]
        if self.rewrite is not None:
            out["rewrite"] = {
                "uriRegexRewrite": {"match": self.rewrite.match, "rewrite": self.rewrite.rewrite}
            }
        headers = self.headers.to_dict()
        if headers:
            out["headers"] = headers
        out["route"] = [d.to_dict() for d in self.route]
        if self.mirror is not None:
            out["mirror"] = self.mirror.to_dict()
            out["mirrorPercentage"] = {"value": float(self.mirror_percent or 100.0)}
        return out


@dataclass(frozen=True)
class VirtualService:
    meta: ObjectMeta
    hosts: tuple[str, ...]
    gateways: tuple[str, ...]
    http: tuple[HttpRule, ...]

    def to_dict(self) -> Manifest:
        if not self.http:
            raise ValueError("a VirtualService needs at least one rule")
        return {
            "apiVersion": API_VERSION,
            "kind": "VirtualService",
            "metadata": self.meta.to_dict(),
            "spec": {
                "hosts": list(self.hosts),
                "gateways": list(self.gateways),
                "http": [r.to_dict() for r in self.http],
            },
        }


@dataclass(frozen=True)
class ServiceEntry:
    meta: ObjectMeta
    hosts: tuple[str, ...]
    port: int
    protocol: Literal["http", "grpc"]
    workload_labels: Pairs

    def to_dict(self) -> Manifest:
        return {
            "apiVersion": API_VERSION,
            "kind": "ServiceEntry",
            "metadata": self.meta.to_dict(),
            "spec": {
                "hosts": list(self.hosts),
                "location": "MESH_INTERNAL",
                "ports": [
                    {
                        "number": self.port,
                        "name": self.protocol,
                        "protocol": self.protocol.upper(),
                    }
                ],
                "resolution": "DNS",
                "workloadSelector": {"labels": dict(self.workload_labels)},
            },
        }


@dataclass(frozen=True)
class Gateway:
    meta: ObjectMeta
    selector: Pairs
    port: int
    protocol: Literal["http", "grpc"]
    hosts: tuple[str, ...]

    def to_dict(self) -> Manifest:
        return {
            "apiVersion": API_VERSION,
            "kind": "Gateway",
            "metadata": self.meta.to_dict(),
            "spec": {
                "selector": dict(self.selector),
                "servers": [
                    {
                        "port": {
                            "number": self.port,
                            "name": self.protocol,
                            "protocol": self.protocol.upper(),
                        },
                        "hosts": list(self.hosts),
                    }
                ],
            },
        }


# ---------------------------------------------------------------------------------------------
# Rules from a plan


@dataclass(frozen=True)
class Backend:
    """How the routing reaches one version."""

    version: ModelVersion
    destination: Destination
    request_set: Pairs = ()
    """Request headers that select the version behind a shared destination (mm-vmodel-id)."""
    rewrite: RegexRewrite | None = None
    """A per-version path rewrite (kserve); only expressible in a rule of its own."""


BackendOf = Callable[[ModelVersion], Backend]


def route_to(
    policy: RolloutPolicy, backend: Backend, *, weight: int | None = None
) -> RouteDestination:
    """A destination that selects `backend`'s version and names it in the response."""
    header = policy.spec.routing.version_header
    return RouteDestination(
        backend.destination,
        HeaderOps(
            request_set=backend.request_set,
            response_set=((header, backend.version.version),),
        ),
        weight,
    )


def default_match(policy: RolloutPolicy) -> tuple[Match, ...]:
    """Matches of a rule that takes every request the routing serves (``uriPrefix`` or all)."""
    prefix = policy.spec.routing.uri_prefix
    return (Match(uri=StringMatch("prefix", prefix)),) if prefix else ()


def override_match(policy: RolloutPolicy, value: str) -> tuple[Match, ...]:
    header = policy.spec.routing.override_header
    assert header is not None  # plans carry overrides only when the policy names the header
    prefix = policy.spec.routing.uri_prefix
    return (
        Match(
            headers=((header.name, StringMatch("exact", value)),),
            uri=StringMatch("prefix", prefix) if prefix else None,
        ),
    )


def canary_match(policy: RolloutPolicy) -> tuple[Match, ...]:
    """One match entry per policy clause (**fix**: Iter8 merged header-less clauses)."""
    strategy = policy.spec.strategy
    if not isinstance(strategy, CanaryStrategy):
        raise TargetError(
            f"the plan routes matched requests but strategy is {strategy.type.value}",
            fix="use strategy canary for match-based routing",
        )
    prefix = policy.spec.routing.uri_prefix
    return tuple(Match.of(clause, uri_prefix=prefix) for clause in strategy.match)


def nonzero(plan: RoutePlan) -> list[tuple[ModelVersion, int]]:
    """The weighted destinations that get traffic (a weight-0 version gets no route)."""
    return [(v, w) for v, w in plan.weighted if w > 0]


def leading_rules(policy: RolloutPolicy, plan: RoutePlan, backend_of: BackendOf) -> list[HttpRule]:
    """Override-header rules, then one rule per matched candidate: every rule that must be
    tried before the default rule."""
    rules = [
        single_rule(
            policy,
            backend_of(version),
            name=f"override-{value}",
            match=override_match(policy, value),
        )
        for value, version in plan.overrides
    ]
    if plan.matched:
        match = canary_match(policy)
        rules.extend(
            single_rule(policy, backend_of(version), name=f"match-{version.version}", match=match)
            for version in plan.matched
        )
    return rules


def served_version(plan: RoutePlan) -> ModelVersion:
    """The one version the default rule serves when the plan does not split traffic."""
    split = nonzero(plan)
    return split[0][0] if split else plan.primary


def plan_rules(
    policy: RolloutPolicy,
    plan: RoutePlan,
    backend_of: BackendOf,
    *,
    mirror_to: Callable[[ModelVersion], Destination] | None = None,
) -> tuple[HttpRule, ...]:
    """All rules, for targets whose versions need no per-rule rewrite.

    `mirror_to` gives where copies for the mirrored version go (default: its own destination).
    """
    rules = leading_rules(policy, plan, backend_of)
    split = nonzero(plan)
    if len(split) > 1:
        rules.append(
            HttpRule(
                name="split",
                match=default_match(policy),
                route=tuple(route_to(policy, backend_of(v), weight=w) for v, w in split),
            )
        )
        return tuple(rules)
    rule = single_rule(
        policy, backend_of(served_version(plan)), name="default", match=default_match(policy)
    )
    if plan.mirror is not None:
        target = mirror_to(plan.mirror) if mirror_to else backend_of(plan.mirror).destination
        rule = with_mirror(rule, target, plan.mirror_percent)
    rules.append(rule)
    return tuple(rules)


def with_mirror(rule: HttpRule, target: Destination, percent: float) -> HttpRule:
    return replace(rule, name="mirror", mirror=target, mirror_percent=percent)


def single_rule(
    policy: RolloutPolicy, backend: Backend, *, name: str, match: tuple[Match, ...]
) -> HttpRule:
    return HttpRule(
        name=name,
        match=match,
        rewrite=backend.rewrite,
        route=(route_to(policy, backend),),
    )


# ---------------------------------------------------------------------------------------------
# The mirror gateway (**fix** for mirroring behind a shared destination)

MIRROR_PORT = 80


def shadow_forms(hosts: Sequence[str]) -> tuple[str, ...]:
    """Hosts and the ``-shadow`` forms Envoy gives mirrored copies (Istio before 1.28)."""
    return tuple(dict.fromkeys([*hosts, *(f"{h}-shadow" for h in hosts)]))


@dataclass(frozen=True)
class MirrorGateway:
    """A small Istio gateway that receives mirrored copies, so a second VirtualService can set
    the candidate's selecting headers on them (a copy is never routed again by the sender)."""

    name: str
    """Base name (the routing name): objects are ``<name>-mirror-gateway`` and ``<name>-mirror``."""
    namespace: str
    protocol: Literal["http", "grpc"] = "http"

    @property
    def service_name(self) -> str:
        return object_name(self.name, "-mirror-gateway")

    @property
    def gateway_name(self) -> str:
        return object_name(self.name, "-mirror")

    @property
    def destination(self) -> Destination:
        return Destination(f"{self.service_name}.{self.namespace}.svc.cluster.local", MIRROR_PORT)

    def objects(self, served_hosts: Sequence[str], rule: HttpRule) -> list[Manifest]:
        """Service, Deployment, Gateway and the VirtualService that routes the copies by `rule`."""
        selector = (("istio", self.service_name),)
        service = Service(
            ObjectMeta(self.service_name, self.namespace),
            ports=(ServicePortSpec(self.protocol, MIRROR_PORT, MIRROR_PORT),),
            selector=selector,
        )
        deployment = Deployment(
            ObjectMeta(self.service_name, self.namespace),
            selector=selector,
            # Istio's gateway injection fills in the proxy: the image "auto" is replaced.
            containers=(Container("istio-proxy", "auto"),),
            pod_labels=(("sidecar.istio.io/inject", "true"),),
            pod_annotations=(("inject.istio.io/templates", "gateway"),),
            # The proxy runs unprivileged; this lets it listen on port 80.
            sysctls=(("net.ipv4.ip_unprivileged_port_start", "0"),),
        )
        gateway = Gateway(
            ObjectMeta(self.gateway_name, self.namespace),
            selector=selector,
            port=MIRROR_PORT,
            protocol=self.protocol,
            hosts=(f"{self.namespace}/*",),
        )
        routing = VirtualService(
            ObjectMeta(self.gateway_name, self.namespace),
            hosts=shadow_forms(served_hosts),
            gateways=(self.gateway_name,),
            http=(rule,),
        )
        return [routing.to_dict(), gateway.to_dict(), service.to_dict(), deployment.to_dict()]
