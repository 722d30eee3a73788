"""KServe (serverless/Knative and raw deployment): two InferenceServices, or one routing itself.

separate: the VirtualService ``<model>`` on the Knative gateways and ``mesh`` sends every request
to ``knative-local-gateway`` with the ``Host`` of the chosen version's predictor, and rewrites
only the model name in the path (**fix**: one ``uriRegexRewrite`` per version, so health and
other models' paths are untouched). Istio rewrites per rule, not per weighted destination, so a
weighted split is two hops through the local gateway: a first rule picks the version by weight
and tags the request (`BRANCH_HEADER`), then one rule per version matches the tag, rewrites and
strips it. An ExternalName Service ``<model>`` gives clients a name to call.

native: one InferenceService; KServe routes between its revisions from
``spec.predictor.canaryTrafficPercent``, which `manifest_edits` writes. We write no
VirtualService, only a ConfigMap that carries the rollout state.
"""

from __future__ import annotations

from dataclasses import replace

from gitops_rollout.inventory.model import ModelVersion
from gitops_rollout.policy import RolloutPolicy, TargetKind, TargetMode
from gitops_rollout.targets.base import (
    CLUSTER_DOMAIN,
    Manifest,
    mesh_gateways,
    model_hosts,
    object_name,
    require_istio,
)
from gitops_rollout.targets.istio import (
    Backend,
    BackendOf,
    Destination,
    HeaderOps,
    HttpRule,
    Match,
    MirrorGateway,
    RegexRewrite,
    RouteDestination,
    StringMatch,
    VirtualService,
    default_match,
    leading_rules,
    nonzero,
    served_version,
    single_rule,
    with_mirror,
)
from gitops_rollout.targets.k8s import ObjectMeta, Service, ServicePortSpec, state_carrier
from gitops_rollout.transitions import RoutePlan

KNATIVE_GATEWAYS = (
    "knative-serving/knative-ingress-gateway",
    "knative-serving/knative-local-gateway",
)
LOCAL_GATEWAY = Destination(f"knative-local-gateway.istio-system.{CLUSTER_DOMAIN}", 80)
BRANCH_HEADER = "x-gitops-rollout-branch"
"""Tags a request with the version the weighted first hop picked (stripped on the second)."""


def predictor_host(version: ModelVersion) -> str:
    """Knative's host of an InferenceService's predictor (KServe >= 0.11 naming)."""
    return f"{version.ref.name}-predictor.{version.ref.namespace}.{CLUSTER_DOMAIN}"


def model_rewrite(name: str, version: ModelVersion) -> RegexRewrite:
    """Rewrite the model name ``name`` in v1/v2 inference paths to the version's isvc name."""
    return RegexRewrite(
        match=f"^/(v[12])/models/{name}([/:].*)?$",
        rewrite=f"/\\1/models/{version.ref.name}\\2",
    )


class KServe:
    kind = TargetKind.KSERVE

    def render_routing(
        self, policy: RolloutPolicy, plan: RoutePlan, *, cluster: str
    ) -> list[Manifest]:
        if policy.spec.target.mode is TargetMode.NATIVE:
            return [state_carrier(policy, plan)]
        require_istio(policy)
        namespace = policy.routing_namespace
        name = object_name(policy.routing_name)

        def backend(version: ModelVersion) -> Backend:
            return Backend(
                version,
                LOCAL_GATEWAY,
                request_set=(("Host", predictor_host(version)),),
                rewrite=model_rewrite(policy.model, version),
            )

        hosts = tuple(dict.fromkeys([*model_hosts(policy), *policy.spec.routing.hosts]))
        rules = leading_rules(policy, plan, backend)
        split = nonzero(plan)
        mirror_objects: list[Manifest] = []
        if len(split) > 1:
            rules.extend(_tagged_split(policy, split, backend))
        else:
            served = served_version(plan)
            rule = single_rule(policy, backend(served), name="default", match=default_match(policy))
            if plan.mirror is not None:
                gateway = MirrorGateway(policy.routing_name, namespace, policy.spec.target.protocol)
                rule = with_mirror(rule, gateway.destination, plan.mirror_percent)
                # A copy leaves the first hop with the served version's Host and its path
                # already rewritten; the mirror gateway's rule turns both into the candidate's.
                copy = replace(
                    backend(plan.mirror), rewrite=model_rewrite(served.ref.name, plan.mirror)
                )
                copy_rule = single_rule(policy, copy, name="mirrored", match=())
                mirror_objects = gateway.objects((predictor_host(served),), copy_rule)
            rules.append(rule)
        routing = VirtualService(
            ObjectMeta(name, namespace),
            hosts=hosts,
            gateways=mesh_gateways(policy, *KNATIVE_GATEWAYS),
            http=tuple(rules),
        )
        alias = Service(
            ObjectMeta(object_name(policy.model), policy.spec.namespace),
            ports=(ServicePortSpec("http", 80),),
            external_name=LOCAL_GATEWAY.host,
        )
        return [routing.to_dict(), alias.to_dict(), *mirror_objects]


def _tagged_split(
    policy: RolloutPolicy, split: list[tuple[ModelVersion, int]], backend_of: BackendOf
) -> list[HttpRule]:
    """The weighted first hop (untagged requests) and one tagged rule per version."""
    untagged = tuple(replace(m, without_headers=(BRANCH_HEADER,)) for m in default_match(policy))
    first = HttpRule(
        name="split",
        match=untagged or (Match(without_headers=(BRANCH_HEADER,)),),
        route=tuple(
            RouteDestination(
                LOCAL_GATEWAY, HeaderOps(request_set=((BRANCH_HEADER, v.ref.name),)), weight=w
            )
            for v, w in split
        ),
    )
    rules = [first]
    for version, _ in split:
        backend = backend_of(version)
        rules.append(
            HttpRule(
                name=f"branch-{version.version}",
                match=(Match(headers=((BRANCH_HEADER, StringMatch("exact", version.ref.name)),)),),
                rewrite=backend.rewrite,
                route=(
                    RouteDestination(
                        backend.destination,
                        HeaderOps(
                            request_set=backend.request_set,
                            request_remove=(BRANCH_HEADER,),
                            response_set=((policy.spec.routing.version_header, version.version),),
                        ),
                    ),
                ),
            )
        )
    return rules
