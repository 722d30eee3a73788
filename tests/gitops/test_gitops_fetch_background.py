"""Git work in the background: a fetch begun early, the remote-tracking refs of a push.

The command line begins fetching as soon as it has opened the workspace and imports the
planning stages meanwhile (`Workspace.start_fetch`). What must hold: one git fetch, not two;
the same answer as a fetch in the foreground; its failure reported by the `fetch` that waits
for it; and the cache lock not released while git still writes.

After a push the remote-tracking refs are written while the pass opens pull requests: the
push returns first, the workspace answers with what it pushed, and whatever reads refs next
waits for them (their failure: tests/gitops/test_gitops_repo.py).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from gitops_helpers import T0, Remote, git

from gitops_rollout.composition import pass_context
from gitops_rollout.errors import GitWriteError
from gitops_rollout.gitops.changeset import ChangeSet
from gitops_rollout.gitops.repo import (
    CommitMessage,
    CommitRequest,
    PushOutcome,
    Workspace,
    branch_name,
)
from gitops_rollout.settings import GitSettings, HostSettings, Settings


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The threads every git fetch ran in, from now on."""
    seen: list[str] = []
    real = Workspace._fetch

    def counting(self: Workspace) -> str:
        seen.append(threading.current_thread().name)
        return real(self)

    monkeypatch.setattr(Workspace, "_fetch", counting)
    return seen


def test_fetch_waits_for_the_fetch_begun_in_the_background(
    remote: Remote, tmp_path: Path, fetches: list[str]
) -> None:
    moved = remote.commit({"docs/new.md": "hello\n"})
    with Workspace.open(str(remote.path), cache_dir=tmp_path / "cache") as ws:
        ws.start_fetch()
        ws.start_fetch()  # already under way: not a second one
        assert ws.fetch() == moved
        assert fetches == ["gitops-rollout-fetch"], "one fetch, in the background"
        assert ws.tree().read("docs/new.md") == b"hello\n"
        # The next fetch is a fetch of its own again.
        again = remote.commit({"docs/new.md": "again\n"})
        assert ws.fetch() == again
        assert fetches == ["gitops-rollout-fetch", threading.main_thread().name]


def test_a_failed_background_fetch_is_raised_by_fetch(remote: Remote, tmp_path: Path) -> None:
    with Workspace.open(str(remote.path), cache_dir=tmp_path / "cache", base="trunk") as ws:
        ws.start_fetch()
        with pytest.raises(GitWriteError, match="has no branch 'trunk'"):
            ws.fetch()


def test_close_waits_for_a_fetch_nobody_waited_for(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []
    real = Workspace._fetch

    def slow(self: Workspace) -> Any:
        started.set()
        release.wait(10)
        sha = real(self)
        finished.append(sha)
        return sha

    monkeypatch.setattr(Workspace, "_fetch", slow)
    ws = Workspace.open(str(remote.path), cache_dir=tmp_path / "cache")
    ws.start_fetch()
    assert started.wait(10)
    closing = threading.Thread(target=ws.close)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive(), "the lock is held while git fetches"
    release.set()
    closing.join(10)
    assert not closing.is_alive() and finished == [remote.sha("main")]


def test_a_pass_context_begins_fetching_before_the_pass_asks(
    remote: Remote, tmp_path: Path, fetches: list[str]
) -> None:
    settings = Settings(
        git=GitSettings(remote=str(remote.path), cache_dir=tmp_path / "cache"),
        host=HostSettings(kind="local"),
    )
    with pass_context(settings, inventory=[], metrics_file=None, prometheus=None, now=T0) as ctx:
        assert ctx.workspace.fetch() == remote.sha("main")
    assert fetches == ["gitops-rollout-fetch"], "begun by pass_context, in the background"


def test_a_push_returns_before_its_remote_tracking_refs_are_written(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    real = Workspace._update_refs

    def slow(self: Workspace, updates: Any) -> None:
        started.set()
        release.wait(10)
        real(self, updates)

    monkeypatch.setattr(Workspace, "_update_refs", slow)
    branch = branch_name(cluster="prod", namespace="ml", model="wisdom")
    with Workspace.open(str(remote.path), cache_dir=tmp_path / "cache") as ws:
        ws.fetch()
        changes = ChangeSet.build(ws.tree(), {"clusters/prod/ml/wisdom/w.yaml": b"w: 10\n"})
        [pushed] = ws.publish([CommitRequest(branch, changes, CommitMessage("step"))], now=T0)
        assert pushed.outcome is PushOutcome.PUSHED
        assert started.wait(10) and not release.is_set(), "returned while the refs wait"
        ref = f"refs/remotes/origin/{branch}"
        assert git("--git-dir", str(ws.git_dir), "for-each-ref", ref) == ""
        answers: list[dict[str, str]] = []
        asking = threading.Thread(target=lambda: answers.append(ws.remote_heads()))
        asking.start()
        asking.join(0.3)
        assert asking.is_alive(), "the next read of refs waits for them"
        release.set()
        asking.join(10)
        assert answers == [{branch: pushed.sha}]
        written = git("--git-dir", str(ws.git_dir), "rev-parse", ref).strip()
        assert written == pushed.sha
