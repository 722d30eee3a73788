"""Checks that need both a policy and the repository it acts on.

`policy` validates each file on its own; this module checks what only the pair can show: the
clusters a policy names exist, its model has versions there, they are of the kind its target
expects, and every version a weighted route needs has a Service. Each finding is a located
`Problem` on the policy field to fix. The checks are cheap and run on every pass, so a rollout
with a problem is held with the same message `validate` prints.
"""

from __future__ import annotations

from gitops_rollout.errors import Problem
from gitops_rollout.inventory.model import Inventory, Kind, ModelVersion
from gitops_rollout.policy import LoadedPolicy, TargetKind, TargetMode

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
    problems: list[Problem] = []
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
