"""Manifests parsed in a second process give the repository view one process gives.

`repository.load` hands manifest files to a spawned worker when many are not cached (a cold
read of a large repository) and parses policies meanwhile. The example repository, with the
threshold lowered to one file, must read exactly as it reads without the worker; a worker that
fails leaves the parsing to the scan.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gitops_rollout import repository
from gitops_rollout.inventory import manifests
from gitops_rollout.tree import DirTree

EXAMPLE = Path(__file__).resolve().parents[2]


def _view(monkeypatch: pytest.MonkeyPatch, threshold: int) -> repository.RepositoryView:
    monkeypatch.setattr(manifests, "PARALLEL_MIN", threshold)
    return repository.load(DirTree(EXAMPLE), caches=repository.Caches())


def _summary(view: repository.RepositoryView) -> tuple[object, ...]:
    return (
        view.inventory.clusters,
        [str(p) for p in view.problems],
        sorted(lp.file for lp in view.policies.policies),
        view.policy_paths,
    )


def test_the_worker_reads_the_repository_as_one_process_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[bool] = []
    real_wait = manifests.Prefetch.wait

    def wait(self: manifests.Prefetch) -> None:
        started.append(self.started)
        real_wait(self)

    monkeypatch.setattr(manifests.Prefetch, "wait", wait)
    alone = _view(monkeypatch, 10**9)
    assert started == [False]

    def not_here(data: bytes, *, file: str, namespace: str) -> object:
        raise AssertionError(f"{file} was parsed in this process, not by the worker")

    monkeypatch.setattr(manifests, "_parse_file", not_here)  # the worker has its own module
    with_worker = _view(monkeypatch, 1)
    assert started == [False, True]
    assert _summary(with_worker) == _summary(alone)
    assert with_worker.inventory.clusters  # the example has clusters: the test compares things


def test_a_failing_worker_leaves_the_parsing_to_the_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    alone = _view(monkeypatch, 10**9)

    monkeypatch.setattr(manifests, "_WORKER", "import sys; sys.exit('worker died')")
    assert _summary(_view(monkeypatch, 1)) == _summary(alone)
