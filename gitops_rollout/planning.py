"""The pure half of a pass: policies, inventory and the main branch in, transitions and files out.

`situations` finds every rollout (policy x cluster) and its recorded state; the caller gathers
verdicts for the ones that need evidence; `decide` turns each into a `Transition` and renders
the files it wants on the main branch. Nothing here touches Git, a host, a cluster or the clock,
so `plan` (no writes) and `reconcile` (writes) share it exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from gitops_rollout import render, transitions
from gitops_rollout.errors import Problem
from gitops_rollout.inventory.model import Inventory
from gitops_rollout.policy import ClusterOrder, LoadedPolicy, PolicySet, TransitionKind
from gitops_rollout.state import ROUTING_FILE as ROUTING_FILE
from gitops_rollout.state import Phase, RolloutState, StoredState, read_stored, rollout_dir

if TYPE_CHECKING:
    from gitops_rollout.tree import Tree


@dataclass(frozen=True, order=True)
class RolloutKey:
    """One rollout: a model's routing in one namespace of one cluster."""

    cluster: str
    namespace: str
    model: str

    def branch(self, prefix: str) -> str:
        return f"{prefix}{self.cluster}/{self.namespace}/{self.model}"

    @property
    def folder(self) -> str:
        return rollout_dir(cluster=self.cluster, namespace=self.namespace, model=self.model)

    @property
    def routing_path(self) -> str:
        return f"{self.folder}/{ROUTING_FILE}"

    def __str__(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.model}"


def key_of(loaded: LoadedPolicy, cluster: str) -> RolloutKey:
    pol = loaded.policy
    return RolloutKey(cluster, pol.routing_namespace, pol.model)


@dataclass
class Planned:
    """What one pass wants for one rollout."""

    key: RolloutKey
    transition: transitions.Transition | None
    files: dict[str, bytes | None] = field(default_factory=dict)
    """Desired content on the main branch per repository path (None: delete)."""
    problems: list[Problem] = field(default_factory=list)
    removal: bool = False
    """The policy is gone: the files remove the rollout's bot-owned folder."""
    deferred: bool = False
    """Not rendered here: an open pull request already proposes this exact decision and waits
    for a reviewer (`rendered` makes the files if it has to be rebuilt after all), or the model
    is adopted together with its cluster's others (rendered once, stacked on them)."""

    def rendered(self, tree: Tree) -> Planned:
        """This rollout with its files (itself when it was rendered already)."""
        if not self.deferred or self.transition is None:
            return self
        result = render.render(self.transition, tree=tree)
        return Planned(self.key, self.transition, dict(result.files), list(result.problems))

    @property
    def kind(self) -> TransitionKind:
        if self.transition is None:
            return TransitionKind.CLEANUP
        return self.transition.kind


def stored_states(tree: Tree, keys: list[RolloutKey]) -> dict[RolloutKey, StoredState | None]:
    """The recorded state of each rollout (None when it has no routing file yet)."""
    wanted = [k for k in keys if _exists(tree, k.routing_path)]
    reader = getattr(tree, "read_many", None)
    if reader is not None:
        texts: Mapping[str, bytes] = reader([k.routing_path for k in wanted])
    else:
        texts = {k.routing_path: tree.read(k.routing_path) for k in wanted}
    present = set(wanted)
    return {k: (read_stored(texts[k.routing_path]) if k in present else None) for k in keys}


def _exists(tree: Tree, path: str) -> bool:
    try:
        tree.blob_id(path)
    except FileNotFoundError:
        return False
    return True


def situations(
    tree: Tree,
    policies: PolicySet,
    inventory: Inventory,
    *,
    step_started: Mapping[RolloutKey, datetime | None],
    rollout_started: Mapping[RolloutKey, datetime] | None = None,
    stored: Mapping[RolloutKey, StoredState | None] | None = None,
    broken: Mapping[str, list[Problem]] | None = None,
) -> list[transitions.Situation]:
    """Every (policy, cluster) rollout with its primary, candidates and recorded state.

    `broken` maps a cluster to manifest problems found while scanning it: a rollout whose
    namespace holds a file that did not parse is held, never treated as if versions vanished.
    """
    keys = [key_of(lp, c.name) for lp in policies.policies for c in lp.policy.spec.clusters]
    states = stored if stored is not None else stored_states(tree, keys)
    out = []
    for loaded in policies.policies:
        for cluster_ref in loaded.policy.spec.clusters:
            cluster = cluster_ref.name
            key = key_of(loaded, cluster)
            blocking: list[str] = []
            if cluster not in inventory.clusters:
                blocking.append(
                    f"cluster {cluster!r} has no folder clusters/{cluster}/ in the repository; "
                    "add it or remove the cluster from the policy"
                )
            if cluster in inventory.unreachable:
                blocking.append(
                    f"cluster {cluster!r} cannot be reached ({inventory.unreachable[cluster]}); "
                    "holding its rollouts"
                )
            for problem in (broken or {}).get(cluster, []):
                blocking.append(f"a manifest in this cluster does not parse: {problem}")
            out.append(
                transitions.assess(
                    loaded,
                    cluster=cluster,
                    versions=inventory.versions(cluster, loaded.policy.model),
                    stored=states.get(key),
                    step_started=step_started.get(key),
                    blocking=blocking,
                    rollout_started=(rollout_started or {}).get(key),
                )
            )
    return out


def cluster_gate(
    situation: transitions.Situation, by_key: Mapping[RolloutKey, transitions.Situation]
) -> str | None:
    """Why this cluster may not start its candidate yet (sequential cluster order), or None."""
    policy = situation.policy
    if policy.spec.cluster_order is not ClusterOrder.SEQUENTIAL or not situation.candidates:
        return None
    names = [c.name for c in policy.spec.clusters]
    index = names.index(situation.cluster)
    if index == 0:
        return None
    wanted = situation.candidates[0].version
    previous = names[index - 1]
    before = by_key.get(key_of(situation.loaded, previous))
    state: RolloutState | None = before.state if before else None
    if (
        state is None
        or state.phase is not Phase.IDLE
        or (state.primary is None or state.primary.version != wanted)
    ):
        return (
            f"waiting for cluster {previous!r} to promote {wanted} first "
            f"(cluster order: {' -> '.join(names)})"
        )
    return None


def decide(
    situation: transitions.Situation,
    *,
    now: datetime,
    by_key: Mapping[RolloutKey, transitions.Situation],
    verdict: transitions.VerdictLike | None = None,
    command: transitions.Command | None = None,
    tree: Tree,
    defer: Callable[[RolloutKey, transitions.Transition], bool] | None = None,
) -> Planned:
    """The transition of one rollout and the files it wants on the main branch; not rendered
    (`Planned.deferred`) when `defer` says they are made elsewhere or not needed."""
    key = key_of(situation.loaded, situation.cluster)
    transition = transitions.advance(
        situation,
        now=now,
        verdict=verdict,
        command=command,
        gate=cluster_gate(situation, by_key),
    )
    if defer is not None and defer(key, transition):
        return Planned(key, transition, deferred=True)
    rendered = render.render(transition, tree=tree)
    return Planned(key, transition, dict(rendered.files), list(rendered.problems))


def orphans(
    tree: Tree,
    policies: PolicySet,
    *,
    policy_paths: set[str],
    claimed: Iterable[tuple[str, str, str]] = (),
) -> list[Planned]:
    """Rollout folders whose policy was deleted: their routing goes (cleanup on policy delete).

    A folder whose recorded policy file still exists (even if it does not parse right now) is
    left alone: a broken policy must never tear down its routing. `claimed`: (cluster,
    namespace, model) of rollouts owned by policies not in `policies` (the memo's skipped ones).
    """
    owned = {
        (c.name, lp.policy.routing_namespace, lp.policy.model)
        for lp in policies.policies
        for c in lp.policy.spec.clusters
    }
    owned.update(claimed)
    suffix = f"/rollout/{ROUTING_FILE}"
    out = []
    for path in tree.paths("clusters"):
        if not path.endswith(suffix):
            continue
        parts = path.split("/")
        if len(parts) != 6 or (parts[1], parts[2], parts[3]) in owned:
            continue
        key = RolloutKey(parts[1], parts[2], parts[3])
        stored = read_stored(tree.read(path))
        owner = stored.state.policy
        if owner and owner in policy_paths:
            continue
        removed = render.remove_rollout(
            key.model, cluster=key.cluster, namespace=key.namespace, tree=tree
        )
        out.append(Planned(key, None, dict(removed.files), list(removed.problems), removal=True))
    return out
