"""Fixtures of the write-stage tests: real git, a bare remote in a tmp dir, a settable clock."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from gitops_helpers import BOT, SEED, T0, Clock, Remote

from gitops_rollout.gitops.hosts.local import LocalHost, _Repo
from gitops_rollout.gitops.objects import ObjectReader
from gitops_rollout.gitops.repo import Workspace


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    r = Remote(tmp_path)
    r.commit(SEED, message="seed the GitOps repository", when=T0 - timedelta(days=1))
    return r


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def workspace(remote: Remote, tmp_path: Path, sleeps: list[float]) -> Iterator[Workspace]:
    ws = Workspace.open(
        str(remote.path),
        cache_dir=tmp_path / "cache",
        identity=BOT,
        sleep=sleeps.append,
        rng=random.Random(7),
    )
    ws.fetch()
    yield ws
    ws.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def host(remote: Remote, clock: Clock) -> LocalHost:
    return LocalHost(remote.path, clock=clock)


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The git subcommands every LocalHost runs from now on."""
    seen: list[str] = []
    run = _Repo.run_bytes
    reader = ObjectReader.__init__

    def counting(self: _Repo, *args: str, **kwargs: Any) -> tuple[int, bytes, str]:
        seen.append(args[0])
        return run(self, *args, **kwargs)

    def reading(self: ObjectReader, path: Path) -> None:
        seen.append("cat-file --batch")
        reader(self, path)

    monkeypatch.setattr(_Repo, "run_bytes", counting)
    monkeypatch.setattr(ObjectReader, "__init__", reading)
    return seen
