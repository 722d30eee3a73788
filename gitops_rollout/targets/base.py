"""What every target adapter offers, and the helpers they share to name things.

A target turns a `RoutePlan` into the bot-owned Kubernetes objects of one rollout. The adapters
(one module per serving platform) implement `TargetAdapter`; `targets.adapter_for` picks one.
Nothing here knows YAML or files: `render` serialises the objects, adds the rollout state and
writes them; `manifest_edits` changes the human-owned manifests.
"""

from __future__ import annotations

from typing import Any, Protocol

from gitops_rollout.policy import RolloutPolicy, RoutingApi, TargetKind
from gitops_rollout.transitions import RoutePlan

Manifest = dict[str, Any]
"""One Kubernetes object as plain data, keys in the order they are written."""

CLUSTER_DOMAIN = "svc.cluster.local"
MAX_NAME = 63


class TargetError(Exception):
    """The plan cannot be expressed for this target (a missing Service, a name too long).

    `render` turns it into a located problem and writes nothing for that rollout, so a
    half-expressible plan never reaches a cluster.
    """

    def __init__(self, reason: str, *, fix: str = "", file: str = "") -> None:
        self.reason = reason
        self.fix = fix
        self.file = file
        super().__init__(reason)


class TargetAdapter(Protocol):
    """One serving platform's routing."""

    kind: TargetKind

    def render_routing(
        self, policy: RolloutPolicy, plan: RoutePlan, *, cluster: str
    ) -> list[Manifest]:
        """The rollout's bot-owned objects, routing object (state carrier) first, in a
        deterministic order; raises `TargetError` when the plan cannot be expressed."""
        ...


def fqdn(name: str, namespace: str) -> str:
    """``<name>.<namespace>.svc.cluster.local``, or `name` unchanged if it already has a dot."""
    return name if "." in name else f"{name}.{namespace}.{CLUSTER_DOMAIN}"


def model_hosts(policy: RolloutPolicy) -> tuple[str, ...]:
    """The three in-mesh names of the model (``<model>.<ns>``, ``.svc``, ``.svc.cluster.local``)."""
    base = f"{policy.model}.{policy.spec.namespace}"
    return (base, f"{base}.svc", f"{base}.{CLUSTER_DOMAIN}")


def mesh_gateways(policy: RolloutPolicy, *fixed: str) -> tuple[str, ...]:
    """`fixed` gateways, the policy's, and ``mesh`` unless the policy leaves it out.

    Without any gateway Istio binds a VirtualService to ``mesh`` anyway, so ``mesh`` is kept
    whenever nothing else is named: an explicit list never surprises a reader.
    """
    routing = policy.spec.routing
    named = [*fixed, *routing.gateways]
    if routing.include_mesh or not named:
        named.append("mesh")
    return tuple(dict.fromkeys(named))


def object_name(base: str, suffix: str = "") -> str:
    """A Kubernetes object name built from the routing name; fails loudly past 63 characters."""
    name = f"{base}{suffix}"
    if len(name) > MAX_NAME:
        raise TargetError(
            f"object name {name!r} is longer than {MAX_NAME} characters",
            fix="set a shorter spec.routing.name in the policy",
        )
    return name


def require_istio(policy: RolloutPolicy) -> None:
    """Targets that route with Istio only refuse a Gateway API request instead of ignoring it."""
    if policy.spec.routing.api is not RoutingApi.ISTIO:
        raise TargetError(
            f"routing api {policy.spec.routing.api.value} is rendered for the deployment target "
            f"only, not {policy.spec.target.kind.value}",
            fix="remove spec.routing.api (Istio), or use target kind deployment",
        )
