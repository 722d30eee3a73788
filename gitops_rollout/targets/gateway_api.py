"""Gateway API ``HTTPRoute`` (``gateway.networking.k8s.io/v1``) as typed values.

The alternative output for clusters without Istio (``routing.api: gateway-api``): weighted
``backendRefs``, header/path/query/method matches and a ``ResponseHeaderModifier`` per backend
naming the version. Gateway API orders rules by match specificity, not by position: a rule with
a header match beats one without, which is what override and canary rules need. It has no
``sourceLabels`` and no prefix match on headers (a prefix becomes an anchored regex); what it
cannot express raises `TargetError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from gitops_rollout.policy import MatchClause, RolloutPolicy
from gitops_rollout.policy import StringMatch as PolicyStringMatch
from gitops_rollout.targets.base import Manifest, TargetError
from gitops_rollout.targets.k8s import ObjectMeta

API_VERSION = "gateway.networking.k8s.io/v1"

ValueType = Literal["Exact", "RegularExpression"]
PathType = Literal["Exact", "PathPrefix", "RegularExpression"]


def _value_match(match: PolicyStringMatch) -> tuple[ValueType, str]:
    if match.exact is not None:
        return "Exact", match.exact
    if match.regex is not None:
        return "RegularExpression", match.regex
    assert match.prefix is not None
    return "RegularExpression", f"^{re.escape(match.prefix)}.*"


@dataclass(frozen=True)
class ValueMatch:
    """A header or query parameter match."""

    name: str
    value: str
    type: ValueType = "Exact"

    def to_dict(self) -> Manifest:
        return {"type": self.type, "name": self.name, "value": self.value}


@dataclass(frozen=True)
class PathMatch:
    type: PathType
    value: str

    @staticmethod
    def of(match: PolicyStringMatch) -> PathMatch:
        if match.exact is not None:
            return PathMatch("Exact", match.exact)
        if match.prefix is not None:
            return PathMatch("PathPrefix", match.prefix)
        assert match.regex is not None
        return PathMatch("RegularExpression", match.regex)

    def to_dict(self) -> Manifest:
        return {"type": self.type, "value": self.value}


@dataclass(frozen=True)
class RouteMatch:
    path: PathMatch | None = None
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()
    method: str | None = None

    @staticmethod
    def of(clause: MatchClause, *, uri_prefix: str | None) -> RouteMatch:
        if clause.source_labels:
            raise TargetError(
                "Gateway API routes cannot match sourceLabels",
                fix="remove sourceLabels from the match, or use routing api istio",
            )
        method = None
        if clause.method is not None:
            if clause.method.exact is None:
                raise TargetError(
                    "Gateway API matches methods exactly only",
                    fix="write the method match as exact: GET (or POST, ...)",
                )
            method = clause.method.exact
        path = PathMatch.of(clause.uri) if clause.uri is not None else None
        if path is None and uri_prefix:
            path = PathMatch("PathPrefix", uri_prefix)
        return RouteMatch(
            path=path,
            headers=tuple(
                ValueMatch(k, v, t) for k, m in clause.headers.items() for t, v in [_value_match(m)]
            ),
            query_params=tuple(
                ValueMatch(k, v, t)
                for k, m in clause.query_params.items()
                for t, v in [_value_match(m)]
            ),
            method=method,
        )

    def to_dict(self) -> Manifest:
        out: Manifest = {}
        if self.path is not None:
            out["path"] = self.path.to_dict()
        if self.headers:
            out["headers"] = [h.to_dict() for h in self.headers]
        if self.query_params:
            out["queryParams"] = [q.to_dict() for q in self.query_params]
        if self.method is not None:
            out["method"] = self.method
        return out


@dataclass(frozen=True)
class BackendRef:
    name: str
    port: int
    namespace: str | None = None
    """Set only for a Service in another namespace (which then needs a ReferenceGrant)."""
    weight: int | None = None
    response_set: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> Manifest:
        out: Manifest = {"name": self.name}
        if self.namespace is not None:
            out["namespace"] = self.namespace
        out["port"] = self.port
        if self.weight is not None:
            out["weight"] = self.weight
        if self.response_set:
            out["filters"] = [
                {
                    "type": "ResponseHeaderModifier",
                    "responseHeaderModifier": {
                        "set": [{"name": k, "value": v} for k, v in self.response_set]
                    },
                }
            ]
        return out


@dataclass(frozen=True)
class RouteRule:
    backend_refs: tuple[BackendRef, ...]
    matches: tuple[RouteMatch, ...] = ()

    def __post_init__(self) -> None:
        if not self.backend_refs:
            raise ValueError("a rule needs at least one backend")
        weights = [b.weight for b in self.backend_refs]
        if len(weights) > 1 and (
            any(w is None or w <= 0 for w in weights) or sum(w or 0 for w in weights) != 100
        ):
            raise ValueError(f"weights {weights} must be positive integers summing to 100")

    def to_dict(self) -> Manifest:
        out: Manifest = {}
        if self.matches:
            out["matches"] = [m.to_dict() for m in self.matches]
        out["backendRefs"] = [b.to_dict() for b in self.backend_refs]
        return out


@dataclass(frozen=True)
class ParentRef:
    name: str
    namespace: str | None = None
    kind: Literal["Gateway", "Service"] = "Gateway"

    def to_dict(self) -> Manifest:
        out: Manifest = {}
        if self.kind == "Service":
            # GAMMA (mesh) attachment: the route governs traffic sent to this Service.
            out["group"] = ""
            out["kind"] = "Service"
        if self.namespace is not None:
            out["namespace"] = self.namespace
        out["name"] = self.name
        return out


def parent_refs(policy: RolloutPolicy) -> tuple[ParentRef, ...]:
    """The policy's gateways (``ns/name`` or ``name``); with none, the model's Service (mesh)."""
    refs = []
    for gateway in policy.spec.routing.gateways:
        namespace, _, name = gateway.rpartition("/")
        refs.append(ParentRef(name, namespace or None))
    if not refs:
        if not policy.spec.routing.include_mesh:
            raise TargetError(
                "the HTTPRoute attaches to nothing: no gateways and includeMesh is false",
                fix="name a Gateway in spec.routing.gateways",
            )
        refs.append(ParentRef(policy.model, kind="Service"))
    return tuple(refs)


@dataclass(frozen=True)
class HTTPRoute:
    meta: ObjectMeta
    parents: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[RouteRule, ...]

    def to_dict(self) -> Manifest:
        if not self.rules:
            raise ValueError("an HTTPRoute needs at least one rule")
        spec: Manifest = {"parentRefs": [p.to_dict() for p in self.parents]}
        if self.hostnames:
            spec["hostnames"] = list(self.hostnames)
        spec["rules"] = [r.to_dict() for r in self.rules]
        return {
            "apiVersion": API_VERSION,
            "kind": "HTTPRoute",
            "metadata": self.meta.to_dict(),
            "spec": spec,
        }
