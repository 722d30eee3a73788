"""What the rendered routing does to real requests, through a real Envoy on 127.0.0.1.

The VirtualServices are produced by the targets and serialised by render exactly as they are
written to Git, then translated for Envoy (istio_envoy.py, following Istio's translation) and
served by one Envoy process with a listener per proxy: the mesh sidecar, the mirror gateway,
an ingress gateway and the Knative local gateway. Python backends stand in for the versions
and record the headers and paths they receive. Counts are checked against binomial bounds
(about 4.5 standard deviations), so a correct routing does not fail by chance and a wrong
share does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy_harness import (
    Backend,
    EnvoyProcess,
    client,
    free_port,
    require_envoy,
    wait_until_stable,
)
from istio_envoy import Listener, cluster_name, static_config

from gitops_rollout.inventory.model import ModelVersion, ObjectRef, Role, ServicePort
from gitops_rollout.policy import RolloutPolicy, load_policy_text
from gitops_rollout.render import routing_text
from gitops_rollout.state import Phase, RolloutState
from gitops_rollout.targets import adapter_for
from gitops_rollout.targets.kserve import BRANCH_HEADER
from gitops_rollout.transitions import RoutePlan

REQUESTS = 1000
MM_SERVICE = {
    "host": "modelmesh-serving.modelmesh-serving.svc.cluster.local",
    "port": {"number": 8033},
}
MM_HOST = "wisdom.modelmesh-serving"


def policy(text: str) -> RolloutPolicy:
    loaded, problems = load_policy_text(
        "apiVersion: gitops-rollout.dev/v1alpha1\nkind: RolloutPolicy\n" + text, file="p.yaml"
    )
    assert not problems, [str(p) for p in problems]
    return loaded[0].policy


def version(kind: str, namespace: str, name: str, label: str, *, port: int = 0) -> ModelVersion:
    return ModelVersion(
        ObjectRef(kind, namespace, name),
        "m",
        label,
        Role.UNKNOWN,
        f"clusters/prod/{namespace}/{name}.yaml",
        0,
        services=(ServicePort("http", port),) if port else (),
        service_name=name if port else None,
    )


def rendered(policy: RolloutPolicy, plan: RoutePlan) -> list[dict[str, Any]]:
    """The objects exactly as render writes them to the routing file."""
    objects = adapter_for(policy.spec.target.kind).render_routing(policy, plan, cluster="prod")
    text = routing_text(objects, RolloutState(Phase.PROGRESSING, 1), policy_file="p.yaml")
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def within(count: int, *, n: int, p: float) -> bool:
    """`count` successes of `n` trials is plausible for probability `p` (4.5 sigma)."""
    sigma = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= 4.5 * sigma


# ---------------------------------------------------------------------------------------------
# The routings under test

WISDOM_0 = version("InferenceService", "modelmesh-serving", "wisdom-0", "v0")
WISDOM_1 = version("InferenceService", "modelmesh-serving", "wisdom-1", "v1")
MIRROR_PERCENT = 20.0
MODELMESH = rendered(
    policy(
        "metadata: {name: wisdom}\nspec: {namespace: modelmesh-serving, clusters: [{name: prod}],\n"
        "  target: {kind: kserve-modelmesh}, strategy: {type: mirror}}\n"
    ),
    RoutePlan(WISDOM_0, mirror=WISDOM_1, mirror_percent=MIRROR_PERCENT),
)

GREEN = version("Deployment", "abtesting", "model-green", "v1", port=80)
BLUE = version("Deployment", "abtesting", "model-blue", "v2", port=80)
BLUE_GREEN = rendered(
    policy(
        "metadata: {name: model}\nspec:\n  namespace: abtesting\n  clusters: [{name: prod}]\n"
        "  target: {kind: deployment}\n  strategy: {type: blue-green}\n"
        "  routing: {hosts: ['*'], gateways: [model-gateway], includeMesh: false,\n"
        "    uriPrefix: /score, overrideHeader: {name: x-api-version,"
        " values: {green: v1, blue: v2}}}\n"
    ),
    RoutePlan(
        GREEN, weighted=((GREEN, 50), (BLUE, 50)), overrides=(("blue", BLUE), ("green", GREEN))
    ),
)

ISVC_0 = version("InferenceService", "models", "wisdom-0", "1.0")
ISVC_1 = version("InferenceService", "models", "wisdom-1", "1.1")
KSERVE_SHARE_0 = 20
KSERVE = rendered(
    policy(
        "metadata: {name: wisdom}\nspec: {namespace: models, clusters: [{name: prod}],\n"
        "  target: {kind: kserve}, strategy: {type: progressive, steps: [{weight: 80}]}}\n"
    ),
    RoutePlan(ISVC_0, weighted=((ISVC_0, KSERVE_SHARE_0), (ISVC_1, 100 - KSERVE_SHARE_0))),
)

ITER8_MIRROR = {
    "metadata": {"name": "iter8-style"},
    "spec": {
        "hosts": [MM_HOST],
        "http": [
            {
                "headers": {"request": {"set": {"mm-vmodel-id": "wisdom-1"}}},
                "route": [
                    {
                        "destination": MM_SERVICE,
                        "headers": {"request": {"set": {"mm-vmodel-id": "wisdom-0"}}},
                    }
                ],
                "mirror": MM_SERVICE,
                "mirrorPercentage": {"value": 100.0},
            }
        ],
    },
}
"""Iter8's mirror rule, which ROUTING.md says does not work (kept to show the test can tell)."""


def knative_route(isvc: str) -> dict[str, Any]:
    """What Knative's own VirtualService does at the local gateway: predictor host -> pods."""
    return {
        "metadata": {"name": f"knative-{isvc}"},
        "spec": {
            "hosts": [f"{isvc}-predictor.models.svc.cluster.local"],
            "http": [
                {"route": [{"destination": {"host": f"{isvc}.pods", "port": {"number": 80}}}]}
            ],
        },
    }


@dataclass
class DataPlane:
    ports: dict[str, int]
    backends: dict[str, Backend]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    binary = require_envoy()
    backends = {
        name: Backend(name) for name in ("modelmesh", "green", "blue", "wisdom-0", "wisdom-1")
    }
    backend_ports = {name: b.start() for name, b in backends.items()}
    ports = {
        name: free_port() for name in ("sidecar", "mirror-gateway", "iter8", "ingress", "knative")
    }
    mirror_gateway = by_kind(MODELMESH, "VirtualService", "wisdom-mirror")
    listeners = [
        Listener("sidecar", ports["sidecar"], [by_kind(MODELMESH, "VirtualService", "wisdom")]),
        Listener("mirror-gateway", ports["mirror-gateway"], [mirror_gateway]),
        Listener("iter8", ports["iter8"], [ITER8_MIRROR]),
        Listener("ingress", ports["ingress"], [by_kind(BLUE_GREEN, "VirtualService", "model")]),
        Listener(
            "knative",
            ports["knative"],
            [
                by_kind(KSERVE, "VirtualService", "wisdom"),
                knative_route("wisdom-0"),
                knative_route("wisdom-1"),
            ],
        ),
    ]
    mirror_service = by_kind(MODELMESH, "VirtualService", "wisdom")["spec"]["http"][0]["mirror"]
    endpoints = {
        cluster_name(MM_SERVICE): backend_ports["modelmesh"],
        cluster_name(mirror_service): ports["mirror-gateway"],
        cluster_name(
            {"host": "model-green.abtesting.svc.cluster.local", "port": {"number": 80}}
        ): backend_ports["green"],
        cluster_name(
            {"host": "model-blue.abtesting.svc.cluster.local", "port": {"number": 80}}
        ): backend_ports["blue"],
        cluster_name(
            {"host": "knative-local-gateway.istio-system.svc.cluster.local", "port": {"number": 80}}
        ): ports["knative"],
        cluster_name({"host": "wisdom-0.pods", "port": {"number": 80}}): backend_ports["wisdom-0"],
        cluster_name({"host": "wisdom-1.pods", "port": {"number": 80}}): backend_ports["wisdom-1"],
    }
    config = static_config(listeners, endpoints, admin_port=free_port())
    workdir: Path = tmp_path_factory.mktemp("envoy")
    try:
        with EnvoyProcess(binary, config, workdir):
            yield DataPlane(ports, backends)
    finally:
        for backend in backends.values():
            backend.stop()


@pytest.fixture(autouse=True)
def fresh_backends(plane: DataPlane) -> None:
    for backend in plane.backends.values():
        backend.clear()


# ---------------------------------------------------------------------------------------------
# ModelMesh mirror (**fix**: two hops)


def test_modelmesh_mirror_serves_the_primary_and_copies_to_the_candidate(plane: DataPlane) -> None:
    path = "/inference.GRPCInferenceService/ModelInfer"
    with client(plane.ports["sidecar"]) as send:
        answers = [send(path, host=MM_HOST, method="POST") for _ in range(REQUESTS)]
    assert {a.status for a in answers} == {200}
    assert {a.headers.get("app-version") for a in answers} == {"v0"}
    assert {a.body["headers"]["mm-vmodel-id"] for a in answers} == {"wisdom-0"}
    seen = wait_until_stable(plane.backends["modelmesh"])
    served = [s for s in seen if not s.headers["host"].endswith("-shadow")]
    copies = [s for s in seen if s.headers["host"].endswith("-shadow")]
    assert len(served) == REQUESTS
    assert {s.headers["mm-vmodel-id"] for s in served} == {"wisdom-0"}
    assert {s.headers["mm-vmodel-id"] for s in copies} == {"wisdom-1"}
    assert {s.path for s in copies} == {path}
    assert within(len(copies), n=REQUESTS, p=MIRROR_PERCENT / 100), len(copies)


def test_iter8s_one_hop_mirror_copies_with_the_primarys_id(plane: DataPlane) -> None:
    """The control: the translator and harness reproduce the failure ROUTING.md measured."""
    with client(plane.ports["iter8"]) as send:
        answers = [send("/", host=MM_HOST, method="POST") for _ in range(200)]
    assert {a.status for a in answers} == {200}
    seen = wait_until_stable(plane.backends["modelmesh"])
    assert len(seen) == 400, "every request served once and copied once"
    assert {s.headers["mm-vmodel-id"] for s in seen} == {"wisdom-0"}, "the candidate gets nothing"


# ---------------------------------------------------------------------------------------------
# Blue-green with an override header (deployment target)

VERSION_OF = {"green": "v1", "blue": "v2"}


def test_blue_green_split_follows_the_weights(plane: DataPlane) -> None:
    with client(plane.ports["ingress"]) as send:
        answers = [send("/score", host="scoring.example.com") for _ in range(REQUESTS)]
    assert {a.status for a in answers} == {200}
    for answer in answers:
        assert answer.headers["app-version"] == VERSION_OF[answer.body["backend"]]
    blue = sum(a.body["backend"] == "blue" for a in answers)
    assert within(blue, n=REQUESTS, p=0.5), blue


@pytest.mark.parametrize("color", ["blue", "green"])
def test_the_override_header_wins_over_the_weights(plane: DataPlane, color: str) -> None:
    with client(plane.ports["ingress"]) as send:
        answers = [
            send("/score", host="scoring.example.com", headers={"x-api-version": color})
            for _ in range(200)
        ]
    assert {a.body["backend"] for a in answers} == {color}
    assert {a.headers["app-version"] for a in answers} == {VERSION_OF[color]}


def test_paths_outside_the_uri_prefix_are_not_routed(plane: DataPlane) -> None:
    with client(plane.ports["ingress"]) as send:
        assert send("/admin", host="scoring.example.com").status == 404
    assert not plane.backends["green"].snapshot() and not plane.backends["blue"].snapshot()


# ---------------------------------------------------------------------------------------------
# KServe weighted split (**fix**: per-version model-name rewrite behind a tagged first hop


def test_kserve_split_rewrites_only_the_model_name(plane: DataPlane) -> None:
    with client(plane.ports["knative"]) as send:
        answers = [
            send("/v2/models/wisdom/infer", host="wisdom.models", method="POST")
            for _ in range(REQUESTS)
        ]
    assert {a.status for a in answers} == {200}
    for answer in answers:
        isvc = answer.body["backend"]
        assert answer.body["path"] == f"/v2/models/{isvc}/infer"
        assert answer.headers["app-version"] == {"wisdom-0": "1.0", "wisdom-1": "1.1"}[isvc]
        assert BRANCH_HEADER not in answer.body["headers"], "the tag must not reach the model"
    first = sum(a.body["backend"] == "wisdom-0" for a in answers)
    assert within(first, n=REQUESTS, p=KSERVE_SHARE_0 / 100), first


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/v2/health/ready", "/v2/health/ready", id="health untouched"),
        pytest.param("/v2/models/wisdom/ready", "/v2/models/{isvc}/ready", id="model ready"),
        pytest.param("/v2/models/wisdom", "/v2/models/{isvc}", id="model metadata"),
        pytest.param("/v1/models/wisdom:predict", "/v1/models/{isvc}:predict", id="v1 predict"),
        pytest.param("/v2/models/wisdom2/infer", "/v2/models/wisdom2/infer", id="other model"),
    ],
)
def test_kserve_paths(plane: DataPlane, path: str, expected: str) -> None:
    with client(plane.ports["knative"]) as send:
        answers = [send(path, host="wisdom.models") for _ in range(20)]
    for answer in answers:
        assert answer.status == 200
        assert answer.body["path"] == expected.format(isvc=answer.body["backend"])
