"""One reconcile pass: the only module that calls every stage, in the order of the data flow.

fetch -> read the main branch -> policies + inventory -> step clocks -> situations -> verdicts ->
transitions + rendered files -> change sets -> commits and one push -> pull requests (open,
update, merge where the policy allows, close when no longer needed).

Everything a pass knows about the past comes from Git and the host, so a pass can be killed at
any point and rerun: a commit not pushed is rebuilt, a branch pushed without a PR gets its PR, an
open PR with the same decision is left as it is. The PR rules:

- no change against the main branch: no commit, no push, no PR (an open PR whose decision no
  longer applies is closed, except while the rollout holds: a hold is not a new decision);
- a PR closed unmerged is a veto of that exact decision (its digest): not reopened until inputs
  change;
- a bot branch a human committed to is never overwritten: reported on the PR instead;
- models seen for the first time with nothing to roll out are adopted together, one PR per
  cluster, instead of one PR per model.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

from gitops_rollout import memo as passmemo
from gitops_rollout import planning, render, repository
from gitops_rollout.errors import Problem, RolloutError
from gitops_rollout.gitops import pr_body
from gitops_rollout.gitops.changeset import ChangeSet, build_many
from gitops_rollout.gitops.hosts.base import (
    GitHost,
    PullRequest,
    PullRequestDraft,
    PullState,
    merge_all,
    mergeable_all,
    open_all,
)
from gitops_rollout.gitops.repo import (
    BRANCH_PREFIX,
    CommitMessage,
    CommitRequest,
    PushOutcome,
    Workspace,
)
from gitops_rollout.inventory.model import ObjectRef, Status
from gitops_rollout.planning import Planned, RolloutKey, key_of
from gitops_rollout.policy import PolicySet, TransitionKind
from gitops_rollout.state import Phase, StoredState
from gitops_rollout.transitions import Action, Command, Situation, Transition, VerdictLike
from gitops_rollout.tree import OverlayTree, Tree

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")

ADOPT_BRANCH = BRANCH_PREFIX + "_adopt/"
"""Branch prefix of the per-cluster adoption PR (``_`` cannot start a cluster name)."""

Statuses = Mapping[tuple[str, ObjectRef], Status]


class InventorySource(Protocol):
    """Readiness of the clusters' objects right now (a snapshot file, or live clusters)."""

    def __call__(self) -> tuple[Statuses, Mapping[str, str]]:
        """(statuses by (cluster, ref), unreachable clusters with the reason)."""
        ...


class History(Protocol):
    """What the main branch's history says about when changes took effect (a `Workspace`)."""

    def merge_time(self, paths: Iterable[str]) -> dict[str, datetime]:
        """When each path last changed on the main branch's first parents."""
        ...

    def merged_with_trailer(self, key: str, values: Iterable[str]) -> Mapping[str, Any]:
        """For each trailer value, the first merge that brought it in (with a ``time``)."""
        ...


class NoHistory:
    """For a plain folder: nothing is known to have taken effect yet."""

    def merge_time(self, paths: Iterable[str]) -> dict[str, datetime]:
        return {}

    def merged_with_trailer(self, key: str, values: Iterable[str]) -> Mapping[str, Any]:
        return {}


class Judge(Protocol):
    """Verdicts for the rollouts whose next move depends on the evidence."""

    def __call__(
        self, situations: Sequence[Situation], *, now: datetime
    ) -> Mapping[RolloutKey, VerdictLike]: ...


def no_inventory() -> tuple[Statuses, Mapping[str, str]]:
    return {}, {}


def no_verdicts(
    situations: Sequence[Situation], *, now: datetime
) -> Mapping[RolloutKey, VerdictLike]:
    return {}


@dataclass
class Decision:
    """One rollout's outcome in a pass: what was decided and what happened to its PR."""

    policy: str
    cluster: str
    namespace: str
    model: str
    action: str
    kind: str
    title: str
    reason: str
    phase: str
    weights: str
    outcome: str = "none"
    """none, opened, updated, unchanged, merged, closed, vetoed, human-edited, error."""
    pr: int | None = None
    pr_url: str = ""

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PassReport:
    """What a pass did; the daemon turns it into metrics and log lines."""

    decisions: list[Decision] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    errors: dict[str, list[str]] = field(default_factory=dict)
    """Runtime failures by stage (inventory, metrics, git, host)."""
    duration_s: float = 0.0

    @property
    def prs_opened(self) -> int:
        return sum(1 for d in self.decisions if d.outcome == "opened")

    def error(self, stage: str, message: str) -> None:
        log.warning("%s: %s", stage, message)
        self.errors.setdefault(stage, []).append(message)


@dataclass
class PassOptions:
    now: datetime
    commands: Mapping[tuple[str, str], Command] = field(default_factory=dict)
    """Operator commands by (policy name, cluster)."""
    policies: frozenset[str] | None = None
    """Only these policies (the daemon's per-policy jobs, operator commands); None: all."""
    clusters: frozenset[str] | None = None
    """Only these clusters (a per-cluster deployment); None: all."""


def _filter(policies: PolicySet, options: PassOptions) -> PolicySet:
    kept = [
        lp
        for lp in policies.policies
        if options.policies is None or lp.policy.name in options.policies
    ]
    return PolicySet(kept, policies.problems)


def _clock_paths(stored: Mapping[RolloutKey, StoredState | None]) -> list[str]:
    moving = (Phase.PROGRESSING, Phase.PROMOTING)
    return [k.routing_path for k, s in stored.items() if s is not None and s.state.phase in moving]


def plan_pass(
    view: repository.RepositoryView,
    *,
    options: PassOptions,
    history: History,
    judge: Judge,
    waiting: Mapping[str, str] | None = None,
    adopt_together: bool = False,
) -> list[Planned]:
    """Transitions and desired files for every rollout in view (no writes).

    `waiting` maps branches to the decision digest of their open pull request: a rollout whose
    decision is the same and that its policy does not let the bot merge is not rendered (the
    pull request waits for a reviewer and is left alone unless it stops merging; `publish`
    renders it then). Rendering those through the round-trip YAML engine was half of a
    no-op pass over 10,000 models. With `adopt_together`, models to adopt are not rendered
    alone either: `_proposals` renders them once, stacked on their cluster's adoption."""
    policies = _filter(view.policies, options)
    keys = [key_of(lp, c.name) for lp in policies.policies for c in lp.policy.spec.clusters]
    stored = planning.stored_states(view.tree, keys)
    merged = history.merge_time(_clock_paths(stored))
    started = {k: merged.get(k.routing_path) for k in keys}
    ids = {k: s.state.rollout for k, s in stored.items() if s is not None and s.state.rollout}
    firsts = history.merged_with_trailer(pr_body.TRAILER_ROLLOUT, set(ids.values())) if ids else {}
    rollout_started = {k: firsts[i].time for k, i in ids.items() if i in firsts}
    sits = planning.situations(
        view.tree,
        policies,
        view.inventory,
        step_started=started,
        rollout_started=rollout_started,
        stored=stored,
        broken=view.broken,
    )
    if options.clusters is not None:
        sits = [s for s in sits if s.cluster in options.clusters]
    verdicts = judge([s for s in sits if s.needs_verdict], now=options.now)
    by_key = {key_of(s.loaded, s.cluster): s for s in sits}
    open_digests = waiting or {}

    def defer(key: RolloutKey, t: Transition) -> bool:
        if adopt_together and _adopting(t):
            return True
        digest = open_digests.get(key.branch(BRANCH_PREFIX))
        return (
            digest is not None
            and (not t.auto_merge or t.action is Action.HOLD)
            and pr_body.decision_digest(t) == digest
        )

    out = []
    for s in sits:
        key = key_of(s.loaded, s.cluster)
        out.append(
            planning.decide(
                s,
                now=options.now,
                by_key=by_key,
                verdict=verdicts.get(key),
                command=options.commands.get((s.policy.name, s.cluster)),
                tree=view.tree,
                defer=defer if open_digests or adopt_together else None,
            )
        )
    if options.policies is None:
        out.extend(
            p
            for p in passmemo.orphans(view)
            if options.clusters is None or p.key.cluster in options.clusters
        )
    return out


def _decision(p: Planned) -> Decision:
    t = p.transition
    if t is None:
        return Decision(
            policy="",
            cluster=p.key.cluster,
            namespace=p.key.namespace,
            model=p.key.model,
            action=Action.REMOVE.value,
            kind=TransitionKind.CLEANUP.value,
            title="policy deleted: remove routing",
            reason="its policy was deleted; the generated routing goes",
            phase="-",
            weights="-",
        )
    plan = t.plan
    return Decision(
        policy=t.situation.policy.name,
        cluster=p.key.cluster,
        namespace=p.key.namespace,
        model=p.key.model,
        action=t.action.value,
        kind=t.kind.value,
        title=t.title,
        reason="; ".join(t.reasons),
        phase=t.state.phase.value + (f" {t.state.step}" if t.state.step else ""),
        weights=plan.describe() if plan else "-",
    )


def _is_adoption(p: Planned) -> bool:
    return p.transition is not None and _adopting(p.transition)


def _adopting(t: Transition) -> bool:
    """A model seen for the first time with nothing to roll out: it joins its cluster's
    adoption pull request."""
    return t.kind is TransitionKind.ADOPT and t.action is Action.NONE and t.situation.stored is None


@dataclass
class _Proposal:
    """One branch's worth of change for this pass."""

    branch: str
    changes: ChangeSet
    digest: str
    message: CommitMessage
    draft: Callable[[ChangeSet], PullRequestDraft]
    """The pull request for the change set (the proposal's own, once rendered)."""
    auto_merge: bool
    decisions: list[Decision]
    holding: bool = False
    deferred: Planned | None = None
    """Not rendered yet (`plan_pass` deferred it): `changes` and `message` are empty until
    `_materialise` renders it."""


def _materialise(prop: _Proposal, tree: Tree, report: PassReport) -> bool:
    """Render a deferred proposal's files; False (reported) when they cannot be made."""
    assert prop.deferred is not None
    p = prop.deferred.rendered(tree)
    prop.deferred = None
    if p.problems or p.transition is None:
        report.problems.extend(p.problems)
        for d in prop.decisions:
            d.outcome = "error"
        return False
    prop.changes = build_many(tree, {p.key: p.files})[p.key]
    prop.message = pr_body.commit_message(p.transition, prop.changes, digest=prop.digest)
    return True


def _adoption_body(cluster: str, models: Sequence[Planned], changes: ChangeSet, digest: str) -> str:
    lines = [
        f"gitops-rollout starts managing the routing of {len(models)} model(s) in cluster "
        f"`{cluster}`. Each gets a generated routing object that sends all traffic to its "
        "current primary, so nothing changes for clients; later rollouts shift weights in it.",
        "",
        "| namespace | model | primary | why nothing moves |",
        "|---|---|---|---|",
    ]
    for p in models[:200]:
        primary = p.transition.situation.primary if p.transition else None
        # Why this is an adoption and not a rollout: no candidate, one not Ready, a gate.
        why = "; ".join(p.transition.reasons if p.transition else ()).replace("|", "\\|")
        lines.append(
            f"| {p.key.namespace} | {p.key.model} | {primary.version if primary else '-'} | {why} |"
        )
    if len(models) > 200:
        lines.append(f"| ... | {len(models) - 200} more | | |")
    lines += [
        "",
        f"{len(changes)} file(s) change. Merging applies the routing; closing it vetoes this "
        "adoption until the set of models changes.",
        "",
        "<!-- gitops-rollout: "
        + json.dumps({"digest": digest, "kind": "adopt", "cluster": cluster})
        + " -->",
    ]
    return "\n".join(lines)


def _combined(
    models: Sequence[tuple[Planned, Decision]], tree: Tree, report: PassReport
) -> tuple[ChangeSet, list[tuple[Planned, Decision]]]:
    """One change set for many rollouts, rendered one on top of the other, and the rollouts
    in it (one that cannot be rendered is reported and left out).

    Rollouts of one namespace share files (the namespace's kustomization.yaml lists each
    rollout folder), so their separately rendered files cannot simply be merged.
    """
    overlay = OverlayTree(tree)
    included = []
    for p, decision in models:
        assert p.transition is not None
        rendered = render.render(p.transition, tree=overlay)
        if rendered.problems:
            decision.outcome = "error"
            report.problems.extend(rendered.problems)
            continue
        overlay.update(rendered.files)
        included.append((p, decision))
    return build_many(tree, {0: overlay.overrides})[0], included


def _proposals(
    planned: Sequence[Planned],
    changesets: Mapping[RolloutKey, ChangeSet],
    *,
    base: str,
    tree: Tree,
    report: PassReport,
) -> tuple[list[_Proposal], dict[str, list[Decision]]]:
    """Group the pass's changes by branch: one per rollout, one adoption branch per cluster."""
    proposals: list[_Proposal] = []
    quiet: dict[str, list[Decision]] = {}
    adoptions: dict[str, list[tuple[Planned, Decision]]] = {}
    for p in planned:
        decision = _decision(p)
        report.decisions.append(decision)
        branch = p.key.branch(BRANCH_PREFIX)
        if p.problems:
            decision.outcome = "error"
            report.problems.extend(p.problems)
            continue
        # A deferred rollout's open pull request proposes this decision already: its files
        # are rendered only if the pull request must be rebuilt (`_materialise`).
        changes = ChangeSet() if p.deferred else changesets[p.key]
        if not changes and not p.deferred:
            quiet.setdefault(branch, []).append(decision)
            continue
        if _is_adoption(p):
            adoptions.setdefault(p.key.cluster, []).append((p, decision))
            continue
        t = p.transition
        if t is None:
            digest = changes.digest()
            message = CommitMessage(
                subject=f"rollout({p.key.model}): {p.key.cluster} remove routing (policy deleted)",
                body="The policy of this model was deleted; its generated routing goes with it.",
                trailers=(
                    ("Rollout-Decision", digest),
                    ("Rollout-Kind", TransitionKind.CLEANUP.value),
                ),
            )

            def removal_draft(
                changes: ChangeSet,
                branch: str = branch,
                message: CommitMessage = message,
                digest: str = digest,
            ) -> PullRequestDraft:
                body = (
                    f"{message.body}\n\nFiles removed:\n"
                    + "\n".join(f"- `{c.path}`" for c in changes)
                    + f'\n\n<!-- gitops-rollout: {{"digest": "{digest}", "kind": "cleanup"}} -->'
                )
                return PullRequestDraft(
                    branch, base, message.subject, body, ("gitops-rollout", "rollout:cleanup")
                )

            proposals.append(
                _Proposal(branch, changes, digest, message, removal_draft, True, [decision])
            )
            continue
        digest = pr_body.decision_digest(t)

        def draft(
            changes: ChangeSet, t: Any = t, branch: str = branch, digest: str = digest
        ) -> PullRequestDraft:
            return pr_body.render(t, changes, head=branch, base=base, digest=digest)

        proposals.append(
            _Proposal(
                branch,
                changes,
                digest,
                pr_body.commit_message(t, changes, digest=digest),
                draft,
                t.auto_merge,
                [decision],
                holding=t.action is Action.HOLD,
                deferred=p if p.deferred else None,
            )
        )
    for cluster, pairs in sorted(adoptions.items()):
        branch = f"{ADOPT_BRANCH}{cluster}"
        merged_changes, included = _combined(pairs, tree, report)
        models = [p for p, _ in included]
        decisions = [d for _, d in included]
        if not merged_changes:
            if decisions:
                quiet.setdefault(branch, []).extend(decisions)
            continue
        digest = merged_changes.digest()
        subject = f"rollout: {cluster} adopt {len(models)} model(s)"
        message = CommitMessage(
            subject=subject,
            body="Generated routing for models gitops-rollout starts managing; all traffic "
            "stays on each model's primary.",
            trailers=(("Rollout-Decision", digest), ("Rollout-Kind", TransitionKind.ADOPT.value)),
        )

        def adopt_draft(
            changes: ChangeSet,
            cluster: str = cluster,
            models: list[Planned] = models,
            digest: str = digest,
            branch: str = branch,
            subject: str = subject,
        ) -> PullRequestDraft:
            return PullRequestDraft(
                branch,
                base,
                subject,
                _adoption_body(cluster, models, changes, digest),
                ("gitops-rollout", "rollout:adopt"),
            )

        auto = all(p.transition is not None and p.transition.auto_merge for p in models)
        proposals.append(
            _Proposal(branch, merged_changes, digest, message, adopt_draft, auto, decisions)
        )
    return proposals, quiet


def _digest_of(pull: PullRequest) -> str | None:
    return body_digest(pull.body)


def body_digest(body: str) -> str | None:
    """The decision digest a pull request body carries (what a closed PR vetoed)."""
    meta = pr_body.PullMetadata.parse(body)
    if meta is not None:
        return meta.digest
    marker = '"digest": "'
    if marker in body:
        return body.split(marker, 1)[1].split('"', 1)[0]
    return None


def vetoes(body: str, comments: Sequence[str], planned: Planned) -> bool:
    """True when a pull request closed unmerged (`body`, `comments`) is a human veto of
    `planned`'s decision: it proposed exactly that, and the bot did not close it itself."""
    if planned.transition is None or any(_CLOSED_BY_BOT in c for c in comments):
        return False
    return body_digest(body) == pr_body.decision_digest(planned.transition)


_NUMBERS = re.compile(r"\d+(?:[.,:]\d+)*")


def _hold_key(reason: str) -> str:
    """What a hold says, in substance: its reason without the numbers that change each pass
    ("8m00s to go", a fresh metric value), so that only a new kind of reason is commented."""
    return hashlib.sha256(_NUMBERS.sub("#", reason).encode()).hexdigest()[:16]


def _note_once(
    host: GitHost, pull: PullRequest, *, kind: str, key: str, text: str, report: PassReport
) -> None:
    """Comment `text` on `pull` unless the bot's latest `kind` comment there has `key`.

    The comment carries a hidden marker ``<!-- gitops-rollout-<kind>: <key> -->``; reading the
    PR's comments back (rather than remembering in the cache or the PR body) keeps this right
    after a restart, with a new cache, and with several replicas.
    """
    prefix = f"<!-- gitops-rollout-{kind}: "
    marker = f"{prefix}{key} -->"
    try:
        latest = next((c for c in reversed(host.comments(pull.number)) if prefix in c), None)
        if latest is not None and marker in latest:
            return
        host.comment(pull.number, f"{text}\n\n{marker}")
    except RolloutError as err:
        report.error("host", f"commenting on #{pull.number}: {err}")


def _note_hold(
    host: GitHost, pull: PullRequest, decisions: Sequence[Decision], report: PassReport
) -> None:
    """Say on the open PR why its rollout holds, once per kind of reason."""
    held = [d for d in decisions if d.action == Action.HOLD.value]
    if not held:
        return
    reason = "\n".join(f"- `{d.cluster}/{d.model}`: {d.reason}" for d in held)
    text = (
        f"**gitops-rollout holds this rollout:**\n\n{reason}\n\nThis pull request follows "
        "the next decision; a new comment comes only when the reason for holding changes."
    )
    _note_once(host, pull, kind="hold", key=_hold_key(reason), text=text, report=report)


def _note_human_edit(
    host: GitHost, pull: PullRequest, *, head: str, what: str, report: PassReport
) -> None:
    """Say on the PR, once per pushed head, that a human's commit stopped the bot's updates."""
    text = (
        f"**gitops-rollout stopped updating this pull request**: {what}. Review and merge it "
        "yourself, or close it (a veto: the rollout pauses until its inputs change)."
    )
    _note_once(host, pull, kind="human-edit", key=head, text=text, report=report)


_CLOSED_BY_BOT = "<!-- gitops-rollout-closed: "


def _closed_by_bot(host: GitHost, pull: PullRequest, report: PassReport) -> bool:
    """Whether the bot closed `pull` itself (no longer needed), which is no veto.

    Unreadable comments count as a human's close: better a paused rollout than a reopened
    proposal someone rejected.
    """
    try:
        return any(_CLOSED_BY_BOT in c for c in host.comments(pull.number))
    except RolloutError as err:
        report.error("host", f"reading the comments of #{pull.number}: {err}")
        return False


def _note_unmerged(
    host: GitHost,
    pull: PullRequest,
    reason: str,
    decisions: Sequence[Decision],
    report: PassReport,
) -> None:
    """Say in the pass report, and once per pushed head on the PR, why an auto-merge failed
    (a conflict with a push to the base, a missing approval): nothing is ever forced."""
    for d in decisions:
        d.reason = f"{d.reason}; not merged: {reason}" if d.reason else f"not merged: {reason}"
    text = (
        f"**gitops-rollout could not merge this pull request**: {reason}. Nothing was forced; "
        "the next pass tries again, rendering the change anew if the base branch moved."
    )
    _note_once(host, pull, kind="unmerged", key=pull.head_sha, text=text, report=report)


def publish(
    proposals: Sequence[_Proposal],
    quiet: Mapping[str, list[Decision]],
    *,
    workspace: Workspace,
    host: GitHost,
    now: datetime,
    report: PassReport,
    touched: Callable[[int, Sequence[str]], None] | None = None,
    while_pushing: Callable[[], None] | None = None,
) -> None:
    """Commit, push and open/update/merge/close pull requests for a pass's proposals.
    `touched` learns which files each pull request opened or updated changes;
    `while_pushing` is called once git is pushing (the push is mostly git's work: work of
    the interpreter's can go there)."""
    pulls = host.pulls_for_prefix(BRANCH_PREFIX, base=workspace.base)
    open_by_head: dict[str, PullRequest] = {}
    latest_by_head: dict[str, PullRequest] = {}
    for listed in pulls:  # newest first
        latest_by_head.setdefault(listed.head, listed)
        if listed.state is PullState.OPEN:
            open_by_head.setdefault(listed.head, listed)

    # Decisions that need no change: close a PR that no longer applies (never during a hold).
    for branch, decisions in quiet.items():
        stale = open_by_head.get(branch)
        if stale is None:
            continue
        for d in decisions:
            d.pr, d.pr_url = stale.number, stale.url
        if all(d.action in (Action.NONE.value, Action.REMOVE.value) for d in decisions):
            try:
                host.close(
                    stale.number,
                    comment="The main branch already has what this pull "
                    "request proposed, or its inputs changed back: it is no longer needed."
                    f"\n\n{_CLOSED_BY_BOT}{_digest_of(stale) or ''} -->",
                )
                for d in decisions:
                    d.outcome = "closed"
            except RolloutError as err:
                report.error("host", f"closing #{stale.number}: {err}")
        else:
            _note_hold(host, stale, decisions, report)

    todo: list[_Proposal] = []
    for prop in proposals:
        current = open_by_head.get(prop.branch)
        latest = latest_by_head.get(prop.branch)
        vetoed = (
            current is None
            and latest is not None
            and latest.state is PullState.CLOSED
            and _digest_of(latest) == prop.digest
            and not _closed_by_bot(host, latest, report)
        )
        if vetoed and latest is not None:
            for d in prop.decisions:
                d.outcome, d.pr, d.pr_url = "vetoed", latest.number, latest.url
                d.reason = (
                    f"paused: #{latest.number} proposing this was closed unmerged "
                    "(a veto); it is not reopened until the inputs change"
                )
            continue
        if prop.holding and current is not None and _digest_of(current) == prop.digest:
            for d in prop.decisions:
                d.outcome, d.pr, d.pr_url = "unchanged", current.number, current.url
            _note_hold(host, current, prop.decisions, report)
            continue
        todo.append(prop)

    humans = workspace.human_edits([p.branch for p in todo])
    # The same decision waiting for a reviewer. Rebuilding it would only refresh the reason's
    # numbers, and a new commit dismisses approvals on most hosts: it is left alone unless the
    # host says it no longer merges cleanly. Asked for these pull requests only (listings do
    # not say), in one batch; a host that cannot tell is no reason to dismiss approvals.
    waiting_pulls = {
        prop.branch: current
        for prop in todo
        if prop.branch not in humans
        and not prop.auto_merge
        and (current := open_by_head.get(prop.branch)) is not None
        and _digest_of(current) == prop.digest
    }
    requests: list[CommitRequest] = []
    asked: list[_Proposal] = []
    for prop in todo:
        if prop.branch in humans:
            edited = open_by_head.get(prop.branch)
            edit = humans[prop.branch]
            for d in prop.decisions:
                d.outcome = "human-edited"
                d.reason = edit.describe()
                if edited is not None:
                    d.pr, d.pr_url = edited.number, edited.url
            if edited is not None:
                _note_human_edit(host, edited, head=edit.head, what=edit.describe(), report=report)
        elif prop.branch in waiting_pulls:
            asked.append(prop)
        elif request := _request(prop, workspace, report):
            requests.append(request)
    by_branch = {p.branch: p for p in todo}
    # While the commits are prepared, the host says whether the waiting pull requests still
    # merge; one that does not is rebuilt, its commit joining the others' push. (The memo's
    # host may ask the workspace meanwhile what main changed since a commit: git reads only,
    # each its own process, as the background fetch and ref updates already run.)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gitops-rollout-push") as pool:
        building = pool.submit(workspace.prepare, requests, now=now)
        still_merges = _still_merges(host, [waiting_pulls[p.branch] for p in asked], report)
        try:
            prepared = building.result()
        except RolloutError as err:
            report.error("git", str(err))
            return
        rebuilt = []
        for prop in asked:
            waiting = waiting_pulls[prop.branch]
            if waiting.number in still_merges:
                for d in prop.decisions:
                    d.outcome, d.pr, d.pr_url = "unchanged", waiting.number, waiting.url
            elif request := _request(prop, workspace, report):
                rebuilt.append(request)
        requests += rebuilt
        try:
            prepared += workspace.prepare(rebuilt, now=now)
        except RolloutError as err:
            report.error("git", str(err))
            return
        # Pushing is mostly git's work: the pull requests are written meanwhile.
        pushing = pool.submit(workspace.send, prepared, now=now)
        if while_pushing is not None:
            while_pushing()
        drafts = {r.branch: by_branch[r.branch].draft(r.changes) for r in requests}
        try:
            results = pushing.result()
        except RolloutError as err:
            report.error("git", str(err))
            return
    opening: list[tuple[_Proposal, PullRequest | None, PushOutcome]] = []
    for result in results:
        prop = by_branch[result.branch]
        pull: PullRequest | None = open_by_head.get(result.branch)
        if result.outcome is PushOutcome.HUMAN_EDITED:
            for d in prop.decisions:
                d.outcome = "human-edited"
            if pull is not None:
                head = result.sha or ""
                _note_human_edit(host, pull, head=head, what=result.detail, report=report)
            continue
        if result.outcome is PushOutcome.REJECTED:
            report.error("git", f"push of {result.branch} rejected: {result.detail}")
            for d in prop.decisions:
                d.outcome = "error"
            continue
        if result.outcome is PushOutcome.EMPTY:
            continue
        opening.append((prop, pull, result.outcome))
    _open_and_merge(opening, drafts, host=host, report=report, touched=touched)


def _request(prop: _Proposal, workspace: Workspace, report: PassReport) -> CommitRequest | None:
    """What to commit for `prop` (its files rendered first when they were deferred); None
    when they cannot be made (reported)."""
    if prop.deferred is not None and not _materialise(prop, workspace.tree(), report):
        return None
    return CommitRequest(prop.branch, prop.changes, prop.message)


def _still_merges(host: GitHost, pulls: Sequence[PullRequest], report: PassReport) -> set[int]:
    """The numbers of `pulls` the host does not say conflict with their base (asked in one
    batch where the host offers it); a question the host cannot answer is reported."""
    answers = mergeable_all(host, [pull.number for pull in pulls])
    fine = set()
    for pull, answer in zip(pulls, answers, strict=True):
        if isinstance(answer, RolloutError):
            report.error("host", f"asking whether #{pull.number} still merges: {answer}")
        if answer is not False:
            fine.add(pull.number)
    return fine


@dataclass
class _Opened:
    """A proposal whose pull request this pass opened or updated, and what became of it."""

    prop: _Proposal
    pull: PullRequest
    new: bool
    outcome: str


def _open_and_merge(
    pushed: Sequence[tuple[_Proposal, PullRequest | None, PushOutcome]],
    drafts: Mapping[str, PullRequestDraft],
    *,
    host: GitHost,
    report: PassReport,
    touched: Callable[[int, Sequence[str]], None] | None,
) -> None:
    """Open or update the pull request of every pushed proposal (with the PR open before the
    push, and how the push went; `drafts` by branch), then merge those the policy lets the bot
    merge: each step one batch where the host offers batches."""
    opened_all = open_all(host, [drafts[prop.branch] for prop, _, _ in pushed])
    done: list[_Opened] = []
    for (prop, before, pushed_as), opened in zip(pushed, opened_all, strict=True):
        if isinstance(opened, RolloutError):
            report.error("host", f"pull request for {prop.branch}: {opened}")
            for d in prop.decisions:
                d.outcome = "error"
            continue
        if touched is not None:
            touched(opened.number, [c.path for c in prop.changes])
        new = before is None or before.number != opened.number
        same = (
            before is not None
            and _digest_of(before) == prop.digest
            and pushed_as is PushOutcome.UNCHANGED
        )
        done.append(
            _Opened(prop, opened, new, "opened" if new else ("unchanged" if same else "updated"))
        )
    merging = [o for o in done if o.prop.auto_merge]
    merges = [(o.pull.number, f"{o.prop.message.subject} (#{o.pull.number})") for o in merging]
    for o, merged in zip(merging, merge_all(host, merges), strict=True):
        if isinstance(merged, RolloutError):
            report.error("host", f"merging #{o.pull.number}: {merged}")
        elif merged.merged:
            o.outcome = "merged"
        elif merged.queued:
            # The host merges it once its checks pass; the next pass sees the merge.
            log.info("#%s merge queued on the host: %s", o.pull.number, merged.reason)
        elif merged.reason:
            log.info("#%s not merged yet: %s", o.pull.number, merged.reason)
            _note_unmerged(host, o.pull, merged.reason, o.prop.decisions, report)
    for o in done:
        if o.prop.holding and not o.new and o.outcome != "merged":
            _note_hold(host, o.pull, o.prop.decisions, report)
        for d in o.prop.decisions:
            d.outcome, d.pr, d.pr_url = o.outcome, o.pull.number, o.pull.url


def _collector_paused(pass_: Callable[_P, _R]) -> Callable[_P, _R]:
    """`pass_` without cyclic garbage collection; reference counting still frees everything
    that is not in a cycle. A pass builds a large heap that lives until its end (policies,
    parsed manifests, rendered files), and the collector's repeated scans of it cost a cold pass
    over 10,000 models about 2 of its 13 s of CPU (bench/scale.py). Collection resumes after
    the pass (in the daemon, its next allocations run it)."""

    @functools.wraps(pass_)
    def paused(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not gc.isenabled():
            return pass_(*args, **kwargs)
        gc.disable()
        try:
            return pass_(*args, **kwargs)
        finally:
            gc.enable()

    return paused


@_collector_paused
def run_once(
    *,
    workspace: Workspace,
    host: GitHost,
    options: PassOptions,
    inventory: InventorySource = no_inventory,
    judge: Judge = no_verdicts,
    caches: repository.Caches | None = None,
    history: History | None = None,
    memoise: bool = True,
) -> PassReport:
    """One pass over every policy (or the ones `options` names).

    `history` says when changes took effect (step clocks); default: the workspace's merge
    times. The daemon passes one that waits for the GitOps agent to apply them. `memoise`
    lets rollouts that stand still keep their last decision while their inputs hold (`memo`).
    """
    started = time.monotonic()
    report = PassReport()
    # The inventory is read first: a fetch begun in the background runs on meanwhile.
    unread: RolloutError | None = None
    try:
        statuses, unreachable = inventory()
    except RolloutError as err:
        unread = err
    try:
        workspace.fetch()
        tree = workspace.tree()
    except RolloutError as err:
        report.error("git", str(err))
        return report
    if unread is not None:
        report.error("inventory", str(unread))
        statuses, unreachable = {}, {c: str(unread) for c in _clusters(tree)}
    memo = (
        passmemo.PassMemo.open(
            workspace.git_dir,
            host=host,
            base=workspace.base,
            caches=caches,
            only=options.policies,
            base_rev=getattr(tree, "rev", None),
            changed_since=workspace.changed_since,
            changes_since=workspace.changes_since,
        )
        if memoise and not options.commands and options.clusters is None
        else passmemo.PassMemo.disabled(caches)
    )
    view = repository.load(
        tree, statuses=statuses, unreachable=unreachable, caches=memo.caches, skip=memo
    )
    report.problems.extend(view.problems)
    waiting = {
        pull.head: digest
        for pull in memo.open_pulls()
        if pull.base == workspace.base and (digest := _digest_of(pull)) is not None
    }
    planned = plan_pass(
        view,
        options=options,
        history=workspace if history is None else history,
        judge=judge,
        waiting=waiting,
        adopt_together=True,
    )
    changesets = build_many(
        tree, {p.key: p.files for p in planned if not p.problems and not p.deferred}
    )
    proposals, quiet = _proposals(
        planned, changesets, base=workspace.base, tree=tree, report=report
    )
    report.decisions = memo.decisions(view, planned, report.decisions, Decision)
    try:
        publish(
            proposals,
            quiet,
            workspace=workspace,
            host=memo.host(host),
            now=options.now,
            report=report,
            touched=memo.touches,
            while_pushing=lambda: memo.keep_parses(view, changesets),
        )
    except RolloutError as err:
        report.error("host", str(err))
    memo.save(view, changesets, failed=bool(report.errors))
    for d in report.decisions:
        log.info(
            "decision policy=%s cluster=%s model=%s action=%s outcome=%s pr=%s reason=%r",
            d.policy,
            d.cluster,
            d.model,
            d.action,
            d.outcome,
            d.pr,
            d.reason,
        )
    report.duration_s = time.monotonic() - started
    return report


def _clusters(tree: Any) -> list[str]:
    return sorted({p.split("/")[1] for p in tree.paths("clusters") if p.count("/") >= 2})


def open_workspace(remote: str, *, cache_dir: Path, base: str = "main") -> Workspace:
    return Workspace.open(remote, cache_dir=cache_dir, base=base)


# -- plan and status (no writes) ----------------------------------------------------------------


@dataclass
class PlanResult:
    """Decisions and desired files of a dry run."""

    planned: list[Planned]
    decisions: list[Decision]
    problems: list[Problem]
    changesets: dict[RolloutKey, ChangeSet]
    desired: dict[str, bytes | None] = field(default_factory=dict)
    """Every file the plan wants, the rollouts rendered one on top of the other (rollouts of
    one namespace each add their folder to its kustomization.yaml); None: deleted."""

    def write(self, output: Path) -> None:
        """Every desired file below `output` (deletions listed in DELETED.txt)."""
        deleted: list[str] = []
        for path, data in sorted(self.desired.items()):
            if data is None:
                deleted.append(path)
                continue
            target = output / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if deleted:
            output.mkdir(parents=True, exist_ok=True)
            (output / "DELETED.txt").write_text("".join(f"{d}\n" for d in sorted(set(deleted))))

    def as_json(self) -> dict[str, Any]:
        return {
            "decisions": [d.as_json() for d in self.decisions],
            "changes": {
                str(k): [{"path": c.path, "change": c.kind.value} for c in cs]
                for k, cs in sorted(self.changesets.items())
                if cs
            },
            "problems": [str(p) for p in self.problems],
        }

    def print(self, console: Any) -> None:
        import difflib

        from rich.table import Table

        table = Table("cluster", "namespace", "model", "decision", "weights", "why")
        for d in self.decisions:
            table.add_row(
                d.cluster, d.namespace, d.model, f"{d.action} ({d.kind})", d.weights, d.reason
            )
        console.print(table)
        for key, cs in sorted(self.changesets.items()):
            for change in cs:
                old = (change.old or b"").decode(errors="replace").splitlines(keepends=True)
                new = (change.new or b"").decode(errors="replace").splitlines(keepends=True)
                diff = difflib.unified_diff(old, new, f"a/{change.path}", f"b/{change.path}")
                console.print(f"[bold]{key}[/bold]: {change.path} ({change.kind.value})")
                console.print("".join(diff), markup=False, highlight=False)


@_collector_paused
def dry_run(
    tree: Tree,
    *,
    statuses: Statuses,
    unreachable: Mapping[str, str],
    options: PassOptions,
    history: History,
    judge: Judge = no_verdicts,
    caches: repository.Caches | None = None,
) -> PlanResult:
    """Everything a pass would decide and change, without writing anything."""
    view = repository.load(tree, statuses=statuses, unreachable=unreachable, caches=caches)
    planned = plan_pass(view, options=options, history=history, judge=judge)
    changesets = build_many(tree, {p.key: p.files for p in planned if not p.problems})
    report = PassReport(problems=list(view.problems))
    decisions = []
    for p in planned:
        d = _decision(p)
        decisions.append(d)
        if p.problems:
            d.outcome = "error"
            report.problems.extend(p.problems)
        elif changesets[p.key]:
            d.outcome = "planned"
    return PlanResult(planned, decisions, report.problems, changesets, _desired(planned, tree))


def _desired(planned: Sequence[Planned], tree: Tree) -> dict[str, bytes | None]:
    """Every rollout's files rendered one on top of the other, as merging them all would leave
    the repository (separately rendered, shared files would keep only the last rollout's)."""
    overlay = OverlayTree(tree)
    for p in planned:
        if p.problems:
            continue
        if p.transition is None:
            k = p.key
            rendered = render.remove_rollout(
                k.model, cluster=k.cluster, namespace=k.namespace, tree=overlay
            )
        else:
            rendered = render.render(p.transition, tree=overlay)
        overlay.update(rendered.files)
    return dict(overlay.overrides)
