"""The target registry, what targets refuse to render, and render's bookkeeping of files.

The golden tests show the shapes; these pin the behaviour around them: unknown kinds fail
loudly, a plan a target cannot express becomes a located problem and no files, the rule
invariants of ROUTING.md are enforced where rules are built, and render keeps kustomizations
and the bot-owned folder consistent (new rollouts listed, removed files and emptied folders
unlisted, stale generated files deleted, nothing written when any edit fails).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from rollout_sim import CLUSTER, FIXTURES, Scenario, Sim, load_dir, start

from gitops_rollout.inventory.model import ModelVersion, ObjectRef, Role, ServicePort
from gitops_rollout.policy import RolloutPolicy, TargetKind, load_policy_text
from gitops_rollout.render import remove_rollout, render
from gitops_rollout.state import read_stored
from gitops_rollout.targets import ADAPTERS, TargetError, UnknownTargetError, adapter_for
from gitops_rollout.targets.istio import Destination, HttpRule, RouteDestination
from gitops_rollout.transitions import (
    EditKind,
    ManifestEdit,
    RoutePlan,
    Transition,
    advance,
    assess,
)

NOW = datetime(2024, 5, 1, tzinfo=UTC)


def policy_of(text: str) -> RolloutPolicy:
    loaded, problems = load_policy_text(text, file="policies/p.yaml")
    assert not problems, [str(p) for p in problems]
    return loaded[0].policy


def deployment_version(name: str, *, service: bool = True) -> ModelVersion:
    return ModelVersion(
        ObjectRef("Deployment", "default", name),
        "m",
        name,
        Role.UNKNOWN,
        f"clusters/prod/default/{name}.yaml",
        0,
        service_name=name if service else None,
        services=(ServicePort("http", 8080),) if service else (),
    )


# ---------------------------------------------------------------------------------------------
# Registry


def test_every_target_kind_has_an_adapter() -> None:
    assert set(ADAPTERS) == set(TargetKind)
    for kind, adapter in ADAPTERS.items():
        assert adapter.kind is kind
        assert adapter_for(kind.value) is adapter


def test_an_unknown_kind_is_rejected_naming_the_known_ones() -> None:
    with pytest.raises(UnknownTargetError, match=r"'knative'.*kserve-modelmesh, kserve, seldon"):
        adapter_for("knative")


# ---------------------------------------------------------------------------------------------
# What targets refuse


@pytest.mark.parametrize(
    ("policy", "plan", "message"),
    [
        pytest.param(
            "apiVersion: gitops-rollout.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: m}\n"
            "spec: {namespace: default, clusters: [{name: prod}], target: {kind: seldon},\n"
            "  strategy: {type: canary}}\n",
            RoutePlan(deployment_version("a")),
            "seldon separate mode routes through a host the policy names",
            id="seldon separate without hosts",
        ),
        pytest.param(
            "apiVersion: gitops-rollout.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: m}\n"
            "spec: {namespace: default, clusters: [{name: prod}], target: {kind: deployment},\n"
            "  strategy: {type: canary}}\n",
            RoutePlan(deployment_version("a", service=False)),
            "Deployment/default/a has no Service",
            id="deployment version without a Service",
        ),
        pytest.param(
            "apiVersion: gitops-rollout.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: m}\n"
            "spec: {namespace: default, clusters: [{name: prod}], target: {kind: deployment},\n"
            "  routing: {api: gateway-api},\n"
            "  strategy: {type: canary, match: [{sourceLabels: {app: tester}}]}}\n",
            RoutePlan(deployment_version("a"), matched=(deployment_version("b"),)),
            "Gateway API routes cannot match sourceLabels",
            id="gateway api cannot match source labels",
        ),
        pytest.param(
            "apiVersion: gitops-rollout.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: m}\n"
            "spec: {namespace: default, clusters: [{name: prod}],\n"
            "  target: {kind: kserve-modelmesh}, routing: {api: gateway-api},\n"
            "  strategy: {type: canary}}\n",
            RoutePlan(deployment_version("a")),
            "routing api gateway-api is rendered for the deployment target only",
            id="gateway api on a target that routes with istio",
        ),
        pytest.param(
            "apiVersion: gitops-rollout.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: m}\n"
            "spec: {namespace: default, clusters: [{name: prod}], target: {kind: deployment},\n"
            f"  routing: {{name: {'r' * 63}}}, strategy: {{type: canary}}}}\n",
            RoutePlan(deployment_version("a")),
            None,
            id="a 63-character routing name is still fine",
        ),
    ],
)
def test_targets_refuse_what_they_cannot_express(
    policy: str, plan: RoutePlan, message: str | None
) -> None:
    parsed = policy_of(policy)
    adapter = adapter_for(parsed.spec.target.kind)
    if message is None:
        assert adapter.render_routing(parsed, plan, cluster=CLUSTER)
        return
    with pytest.raises(TargetError, match=message) as raised:
        adapter.render_routing(parsed, plan, cluster=CLUSTER)
    assert raised.value.fix


def test_mirror_gateway_names_past_63_characters_fail_loudly() -> None:
    name = "w" * 50
    parsed = policy_of(
        "apiVersion: gitops-rollout.dev/v1alpha1\nkind: RolloutPolicy\n"
        f"metadata: {{name: {name}}}\n"
        "spec: {namespace: ns, clusters: [{name: prod}], target: {kind: kserve-modelmesh},\n"
        "  strategy: {type: mirror}}\n"
    )
    primary = dataclasses.replace(
        deployment_version("a"), ref=ObjectRef("InferenceService", "ns", "a")
    )
    plan = RoutePlan(primary, mirror=dataclasses.replace(primary, ref=ObjectRef("X", "ns", "b")))
    with pytest.raises(TargetError, match="longer than 63"):
        adapter_for(TargetKind.KSERVE_MODELMESH).render_routing(parsed, plan, cluster=CLUSTER)


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param((50, 40), id="sum below 100"),
        pytest.param((100, 0), id="a zero weight"),
        pytest.param((None, None), id="weights missing on a split"),
    ],
)
def test_a_split_rule_needs_positive_weights_summing_to_100(
    weights: tuple[int | None, ...],
) -> None:
    route = tuple(RouteDestination(Destination(f"h{i}"), weight=w) for i, w in enumerate(weights))
    with pytest.raises(ValueError, match="must be positive integers summing to 100"):
        HttpRule(route=route)


def test_a_rule_must_route_somewhere() -> None:
    with pytest.raises(ValueError, match="at least one destination"):
        HttpRule(route=())


def test_each_canary_clause_is_its_own_match_entry() -> None:
    """**fix**: Iter8 merged a header-less clause into the previous clause (AND, not OR)."""
    parsed = policy_of(
        "apiVersion: gitops-rollout.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: m}\n"
        "spec: {namespace: default, clusters: [{name: prod}], target: {kind: deployment},\n"
        "  strategy: {type: canary, match: [{headers: {traffic: {exact: test}}},\n"
        "    {uri: {prefix: /v2/models/m/ready}}, {method: {exact: PUT}}]}}\n"
    )
    plan = RoutePlan(deployment_version("a"), matched=(deployment_version("b"),))
    (service,) = adapter_for(TargetKind.DEPLOYMENT).render_routing(parsed, plan, cluster=CLUSTER)
    first = service["spec"]["http"][0]
    assert first["match"] == [
        {"headers": {"traffic": {"exact": "test"}}},
        {"uri": {"prefix": "/v2/models/m/ready"}},
        {"method": {"exact": "PUT"}},
    ]
    assert "match" not in service["spec"]["http"][-1], "the primary's default rule comes last"


# ---------------------------------------------------------------------------------------------
# Render's bookkeeping of files


def _transition(sim: Sim, *, versions: list[ModelVersion] | None = None) -> Transition:
    """The transition of one pass on `sim`'s tree."""
    path = sim.routing_path
    stored = read_stored(sim.tree.read(path)) if path in sim.tree.files else None
    situation = assess(
        sim.loaded,
        cluster=CLUSTER,
        versions=sim.versions(sim.tree) if versions is None else versions,
        stored=stored,
        step_started=None,
    )
    return advance(situation, now=NOW)


def test_a_render_error_is_a_located_problem_and_writes_nothing() -> None:
    sim = start(Scenario("seldon", "seldon", "ab.yaml"))
    text = sim.tree.read("policies/ab.yaml").replace(b"    hosts: [iris.example.com]\n", b"")
    loaded, problems = load_policy_text(text, file="policies/ab.yaml")
    assert not problems
    sim.loaded = loaded[0]
    rendered = render(_transition(sim), tree=sim.tree)
    assert rendered.files == {}
    assert [str(p) for p in rendered.problems] == [
        "policies/ab.yaml:1: seldon separate mode routes through a host the policy names; none "
        "is given (fix: set spec.routing.hosts (for example iris.example.com) and "
        "spec.routing.gateways (for example istio-system/seldon-gateway))"
    ]


def test_no_primary_renders_nothing() -> None:
    sim = start(Scenario("mm", "modelmesh", "canary.yaml"))
    transition = _transition(sim, versions=[])
    assert transition.plan is None
    rendered = render(transition, tree=sim.tree)
    assert rendered.files == {} and rendered.problems == []


def test_a_new_rollout_is_listed_in_the_namespace_kustomization_once() -> None:
    sim = start(Scenario("mm", "modelmesh", "canary.yaml"))
    first = sim.step("adopt")
    ns = "clusters/prod/modelmesh-serving/kustomization.yaml"
    assert first.rendered.files[ns] == sim.tree.read(ns)
    assert sim.tree.read(ns).endswith(
        b"  - wisdom-0.yaml   # the model in production\n  - wisdom/rollout\n"
    )
    again = sim.step("refresh")
    assert ns not in again.rendered.files


def test_without_a_namespace_kustomization_only_the_rollout_folder_is_written() -> None:
    sim = start(Scenario("seldon", "seldon", "ab.yaml"))
    rendered = sim.step("adopt").rendered
    assert sorted(rendered.files) == [
        "clusters/prod/default/iris/rollout/kustomization.yaml",
        "clusters/prod/default/iris/rollout/routing.yaml",
    ]


def test_stale_generated_files_are_deleted() -> None:
    sim = start(Scenario("mm", "modelmesh", "canary.yaml"))
    sim.step("adopt")
    stale = "clusters/prod/modelmesh-serving/wisdom/rollout/mirror.yaml"
    sim.tree = sim.tree.apply({stale: b"kind: Old\n"})
    assert sim.step("refresh").rendered.files[stale] is None


def test_remove_rollout_deletes_the_folder_and_its_entry_only() -> None:
    sim = start(Scenario("mm", "modelmesh", "canary.yaml"))
    sim.step("adopt")
    before = sim.tree.files
    rendered = remove_rollout(
        "wisdom", cluster=CLUSTER, namespace="modelmesh-serving", tree=sim.tree
    )
    assert rendered.problems == []
    base = load_dir(FIXTURES / "modelmesh" / "base")
    ns = "clusters/prod/modelmesh-serving/kustomization.yaml"
    assert rendered.files == {
        ns: base[ns],
        "clusters/prod/modelmesh-serving/wisdom/rollout/kustomization.yaml": None,
        "clusters/prod/modelmesh-serving/wisdom/rollout/routing.yaml": None,
    }
    assert set(before) - set(sim.tree.apply(rendered.files).files) == {
        "clusters/prod/modelmesh-serving/wisdom/rollout/kustomization.yaml",
        "clusters/prod/modelmesh-serving/wisdom/rollout/routing.yaml",
    }


def test_an_emptied_folder_leaves_its_parent_kustomization() -> None:
    sim = start(Scenario("mm", "modelmesh", "canary.yaml"))
    sim.step("adopt")
    ns = "clusters/prod/modelmesh-serving"
    candidate = load_dir(FIXTURES / "modelmesh" / "candidate")[f"{ns}/wisdom-1.yaml"]
    sim.tree = sim.tree.apply(
        {
            f"{ns}/wisdom-1/isvc.yaml": candidate,
            f"{ns}/kustomization.yaml": sim.tree.read(f"{ns}/kustomization.yaml")
            + b"  - wisdom-1\n",
        }
    )
    transition = _transition(sim)
    wisdom_1 = next(v for v in sim.versions(sim.tree) if v.ref.name == "wisdom-1")
    removal = dataclasses.replace(transition, edits=(ManifestEdit(EditKind.REMOVE, wisdom_1),))
    rendered = render(removal, tree=sim.tree)
    assert rendered.problems == []
    assert rendered.files[f"{ns}/wisdom-1/isvc.yaml"] is None
    kustomization = rendered.files[f"{ns}/kustomization.yaml"]
    assert kustomization is not None
    assert b"wisdom-1" not in kustomization and b"wisdom/rollout" in kustomization


def test_one_failing_edit_writes_nothing() -> None:
    sim = start(Scenario("mm", "modelmesh", "canary.yaml"))
    transition = _transition(sim)
    primary = sim.versions(sim.tree)[0]
    ghost = dataclasses.replace(primary, ref=dataclasses.replace(primary.ref, name="ghost"))
    broken = dataclasses.replace(
        transition,
        edits=(
            ManifestEdit(EditKind.SET_ROLE, primary, value="primary"),
            ManifestEdit(EditKind.SET_ROLE, ghost, value="candidate"),
        ),
    )
    rendered = render(broken, tree=sim.tree)
    assert rendered.files == {}
    assert [str(p) for p in rendered.problems] == [
        "clusters/prod/modelmesh-serving/wisdom-0.yaml: InferenceService/modelmesh-serving/ghost "
        "is not in clusters/prod/modelmesh-serving/wisdom-0.yaml (fix: the inventory is stale; "
        "run again after the change is merged)"
    ]
