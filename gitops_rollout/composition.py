"""Builds the clients a pass needs from Settings: workspace, host, inventory source and judge.

Part of the composition root (with `cli`): the only place that turns flags and environment into
objects, so `reconcile` receives finished collaborators and never reads the environment.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gitops_rollout.errors import RolloutError
from gitops_rollout.gitops.hosts import HostConfig, git_credentials, make_host
from gitops_rollout.gitops.hosts.base import GitHost, PullState
from gitops_rollout.gitops.repo import BRANCH_PREFIX, Signing, SigningFormat, Workspace
from gitops_rollout.inventory.model import ObjectRef, Status
from gitops_rollout.inventory.snapshot import load_snapshots
from gitops_rollout.settings import GitSettings, Settings
from gitops_rollout.tree import DirTree

if TYPE_CHECKING:
    # Imported where used: a one-shot pass opens its workspace and begins fetching before
    # it imports the planning stages (`pass_context`).
    from gitops_rollout import reconcile

log = logging.getLogger(__name__)


@dataclass
class PassContext:
    workspace: Workspace
    host: GitHost
    inventory: reconcile.InventorySource
    judge: reconcile.Judge


class SettingError(RolloutError):
    """A setting has a value we cannot use; bad input, not an outage."""

    exit_code = 1


def signing_of(git: GitSettings) -> Signing | None:
    """How to sign the bot's commits, from $GITOPS_ROLLOUT_SIGNING_KEY / _FORMAT; None: unsigned."""
    if not git.signing_key:
        return None
    try:
        form = SigningFormat(git.signing_format.strip().lower())
    except ValueError:
        known = ", ".join(f.value for f in SigningFormat)
        raise SettingError(
            f"GITOPS_ROLLOUT_SIGNING_FORMAT is {git.signing_format!r}; use one of: {known}"
        ) from None
    return Signing(git.signing_key, form)


SNAPSHOT_CACHE = ".inventory"
"""Beside the workspace's clone (under its lock): the readiness parsed from ``--inventory``
files, by their content."""


def snapshot_source(
    specs: Sequence[str], *, cache: Path | None = None
) -> reconcile.InventorySource:
    """Readiness from ``--inventory`` files, read at each call (the demo rewrites them);
    `cache` keeps what was parsed for the next process (`snapshot.SnapshotCache`)."""

    def read() -> tuple[Mapping[tuple[str, ObjectRef], Status], Mapping[str, str]]:
        return (load_snapshots(list(specs), cache=cache) if specs else {}), {}

    return read


def make_judge(*, metrics_file: str | None, prometheus: str | None) -> reconcile.Judge:
    """Verdicts from the analysis stage over evidence from the metrics stage."""
    from gitops_rollout import reconcile

    if not metrics_file and not prometheus:
        return reconcile.no_verdicts
    from gitops_rollout import judging

    return judging.Judge.from_source(metrics_file=metrics_file, prometheus=prometheus)


@contextmanager
def pass_context(
    settings: Settings,
    *,
    inventory: Sequence[str],
    metrics_file: str | None,
    prometheus: str | None,
    now: datetime,
) -> Iterator[PassContext]:
    """Build the host, then open the workspace (locking its cache) and begin fetching, for one
    or more passes.

    git reaches an HTTPS remote with the host's own token (`git_credentials`), an SSH remote
    with the environment's keys and ``GIT_SSH_COMMAND``, a path directly.
    """
    host = make_host(
        settings.host.kind,
        HostConfig(
            remote=settings.git.remote,
            api_url=settings.host.url or None,
            repository=settings.host.repository or None,
            clock=lambda: now,
        ),
    )
    workspace = Workspace.open(
        settings.git.remote,
        cache_dir=settings.git.cache_dir,
        base=settings.git.base,
        credentials=git_credentials(host, settings.git.remote),
        signing=signing_of(settings.git),
    )
    # Every pass starts by fetching: git can do it while the caller goes on (importing the
    # planning stages, on the command line).
    workspace.start_fetch()
    try:
        yield PassContext(
            workspace=workspace,
            host=host,
            inventory=snapshot_source(
                inventory, cache=workspace.git_dir.with_suffix(SNAPSHOT_CACHE)
            ),
            judge=make_judge(metrics_file=metrics_file, prometheus=prometheus),
        )
    finally:
        workspace.close()


@contextmanager
def checkout_history(
    repo: Path, *, cache_dir: Path, base: str = "main"
) -> Iterator[reconcile.History]:
    """When changes of a local checkout took effect: its `base` branch's history.

    A folder that is not a Git checkout (or has no `base` branch) has no history: nothing is
    known to have taken effect, so progressing rollouts wait.
    """
    from gitops_rollout import reconcile

    if not (repo / ".git").exists():
        yield reconcile.NoHistory()
        return
    try:
        workspace = Workspace.open(str(repo.resolve()), cache_dir=cache_dir, base=base)
    except RolloutError as err:
        log.warning("no history for %s: %s", repo, err)
        yield reconcile.NoHistory()
        return
    try:
        workspace.fetch()
        yield workspace
    except RolloutError as err:
        log.warning("no history for %s: %s", repo, err)
        yield reconcile.NoHistory()
    finally:
        workspace.close()


def plan_only(
    *,
    repo: Path,
    inventory: Sequence[str],
    metrics_file: str | None,
    prometheus: str | None = None,
    now: datetime,
    cache_dir: Path,
) -> reconcile.PlanResult:
    """What a pass would decide and change for the checkout in `repo`; writes nothing."""
    from gitops_rollout import reconcile

    statuses, unreachable = snapshot_source(inventory)()
    with checkout_history(repo, cache_dir=cache_dir) as history:
        return reconcile.dry_run(
            DirTree(repo),
            statuses=statuses,
            unreachable=unreachable,
            options=reconcile.PassOptions(now=now),
            history=history,
            judge=make_judge(metrics_file=metrics_file, prometheus=prometheus),
        )


def status_rows(
    *, repo: Path, inventory: Sequence[str], now: datetime, cache_dir: Path, remote: str | None
) -> list[dict[str, str]]:
    """One row per rollout: where it stands on the checkout, what comes next, its open PR."""
    from gitops_rollout import reconcile

    result = plan_only(
        repo=repo, inventory=inventory, metrics_file=None, now=now, cache_dir=cache_dir
    )
    pulls: dict[str, str] = {}
    closed: dict[str, tuple[int, str, list[str]]] = {}
    """Branches whose newest pull request was closed unmerged: (number, body, comments)."""
    if remote and "://" not in remote and Path(remote).is_dir():
        from gitops_rollout.gitops.hosts.local import LocalHost

        host = LocalHost(Path(remote))
        newest: set[str] = set()
        for record in host.list_pulls():  # newest first
            if record.head in newest:
                continue
            newest.add(record.head)
            if record.state is PullState.OPEN:
                pulls[record.head] = f"#{record.number}"
            elif record.state is PullState.CLOSED:
                closed[record.head] = (
                    record.number,
                    record.body,
                    [c.body for c in record.comments],
                )
    rows = []
    for planned, decision in zip(result.planned, result.decisions, strict=True):
        stored = planned.transition.situation.state if planned.transition else None
        branch = planned.key.branch(BRANCH_PREFIX)
        upcoming = f"{decision.action}: {decision.reason}"
        veto = closed.get(branch)
        if (
            veto is not None
            and decision.outcome == "planned"
            and reconcile.vetoes(veto[1], veto[2], planned)
        ):
            # As the next pass will: the same decision is not proposed again (a human veto).
            upcoming = (
                f"vetoed: #{veto[0]} proposing {decision.action} was closed unmerged; "
                "paused until the inputs change"
            )
            pulls[branch] = f"#{veto[0]} (closed)"
        rows.append(
            {
                "cluster": decision.cluster,
                "namespace": decision.namespace,
                "model": decision.model,
                "phase": (
                    f"{stored.phase.value}" + (f" {stored.step}" if stored and stored.step else "")
                    if stored
                    else "-"
                ),
                "weights": decision.weights,
                "next": upcoming,
                "pr": pulls.get(branch, ""),
            }
        )
    return rows
