"""Everything a pass reads from the GitOps repository, loaded once: policies, manifests, problems.

`load` combines the policy loader, the manifest scanner, readiness (snapshot or live) and the
cross-checks of `validation` into one `RepositoryView`. Policies with problems are set aside
(with their messages) so that the rest keep reconciling. Parsing is cached by blob id in a
`Caches` object that long-running callers (the daemon, benchmarks) keep between passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gitops_rollout.errors import Problem
from gitops_rollout.inventory import manifests
from gitops_rollout.inventory.model import Inventory, ObjectRef, Status
from gitops_rollout.policy import LoadedPolicy, PolicySet, check_unique, load_policy_text
from gitops_rollout.tree import Tree
from gitops_rollout.validation import check_policy

POLICIES = "policies"


@dataclass
class Caches:
    """Parse results kept across passes, keyed by Git blob id."""

    policies: dict[tuple[str, str], tuple[list[LoadedPolicy], list[Problem]]] = field(
        default_factory=dict
    )
    manifests: manifests.ManifestCache = field(default_factory=manifests.ManifestCache)


@dataclass
class RepositoryView:
    """One consistent reading of the repository for one pass."""

    tree: Tree
    policies: PolicySet
    """Policies that passed every check; the others are in `problems`."""
    inventory: Inventory
    problems: list[Problem]
    policy_paths: set[str]
    """Every policy file present, valid or not (a broken policy still owns its rollouts)."""
    broken: dict[str, list[Problem]] = field(default_factory=dict)
    """Manifest problems by cluster."""
    held: list[LoadedPolicy] = field(default_factory=list)
    """Valid policies whose manifests do not match them (reported; not reconciled)."""


def load_policies(tree: Tree, caches: Caches) -> tuple[PolicySet, set[str]]:
    loaded: list[LoadedPolicy] = []
    problems: list[Problem] = []
    paths = [p for p in tree.paths(POLICIES) if p.endswith((".yaml", ".yml"))]
    for path in paths:
        key = (path, tree.blob_id(path))
        cached = caches.policies.get(key)
        if cached is None:
            cached = load_policy_text(tree.read(path), file=path)
            caches.policies[key] = cached
        loaded.extend(cached[0])
        problems.extend(cached[1])
    result = check_unique(loaded)
    result.problems[:0] = problems
    return result, set(paths)


def load(
    tree: Tree,
    *,
    statuses: Mapping[tuple[str, ObjectRef], Status] | None = None,
    unreachable: Mapping[str, str] | None = None,
    caches: Caches | None = None,
) -> RepositoryView:
    """Read policies and manifests from `tree` and attach readiness."""
    caches = caches if caches is not None else Caches()
    policies, policy_paths = load_policies(tree, caches)
    inventory, manifest_problems = manifests.scan(tree, cache=caches.manifests)
    if statuses:
        manifests.with_status(inventory, statuses)
    inventory.unreachable.update(unreachable or {})
    broken: dict[str, list[Problem]] = {}
    for problem in manifest_problems:
        cluster = manifests.cluster_of(problem.file)
        if cluster:
            broken.setdefault(cluster, []).append(problem)
    problems = [*policies.problems, *manifest_problems]
    kept: list[LoadedPolicy] = []
    held: list[LoadedPolicy] = []
    for loaded in policies.policies:
        found = check_policy(loaded, inventory)
        problems.extend(found)
        (held if found else kept).append(loaded)
    return RepositoryView(
        tree=tree,
        policies=PolicySet(kept, policies.problems),
        inventory=inventory,
        problems=problems,
        policy_paths=policy_paths,
        broken=broken,
        held=held,
    )
