"""``gitops-rollout`` with a kill point: the crash-recovery tests run this instead of the CLI.

The tests only (production code has no such hook): ``E2E_KILL_AT`` names the moment the process
SIGKILLs itself, as an OOM kill or a node drain would, and ``E2E_KILL_NTH`` which occurrence
(default 1):

- ``commit``: the pass's commits are built in the cache, nothing is pushed;
- ``push``: ``git push`` returned, the cache has not recorded what it pushed;
- ``pull-request``: before opening (or updating) a pull request, inside the host's batch: the
  records before it are written in the batch's transaction, which dies uncommitted (so none
  is recorded), and no pull ref is set yet;
- ``merge``: before the bot merges the pull requests it opened;
- ``merged``: main moved to the merge commits, the records do not say merged yet.

Usage: ``python killer.py reconcile --remote ... `` (the arguments of ``gitops-rollout``).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from gitops_rollout import cli
from gitops_rollout.gitops.hosts.base import PullState
from gitops_rollout.gitops.hosts.local import LocalHost, PullRecord
from gitops_rollout.gitops.repo import Workspace


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _counting(nth: int) -> Callable[[], bool]:
    seen = 0

    def hit() -> bool:
        nonlocal seen
        seen += 1
        return seen == nth

    return hit


def install(point: str, nth: int) -> None:
    hit = _counting(nth)
    if point == "commit":
        commit = Workspace.commit

        def commit_then_die(self: Workspace, *args: Any, **kwargs: Any) -> Any:
            built = commit(self, *args, **kwargs)
            if hit():
                _die()
            return built

        Workspace.commit = commit_then_die  # type: ignore[method-assign]
    elif point == "push":
        run_status = Workspace._run_status

        def push_then_die(self: Workspace, *args: str, **kwargs: Any) -> Any:
            result = run_status(self, *args, **kwargs)
            if args and args[0] == "push" and hit():
                _die()
            return result

        Workspace._run_status = push_then_die  # type: ignore[method-assign]
    elif point == "pull-request":
        open_one = LocalHost._open_one

        def die_then_open(self: LocalHost, *args: Any, **kwargs: Any) -> Any:
            if hit():
                _die()
            return open_one(self, *args, **kwargs)

        LocalHost._open_one = die_then_open  # type: ignore[method-assign]
    elif point == "merge":
        merge_many = LocalHost.merge_many

        def die_then_merge(self: LocalHost, *args: Any, **kwargs: Any) -> Any:
            if hit():
                _die()
            return merge_many(self, *args, **kwargs)

        LocalHost.merge_many = die_then_merge  # type: ignore[method-assign]
    elif point == "merged":
        save = LocalHost._save

        def die_before_recording_merged(self: LocalHost, record: PullRecord) -> None:
            if record.state is PullState.MERGED and hit():
                _die()
            save(self, record)

        LocalHost._save = die_before_recording_merged  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown E2E_KILL_AT {point!r}")


if __name__ == "__main__":
    install(os.environ["E2E_KILL_AT"], int(os.environ.get("E2E_KILL_NTH", "1")))
    sys.argv[0] = "gitops-rollout"
    cli.run()
