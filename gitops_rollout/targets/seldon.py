"""Seldon Core v1 (SeldonDeployment ``machinelearning.seldon.io/v1``).

separate: one SeldonDeployment per version, possibly in different namespaces (the Iter8/Seldon
example). We write a VirtualService in the policy's routing namespace, on the policy's gateways
and hosts, with destinations ``<sdep>-<predictor>.<ns>.svc.cluster.local:8000`` (the Service the
Seldon operator creates per predictor).

native: one SeldonDeployment with a predictor per version; the Seldon operator writes the
VirtualService from ``predictors[].traffic`` and ``shadow``, which `manifest_edits` sets. We
write only the ConfigMap that carries the rollout state.
"""

from __future__ import annotations

from gitops_rollout.inventory.model import ModelVersion
from gitops_rollout.policy import RolloutPolicy, TargetKind, TargetMode
from gitops_rollout.targets.base import (
    Manifest,
    TargetError,
    fqdn,
    mesh_gateways,
    object_name,
    require_istio,
)
from gitops_rollout.targets.istio import Backend, Destination, VirtualService, plan_rules
from gitops_rollout.targets.k8s import ObjectMeta, state_carrier
from gitops_rollout.transitions import RoutePlan

DEFAULT_PORT = 8000
"""HTTP port of the Service the Seldon operator creates per predictor."""


class Seldon:
    kind = TargetKind.SELDON

    def render_routing(
        self, policy: RolloutPolicy, plan: RoutePlan, *, cluster: str
    ) -> list[Manifest]:
        if policy.spec.target.mode is TargetMode.NATIVE:
            return [state_carrier(policy, plan)]
        require_istio(policy)
        routing = policy.spec.routing
        if not routing.hosts:
            raise TargetError(
                "seldon separate mode routes through a host the policy names; none is given",
                fix="set spec.routing.hosts (for example iris.example.com) and "
                "spec.routing.gateways (for example istio-system/seldon-gateway)",
            )
        port = policy.spec.target.service_port or DEFAULT_PORT

        def backend(version: ModelVersion) -> Backend:
            predictor = version.predictor or policy.spec.target.predictor
            host = fqdn(f"{version.ref.name}-{predictor}", version.ref.namespace)
            return Backend(version, Destination(host, port))

        service = VirtualService(
            ObjectMeta(object_name(policy.routing_name), policy.routing_namespace),
            hosts=routing.hosts,
            gateways=mesh_gateways(policy),
            http=plan_rules(policy, plan, backend),
        )
        return [service.to_dict()]
