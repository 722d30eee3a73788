"""Checks that need both a policy and the repository it acts on.

`policy` validates each file on its own; this module checks what only the pair can show: the
clusters a policy names exist, its model has versions there, they are of the kind its target
expects, and every version a weighted route needs has a Service. Each finding is a located
`Problem` on the policy field to fix. The checks are cheap and run on every pass, so a rollout
with a problem is held with the same message `validate` prints.

`check_analysis` reads the analysis section against the metrics a target exports (names,
margins, limits, rewards, custom metric kinds); `check_queries` is the one check with I/O: it
asks a Prometheus to evaluate each custom query (``validate --prometheus``), and
`query_problem` words a rejected query the same way whether `validate` or a pass found it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from gitops_rollout.analysis.catalogue import (
    BUILTIN,
    DEFAULT_MAX_INCREASE,
    ROLLBACK_INCREASE,
    Source,
    resolve,
)
from gitops_rollout.errors import Problem
from gitops_rollout.inventory.model import Inventory, Kind, ModelVersion, Role
from gitops_rollout.policy import (
    FEEDBACK_METRIC,
    Analysis,
    CustomMetric,
    LoadedPolicy,
    MetricKind,
    Objective,
    TargetKind,
    TargetMode,
)
from gitops_rollout.state import ROUTING_FILE, read_stored, rollout_dir
from gitops_rollout.yamlsource import FieldPath

if TYPE_CHECKING:
    # The metrics stage (numpy, requests) is imported by the functions that ask Prometheus
    # (``validate --prometheus``): every pass validates policies and must not load it.
    from gitops_rollout.metrics.base import QueryError, VersionRef
    from gitops_rollout.metrics.prometheus import PrometheusClient
    from gitops_rollout.tree import Tree

_EXPECTED_KIND = {
    TargetKind.KSERVE_MODELMESH: Kind.INFERENCE_SERVICE,
    TargetKind.KSERVE: Kind.INFERENCE_SERVICE,
    TargetKind.SELDON: Kind.SELDON_DEPLOYMENT,
    TargetKind.DEPLOYMENT: Kind.DEPLOYMENT,
}


def _target_for(version: ModelVersion) -> TargetKind | None:
    """The target kind that fits a version's manifest, for the fix."""
    if version.ref.kind == Kind.INFERENCE_SERVICE:
        return TargetKind.KSERVE_MODELMESH if version.modelmesh else TargetKind.KSERVE
    if version.ref.kind == Kind.SELDON_DEPLOYMENT:
        return TargetKind.SELDON
    if version.ref.kind == Kind.DEPLOYMENT:
        return TargetKind.DEPLOYMENT
    return None


def _version_problem(
    loaded: LoadedPolicy, version: ModelVersion, cluster_index: int
) -> Problem | None:
    target = loaded.policy.spec.target
    expected = _EXPECTED_KIND[target.kind]
    where = f"{version.ref} ({version.file})"
    kind_path: tuple[str | int, ...] = ("spec", "target", "kind")
    if version.ref.kind != expected:
        fits = _target_for(version)
        switch = f"use kind: {fits.value}" if fits is not None else "use the target that fits"
        return loaded.problem(
            kind_path,
            f"target {target.kind.value} expects a {expected.value}, but {where} is a "
            f"{version.ref.kind}",
            f"{switch}, or check that the policy names the right model",
        )
    if target.kind is TargetKind.KSERVE_MODELMESH and not version.modelmesh:
        return loaded.problem(
            kind_path,
            "target kserve-modelmesh needs the annotation serving.kserve.io/deploymentMode: "
            f"ModelMesh, which {where} lacks",
            "add the annotation to the InferenceService, or use kind: kserve if ModelMesh "
            "does not serve it",
        )
    if target.kind is TargetKind.KSERVE and version.modelmesh:
        return loaded.problem(
            kind_path,
            f"{where} is served by ModelMesh (serving.kserve.io/deploymentMode: ModelMesh), "
            "which target kserve does not route",
            "use kind: kserve-modelmesh",
        )
    if target.kind is TargetKind.DEPLOYMENT and version.service_name is None:
        return loaded.problem(
            ("spec", "clusters", cluster_index, "name"),
            f"no Service routes to {where}: none is named {version.ref.name} or selects "
            f"app.kubernetes.io/version: {version.version}",
            f"add a Service named {version.ref.name} that selects the Deployment's pods",
        )
    return None


def check_policy(loaded: LoadedPolicy, inventory: Inventory) -> list[Problem]:
    """Problems between one policy and the repository's manifests."""
    problems: list[Problem] = check_analysis(loaded)
    policy = loaded.policy
    for index, cluster in enumerate(policy.spec.clusters):
        path: tuple[str | int, ...] = ("spec", "clusters", index, "name")
        if cluster.name not in inventory.clusters:
            known = ", ".join(sorted(inventory.clusters)) or "none"
            problems.append(
                loaded.problem(
                    path,
                    f"cluster {cluster.name!r} has no folder clusters/{cluster.name}/ "
                    f"(clusters found: {known})",
                    f"correct the name, or add the folder clusters/{cluster.name}/",
                )
            )
            continue
        versions = inventory.versions(cluster.name, policy.model)
        if not versions:
            problems.append(
                loaded.problem(
                    ("spec", "model") if policy.spec.model else ("metadata", "name"),
                    f"no version of model {policy.model!r} in clusters/{cluster.name}/",
                    f"label its manifests app.kubernetes.io/name: {policy.model} and "
                    'gitops-rollout.dev/watch: "true", or set spec.model to the name they carry',
                )
            )
            continue
        for version in versions:
            found = _version_problem(loaded, version, index)
            if found is not None:
                problems.append(found)
        native_kserve = (
            policy.spec.target.kind is TargetKind.KSERVE
            and policy.spec.target.mode is TargetMode.NATIVE
        )
        if native_kserve and len(versions) != 1:
            problems.append(
                loaded.problem(
                    ("spec", "target", "mode"),
                    f"mode native expects one InferenceService in {cluster.name}, found "
                    f"{len(versions)}",
                    "use mode: separate for one InferenceService per version",
                )
            )
    return problems


def check_primaries(
    policies: Sequence[LoadedPolicy], inventory: Inventory, tree: Tree
) -> list[Problem]:
    """Rollouts whose manifests label more than one version primary while no recorded state
    says which one serves (a pass holds them: ``validate`` says so before it runs)."""
    problems: list[Problem] = []
    for loaded in policies:
        policy = loaded.policy
        for index, cluster in enumerate(policy.spec.clusters):
            versions = inventory.versions(cluster.name, policy.model)
            labelled = [v for v in versions if v.role is Role.PRIMARY]
            if len(labelled) < 2:
                continue
            folder = rollout_dir(
                cluster=cluster.name, namespace=policy.routing_namespace, model=policy.model
            )
            try:
                recorded = read_stored(tree.read(f"{folder}/{ROUTING_FILE}")).state.primary
            except FileNotFoundError:
                recorded = None
            if recorded is not None and any(v.key == recorded.key for v in versions):
                continue
            files = ", ".join(sorted({v.file for v in labelled}))
            problems.append(
                loaded.problem(
                    ("spec", "clusters", index, "name"),
                    f"{len(labelled)} versions of model {policy.model!r} in {cluster.name} are "
                    f"labelled primary ({', '.join(v.version for v in labelled)}, in {files}) "
                    "and no rollout state names one",
                    "label only the version serving now gitops-rollout.dev/role: primary, the "
                    "others candidate",
                )
            )
    return problems


# -- the analysis section -----------------------------------------------------------------------

_PLACEHOLDERS = ("$version", "$namespace", "$model")
_PLACEHOLDER = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*")
_LIMIT_UNITS = {
    Source.ERRORS: "a fraction of requests (0.01 = 1 %)",
    Source.LATENCY_MEAN: "milliseconds",
    Source.LATENCY_TAIL: "milliseconds",
}
_LOWER_IS_BETTER = {"error-rate", "mean-latency", "p95-latency", "p99-latency"}


def check_analysis(loaded: LoadedPolicy) -> list[Problem]:
    """Problems of the analysis section the schema cannot see: metrics that are neither built
    in nor defined, or that the target does not export; margins no candidate could meet;
    limits in the wrong unit; rewards that cannot rank versions; custom metrics whose kind
    does not fit their queries. Each would hold the rollout forever (or decide on nothing),
    so each fails `validate` and holds the policy with the same message."""
    analysis = loaded.policy.spec.analysis
    if analysis is None:
        return []
    target = loaded.policy.spec.target.kind
    problems: list[Problem] = []
    problems += _custom_metric_problems(loaded, analysis)
    for i, objective in enumerate(analysis.objectives):
        at: FieldPath = ("spec", "analysis", "objectives", i)
        source = _known_metric(loaded, analysis, objective.metric, (*at, "metric"), problems)
        if source is None:
            continue
        if not _exported(loaded, analysis, target, objective.metric, (*at, "metric"), problems):
            continue
        problems += _objective_problems(loaded, objective, source, at)
    for i, reward in enumerate(analysis.rewards):
        at = ("spec", "analysis", "rewards", i)
        source = _known_metric(loaded, analysis, reward.metric, (*at, "metric"), problems)
        if source is None:
            continue
        if not _exported(loaded, analysis, target, reward.metric, (*at, "metric"), problems):
            continue
        if source is Source.LATENCY_TAIL:
            problems.append(
                loaded.problem(
                    (*at, "metric"),
                    f"{reward.metric} is a latency quantile, which cannot rank versions as a "
                    "reward: a reward is a count or a mean per request",
                    "use a counter defined under analysis.metrics (e.g. user-engagement), or "
                    "mean-latency with preferHigher: false",
                )
            )
        elif reward.metric in _LOWER_IS_BETTER and reward.prefer_higher:
            problems.append(
                loaded.problem(
                    (*at, "preferHigher"),
                    f"preferHigher is true, so the version with the highest {reward.metric} "
                    "would win",
                    "set preferHigher: false",
                )
            )
    return problems


def _custom_names(analysis: Analysis) -> list[str]:
    return [m.name for m in analysis.metrics]


def _known_metric(
    loaded: LoadedPolicy, analysis: Analysis, name: str, at: FieldPath, problems: list[Problem]
) -> Source | None:
    """The metric's source as the analysis resolves it, or None (with a problem)."""
    found = resolve(name, analysis)
    if found is not None:
        return found[0]
    defined = ", ".join(_custom_names(analysis)) or "none"
    problems.append(
        loaded.problem(
            at,
            f"unknown metric {name!r}: it is not built in ({', '.join(BUILTIN)}) and not "
            f"defined under spec.analysis.metrics (defined: {defined})",
            f"use a built-in metric, or define {name} under analysis.metrics with its PromQL",
        )
    )
    return None


def _exported(
    loaded: LoadedPolicy,
    analysis: Analysis,
    target: TargetKind,
    name: str,
    at: FieldPath,
    problems: list[Problem],
) -> bool:
    """False (with a problem) for a metric the target's exporters do not have."""
    if (
        name == FEEDBACK_METRIC
        and name not in _custom_names(analysis)
        and target is not TargetKind.SELDON
    ):
        problems.append(
            loaded.problem(
                at,
                f"target {target.value} exports no feedback count: only Seldon's executor "
                "counts feedback requests",
                "define feedback under analysis.metrics with the PromQL of your feedback "
                "counter, or use target seldon",
            )
        )
        return False
    return True


def _objective_problems(
    loaded: LoadedPolicy, objective: Objective, source: Source, at: FieldPath
) -> list[Problem]:
    problems: list[Problem] = []
    name = objective.metric
    if objective.max_increase is not None:
        floor, default = ROLLBACK_INCREASE[source], DEFAULT_MAX_INCREASE[source]
        if objective.max_increase <= floor:
            why = (
                "a rate rolls back at any proven increase, so a candidate as good as the "
                "baseline could never be shown within a margin of 0"
                if floor == 0
                else f"{name} rolls back above +{floor:g}, so a candidate as good as the "
                "baseline could never be shown within it"
            )
            problems.append(
                loaded.problem(
                    (*at, "maxIncrease"),
                    f"maxIncrease {objective.max_increase:g} is not above the rollback margin "
                    f"of {floor:g}: {why}",
                    f"use a margin above {floor:g}, e.g. the default {default:g}",
                )
            )
    for key, limit in (
        ("upperLimit", objective.upper_limit),
        ("lowerLimit", objective.lower_limit),
    ):
        if limit is None:
            continue
        unit = _LIMIT_UNITS.get(source)
        if source is Source.ERRORS and limit > 1:
            problems.append(
                loaded.problem(
                    (*at, key),
                    f"{key} {limit:g} is above 1, but {name} is {unit}",
                    f"write {limit / 100:g} for {limit:g} %",
                )
            )
        elif unit is not None and key == "upperLimit" and limit <= 0:
            problems.append(
                loaded.problem(
                    (*at, key),
                    f"upperLimit {limit:g} can never be met: {name} is {unit}, never below 0",
                    "use a positive limit",
                )
            )
        elif unit is not None and key == "lowerLimit" and limit <= 0:
            problems.append(
                loaded.problem(
                    (*at, key),
                    f"lowerLimit {limit:g} is always met: {name} is never below 0",
                    f"remove lowerLimit, or give a positive one in {unit}",
                )
            )
    return problems


def _custom_metric_problems(loaded: LoadedPolicy, analysis: Analysis) -> list[Problem]:
    problems: list[Problem] = []
    first: dict[str, int] = {}
    for i, metric in enumerate(analysis.metrics):
        at: FieldPath = ("spec", "analysis", "metrics", i)
        if metric.name in BUILTIN:
            problems.append(
                loaded.problem(
                    (*at, "name"),
                    f"{metric.name} is a built-in metric; this definition would never be used",
                    "give your metric another name, and use that name in objectives",
                )
            )
        elif metric.name in first:
            problems.append(
                loaded.problem(
                    (*at, "name"),
                    f"metric {metric.name} is already defined at "
                    f"spec.analysis.metrics[{first[metric.name]}]",
                    "rename or remove one of them",
                )
            )
        first.setdefault(metric.name, i)
        problems += _kind_problems(loaded, metric, at)
        for attr, key in (("query", "query"), ("denominator", "denominator")):
            expr = getattr(metric, attr)
            unknown = sorted(
                {p for p in _PLACEHOLDER.findall(expr or "") if p not in _PLACEHOLDERS}
            )
            if unknown:
                problems.append(
                    loaded.problem(
                        (*at, key),
                        f"{', '.join(unknown)} is not a placeholder gitops-rollout fills in",
                        f"use {', '.join(_PLACEHOLDERS)}, or write the value itself",
                    )
                )
    return problems


def _kind_problems(loaded: LoadedPolicy, metric: CustomMetric, at: FieldPath) -> list[Problem]:
    if metric.kind is MetricKind.RATIO and not metric.denominator:
        return [
            loaded.problem(
                (*at, "kind"),
                f"kind ratio divides bad events by all events, but {metric.name} has no "
                "denominator",
                "add denominator: <PromQL counting all events>, or use kind: counter to count "
                "events per request",
            )
        ]
    if metric.kind is MetricKind.COUNTER and metric.denominator:
        return [
            loaded.problem(
                (*at, "denominator"),
                "kind counter counts events per request, so this denominator would be ignored",
                "use kind: ratio to divide by it, or remove denominator",
            )
        ]
    return []


# -- PromQL, checked by Prometheus --------------------------------------------------------------


def query_problem(loaded: LoadedPolicy, error: QueryError) -> Problem:
    """A query Prometheus rejected, located on the policy field it came from."""
    return loaded.problem(
        field_path(error.field),
        f"Prometheus rejected the query ({error.error_type}): {error.error}; query: {error.query}",
        "correct the PromQL; `gitops-rollout validate --prometheus URL` checks every query",
    )


def field_path(field: str) -> FieldPath:
    """``spec.analysis.metrics[1].query`` as a field path."""
    out: list[str | int] = []
    for part in field.split("."):
        name, _, rest = part.partition("[")
        if name:
            out.append(name)
        for index in rest.rstrip("]").split("][") if rest else ():
            out.append(int(index))
    return tuple(out)


def check_queries(
    policies: Sequence[LoadedPolicy],
    inventory: Inventory,
    client: PrometheusClient,
    *,
    now: datetime,
) -> list[Problem]:
    """Custom queries Prometheus rejects, each evaluated once as a pass would ask it (a range
    query, placeholders filled from the first cluster's versions, at `now`); raises
    MetricsError when Prometheus cannot be asked at all."""
    from gitops_rollout.metrics.base import QueryError, RolloutRef
    from gitops_rollout.metrics.queries import custom_queries

    problems: list[Problem] = []
    for loaded in policies:
        policy = loaded.policy
        analysis = policy.spec.analysis
        if analysis is None or not analysis.metrics:
            continue
        rollout = RolloutRef.from_policy(
            policy,
            key=loaded.file,
            versions=_version_refs(loaded, inventory),
            step_start=now,
        )
        checked: set[str] = set()
        for query in custom_queries(rollout):
            if query.field in checked:
                continue
            checked.add(query.field)
            try:
                client.range(query.promql, start=now, end=now, step=analysis.interval)
            except QueryError as err:
                problems.append(query_problem(loaded, err.located(rollout="", field=query.field)))
    return problems


def _version_refs(loaded: LoadedPolicy, inventory: Inventory) -> list[VersionRef]:
    from gitops_rollout.metrics.base import VersionRef

    policy = loaded.policy
    for cluster in policy.spec.clusters:
        versions = inventory.versions(cluster.name, policy.model)
        if versions:
            predictor = policy.spec.target.predictor
            return [
                VersionRef(v.version, v.ref.name, v.ref.namespace, v.predictor or predictor)
                for v in versions
            ]
    return [VersionRef("v0", policy.model, policy.spec.namespace)]
