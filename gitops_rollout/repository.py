"""Everything a pass reads from the GitOps repository, loaded once: policies, manifests, problems.

`load` combines the policy loader, the manifest scanner, readiness (snapshot or live) and the
cross-checks of `validation` into one `RepositoryView`. Policies with problems are set aside
(with their messages) so that the rest keep reconciling. Parsing is cached by blob id in a
`Caches` object that long-running callers (the daemon, benchmarks) keep between passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from gitops_rollout.errors import Problem
from gitops_rollout.inventory import manifests
from gitops_rollout.inventory.model import Inventory, ObjectRef, Status
from gitops_rollout.policy import LoadedPolicy, PolicySet, check_unique, load_policy_text
from gitops_rollout.tree import Tree, read_all

POLICIES = "policies"


class PolicySummary(NamedTuple):
    """What a pass must know of a policy it does not load again (see `Skipper`). A named
    tuple: a pass makes one for each of ten thousand remembered policies."""

    name: str
    model: str
    clusters: tuple[str, ...]
    routing_namespace: str
    file: str
    line: int

    @staticmethod
    def of(loaded: LoadedPolicy) -> PolicySummary:
        pol = loaded.policy
        return PolicySummary(
            pol.name,
            pol.model,
            tuple(c.name for c in pol.spec.clusters),
            pol.routing_namespace,
            loaded.file,
            loaded.line,
        )


@dataclass(frozen=True)
class Facts:
    """What a `Skipper` may look at: the tree and the inventory of this pass."""

    tree: Tree
    inventory: Inventory
    broken: Mapping[str, list[Problem]]


class Skipper(Protocol):
    """Names policy files whose rollouts a pass need not load nor plan again (`memo`)."""

    def skip(self, files: Mapping[str, str], facts: Facts) -> dict[str, list[PolicySummary]]:
        """Of `files` ({path: blob id}), those every policy of which can be skipped, with
        their policies; the others are loaded. One call for all files: a pass over ten
        thousand policy files should not pay a call and its set-up per file."""
        ...


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
    skipped: list[PolicySummary] = field(default_factory=list)
    """Valid policies the `Skipper` took over: not in `policies`, not planned this pass."""


def load_policies(tree: Tree, caches: Caches) -> tuple[PolicySet, set[str]]:
    """Valid policies and every policy file present."""
    policies, paths, _ = _load_policies(tree, caches)
    return policies, paths


def _load_policies(
    tree: Tree, caches: Caches, *, skip: Skipper | None = None, facts: Facts | None = None
) -> tuple[PolicySet, set[str], list[PolicySummary]]:
    """Valid policies, every policy file, and the summaries of the policies `skip` took."""
    loaded: list[LoadedPolicy] = []
    problems: list[Problem] = []
    skipped: list[PolicySummary] = []
    keys = _policy_files(tree)
    paths = list(keys)
    if skip is not None and facts is not None:
        taken: Mapping[str, Sequence[PolicySummary] | None] = skip.skip(
            {path: blob for path, (_, blob) in keys.items()}, facts
        )
        skipped = [s for found in taken.values() if found is not None for s in found]
        if skipped and _clash(skipped, paths, keys, taken, tree, caches):
            skipped, taken = [], {}
        paths_to_load = [p for p in paths if taken.get(p) is None]
    else:
        paths_to_load = paths
    _parse_missing(tree, caches, keys, paths_to_load)
    for path in paths_to_load:
        cached = caches.policies[keys[path]]
        loaded.extend(cached[0])
        problems.extend(cached[1])
    result = check_unique(loaded)
    result.problems[:0] = problems
    return result, set(paths), skipped


def _policy_files(tree: Tree) -> dict[str, tuple[str, str]]:
    """Every policy file, with its cache key (path, blob id)."""
    paths = [p for p in tree.paths(POLICIES) if p.endswith((".yaml", ".yml"))]
    return {path: (path, tree.blob_id(path)) for path in paths}


def _parse_missing(
    tree: Tree, caches: Caches, keys: Mapping[str, tuple[str, str]], paths: Sequence[str]
) -> None:
    """The policy files among `paths` that are not in the cache, parsed into it."""
    missing = [p for p in paths if keys[p] not in caches.policies]
    texts = read_all(tree, missing)
    for path in missing:
        caches.policies[keys[path]] = load_policy_text(texts[path], file=path)


def _parse_policies(tree: Tree, caches: Caches) -> None:
    """Every policy file not in the cache, parsed into it."""
    keys = _policy_files(tree)
    _parse_missing(tree, caches, keys, list(keys))


def _clash(
    skipped: list[PolicySummary],
    paths: list[str],
    keys: Mapping[str, tuple[str, str]],
    taken: Mapping[str, Sequence[PolicySummary] | None],
    tree: Tree,
    caches: Caches,
) -> bool:
    """True when skipped policies share a name or a (cluster, model) with any other policy:
    `check_unique` then decides who stays, which needs every policy loaded."""
    loading = [p for p in paths if taken.get(p) is None]
    _parse_missing(tree, caches, keys, loading)
    names: set[str] = set()
    models: set[tuple[str, str]] = set()
    others: list[PolicySummary] = []
    for path in loading:
        others.extend(PolicySummary.of(lp) for lp in caches.policies[keys[path]][0])
    for other in others:
        names.add(other.name)
        models.update((c, other.model) for c in other.clusters)
    for s in skipped:
        pairs = {(c, s.model) for c in s.clusters}
        if s.name in names or pairs & models:
            return True
        names.add(s.name)
        models |= pairs
    return False


def load(
    tree: Tree,
    *,
    statuses: Mapping[tuple[str, ObjectRef], Status] | None = None,
    unreachable: Mapping[str, str] | None = None,
    caches: Caches | None = None,
    skip: Skipper | None = None,
) -> RepositoryView:
    """Read policies and manifests from `tree` and attach readiness.

    `skip` may take over policy files whose rollouts need no planning this pass (the pass
    memo); those are neither parsed nor checked again, and are listed in `skipped`.
    """
    caches = caches if caches is not None else Caches()
    prefetch = manifests.Prefetch(tree, caches.manifests)
    if prefetch.started:
        # A cold read of a large repository: policies parse here while the manifests parse in
        # a second process (`_load_policies` below then finds them in the cache).
        _parse_policies(tree, caches)
    prefetch.wait()
    inventory, manifest_problems = manifests.scan(
        tree, cache=caches.manifests, files=prefetch.files, statuses=statuses
    )
    inventory.unreachable.update(unreachable or {})
    broken: dict[str, list[Problem]] = {}
    for problem in manifest_problems:
        cluster = manifests.cluster_of(problem.file)
        if cluster:
            broken.setdefault(cluster, []).append(problem)
    policies, policy_paths, skipped = _load_policies(
        tree, caches, skip=skip, facts=Facts(tree, inventory, broken)
    )
    problems = [*policies.problems, *manifest_problems]
    kept: list[LoadedPolicy] = []
    held: list[LoadedPolicy] = []
    if policies.policies:
        # Imported here: validation pulls in the analysis stage (numpy, scipy), which a pass
        # whose policies all come from the memo never needs.
        from gitops_rollout.validation import check_policy

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
        skipped=skipped,
    )
