"""Plain Kubernetes Deployments, one per version, each behind its own Service.

TF Serving and scoring images (the Azure blue-green pipeline). Destinations are the versions'
Services (``<service>.<ns>.svc.cluster.local`` with the Service's port), found by the inventory.
The routing is an Istio VirtualService on the policy's hosts (default: the model name) and
gateways, or, with ``routing.api: gateway-api``, a Gateway API HTTPRoute. Override-header rules
(``x-api-version: blue|green``) come before the weighted rule. Gateways and the ``<app>``
Service, when a setup has them, are human-owned; we only reference them.
"""

from __future__ import annotations

from gitops_rollout.inventory.model import ModelVersion
from gitops_rollout.policy import CanaryStrategy, RolloutPolicy, RoutingApi, TargetKind
from gitops_rollout.targets.base import Manifest, TargetError, fqdn, mesh_gateways, object_name
from gitops_rollout.targets.gateway_api import (
    BackendRef,
    HTTPRoute,
    PathMatch,
    RouteMatch,
    RouteRule,
    ValueMatch,
    parent_refs,
)
from gitops_rollout.targets.istio import Backend, Destination, VirtualService, nonzero, plan_rules
from gitops_rollout.targets.k8s import ObjectMeta
from gitops_rollout.transitions import RoutePlan


def service_of(version: ModelVersion, *, port: int | None) -> tuple[str, int]:
    """(Service name, port) that reaches `version`; `port` is the policy's servicePort."""
    if version.service_name is None:
        raise TargetError(
            f"{version.ref} has no Service: no Service named {version.ref.name} or selecting "
            f"app.kubernetes.io/version: {version.version}",
            fix=f"add a Service {version.ref.name} that selects the Deployment's pods",
            file=version.file,
        )
    ports = [p.port for p in version.services]
    if port is not None:
        if ports and port not in ports:
            raise TargetError(
                f"Service {version.service_name} has no port {port} (it has {ports})",
                fix="correct spec.target.servicePort in the policy or the Service's ports",
                file=version.file,
            )
        return version.service_name, port
    if not ports:
        raise TargetError(
            f"Service {version.service_name} declares no port",
            fix="add a port to the Service, or set spec.target.servicePort in the policy",
            file=version.file,
        )
    named = [p.port for p in version.services if p.name == "http" or p.name.startswith("http-")]
    return version.service_name, (named or ports)[0]


class DeploymentTarget:
    kind = TargetKind.DEPLOYMENT

    def render_routing(
        self, policy: RolloutPolicy, plan: RoutePlan, *, cluster: str
    ) -> list[Manifest]:
        meta = ObjectMeta(object_name(policy.routing_name), policy.routing_namespace)
        if policy.spec.routing.api is RoutingApi.GATEWAY_API:
            # No hostnames means every hostname of the parent (and mesh routes ignore them).
            return [http_route(policy, plan, meta, policy.spec.routing.hosts)]
        hosts = policy.spec.routing.hosts or (policy.model,)
        port = policy.spec.target.service_port

        def backend(version: ModelVersion) -> Backend:
            name, number = service_of(version, port=port)
            return Backend(version, Destination(fqdn(name, version.ref.namespace), number))

        service = VirtualService(
            meta,
            hosts=hosts,
            gateways=mesh_gateways(policy),
            http=plan_rules(policy, plan, backend),
        )
        return [service.to_dict()]


def http_route(
    policy: RolloutPolicy, plan: RoutePlan, meta: ObjectMeta, hosts: tuple[str, ...]
) -> Manifest:
    """The plan as an HTTPRoute (no mirror: the policy model rejects mirror with gateway-api)."""
    if plan.mirror is not None:
        raise TargetError(
            "Gateway API routes are written without mirroring", fix="use routing api istio"
        )
    routing = policy.spec.routing
    header = routing.version_header
    prefix = routing.uri_prefix
    default = (RouteMatch(path=PathMatch("PathPrefix", prefix)),) if prefix else ()

    def ref(version: ModelVersion, weight: int | None = None) -> BackendRef:
        name, port = service_of(version, port=policy.spec.target.service_port)
        other_ns = version.ref.namespace if version.ref.namespace != meta.namespace else None
        return BackendRef(name, port, other_ns, weight, ((header, version.version),))

    rules: list[RouteRule] = []
    for value, version in plan.overrides:
        assert routing.override_header is not None
        path = PathMatch("PathPrefix", prefix) if prefix else None
        match = RouteMatch(path=path, headers=(ValueMatch(routing.override_header.name, value),))
        rules.append(RouteRule((ref(version),), (match,)))
    if plan.matched:
        strategy = policy.spec.strategy
        if not isinstance(strategy, CanaryStrategy):
            raise TargetError("the plan routes matched requests but strategy is not canary")
        matches = tuple(RouteMatch.of(c, uri_prefix=prefix) for c in strategy.match)
        for version in plan.matched:
            rules.append(RouteRule((ref(version),), matches))
    split = nonzero(plan)
    if len(split) > 1:
        rules.append(RouteRule(tuple(ref(v, w) for v, w in split), default))
    else:
        rules.append(RouteRule((ref(split[0][0] if split else plan.primary),), default))
    return HTTPRoute(meta, parent_refs(policy), hosts, tuple(rules)).to_dict()
