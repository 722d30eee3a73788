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


def _version_problem(loaded: LoadedPolicy, version: ModelVersion) -> str | None:
    target = loaded.policy.spec.target
    expected = _EXPECTED_KIND[target.kind]
    if version.ref.kind != expected:
        return (
            f"{version.file}: {version.ref} is a {version.ref.kind}, but target "
            f"{target.kind.value} expects {expected.value}"
        )
    if target.kind is TargetKind.KSERVE_MODELMESH and not version.modelmesh:
        return (
            f"{version.file}: {version.ref} lacks the annotation "
            "serving.kserve.io/deploymentMode: ModelMesh that target kserve-modelmesh needs"
        )
    if target.kind is TargetKind.KSERVE and version.modelmesh:
        return (
            f"{version.file}: {version.ref} is a ModelMesh InferenceService; use target "
            "kind kserve-modelmesh"
        )
    if target.kind is TargetKind.DEPLOYMENT and version.service_name is None:
        return (
            f"{version.file}: no Service named {version.ref.name} (or selecting "
            f"app.kubernetes.io/version: {version.version}) routes to {version.ref}; add one"
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
                    "fix the name or add the cluster's folder",
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
                    'gitops-rollout.dev/watch: "true"',
                )
            )
            continue
        for version in versions:
            found = _version_problem(loaded, version)
            if found:
                problems.append(
                    loaded.problem(
                        ("spec", "target", "kind"), found, "align the target with the manifests"
                    )
                )
        if (
            policy.spec.target.kind is TargetKind.KSERVE
            and policy.spec.target.mode is TargetMode.NATIVE
        ):
            if len(versions) != 1:
                problems.append(
                    loaded.problem(
                        ("spec", "target", "mode"),
                        f"mode native expects one InferenceService in {cluster.name}, found "
                        f"{len(versions)}",
                        "use mode: separate for one InferenceService per version",
                    )
                )
    return problems
