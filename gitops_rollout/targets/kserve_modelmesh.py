"""KServe ModelMesh: every version behind one Service, chosen by the ``mm-vmodel-id`` header.

Writes the VirtualService ``<model>`` (the model's three in-mesh hosts, gateway ``mesh`` plus
the policy's) with ``mm-vmodel-id`` set per destination, and a ServiceEntry for those hosts (no
Kubernetes Service ``<model>`` exists for a sidecar to match). Mirroring uses the **fixed**
two-hop shape of ROUTING.md: copies go to a small mirror gateway whose own VirtualService sets
the candidate's id. InferenceService edits on promotion are `manifest_edits`' job.
"""

from __future__ import annotations

from gitops_rollout.inventory.model import ModelVersion
from gitops_rollout.policy import RolloutPolicy, TargetKind
from gitops_rollout.targets.base import (
    Manifest,
    fqdn,
    mesh_gateways,
    model_hosts,
    object_name,
    require_istio,
)
from gitops_rollout.targets.istio import (
    Backend,
    Destination,
    MirrorGateway,
    ServiceEntry,
    VirtualService,
    plan_rules,
    single_rule,
)
from gitops_rollout.targets.k8s import ObjectMeta
from gitops_rollout.transitions import RoutePlan

MODEL_ID_HEADER = "mm-vmodel-id"
DEFAULT_SERVICE = "modelmesh-serving"
DEFAULT_PORT = 8033
WORKLOAD_LABELS = (("modelmesh-service", "modelmesh-serving"),)


class KServeModelMesh:
    kind = TargetKind.KSERVE_MODELMESH

    def render_routing(
        self, policy: RolloutPolicy, plan: RoutePlan, *, cluster: str
    ) -> list[Manifest]:
        require_istio(policy)
        target = policy.spec.target
        namespace = policy.routing_namespace
        name = object_name(policy.routing_name)
        serving = Destination(
            fqdn(target.service_host or DEFAULT_SERVICE, policy.spec.namespace),
            target.service_port or DEFAULT_PORT,
        )

        def backend(version: ModelVersion) -> Backend:
            # The id is set on the destination only: with one destination Istio applies a
            # destination-level set after a rule-level one, with several the other way round.
            return Backend(version, serving, request_set=((MODEL_ID_HEADER, version.ref.name),))

        hosts = model_hosts(policy)
        served_hosts = tuple(dict.fromkeys([*hosts, *policy.spec.routing.hosts]))
        mirror = MirrorGateway(policy.routing_name, namespace, target.protocol)
        rules = plan_rules(
            policy,
            plan,
            backend,
            mirror_to=lambda _version: mirror.destination,
        )
        routing = VirtualService(
            ObjectMeta(name, namespace),
            hosts=served_hosts,
            gateways=mesh_gateways(policy),
            http=rules,
        )
        entry = ServiceEntry(
            ObjectMeta(name, namespace),
            hosts=hosts,
            port=serving.port or DEFAULT_PORT,
            protocol=target.protocol,
            workload_labels=WORKLOAD_LABELS,
        )
        objects = [routing.to_dict(), entry.to_dict()]
        if plan.mirror is not None:
            copy_rule = single_rule(policy, backend(plan.mirror), name="mirrored", match=())
            objects.extend(mirror.objects(served_hosts, copy_rule))
        return objects
