"""The snapshot cache: readiness parsed from ``--inventory`` files is kept by their content."""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gitops_rollout.errors import ManifestError
from gitops_rollout.inventory import snapshot
from gitops_rollout.inventory.model import ObjectRef, Readiness
from gitops_rollout.inventory.snapshot import SnapshotCache, load_snapshots


def _deployment(name: str, ready: bool) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "team", "generation": 1},
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Available", "status": "True" if ready else "False"}],
        },
    }


def _write(folder: Path, cluster: str, *objects: dict[str, Any]) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{cluster}.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))
    return path


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files `load_snapshots` parses (the cache's misses)."""
    seen: list[str] = []
    real = snapshot.parse_snapshot

    def counting(text: bytes, *, file: str, cluster: str = "") -> Any:
        seen.append(Path(file).name)
        return real(text, file=file, cluster=cluster)

    monkeypatch.setattr(snapshot, "parse_snapshot", counting)
    return seen


def _settled(folder: Path, cache: Path) -> None:
    """Two reads of the same files: the second keeps their readiness."""
    load_snapshots([str(folder)], cache=cache)
    load_snapshots([str(folder)], cache=cache)


def test_an_unchanged_snapshot_is_parsed_twice_then_read_back(
    tmp_path: Path, parses: list[str]
) -> None:
    folder, cache = tmp_path / "inventory", tmp_path / "cache" / "ws.inventory"
    _write(folder, "east", _deployment("a-v1", True), _deployment("a-v2", False))
    _write(folder, "west", _deployment("a-v1", True))

    first = load_snapshots([str(folder)], cache=cache)
    second = load_snapshots([str(folder)], cache=cache)
    third = load_snapshots([str(folder)], cache=cache)

    assert parses == ["east.json", "west.json"] * 2
    assert third == second == first == load_snapshots([str(folder)])
    assert third[("east", ObjectRef("Deployment", "team", "a-v2"))].readiness is (
        Readiness.NOT_READY
    )


def test_a_snapshot_that_changes_every_pass_is_never_kept(
    tmp_path: Path, parses: list[str]
) -> None:
    folder, cache = tmp_path / "inventory", tmp_path / "ws.inventory"
    for ready in (True, False, True, False):
        _write(folder, "east", _deployment("a-v1", ready))
        load_snapshots([str(folder)], cache=cache)

    assert parses == ["east.json"] * 4
    assert SnapshotCache.read(cache).kept == frozenset()
    assert list(SnapshotCache.read(cache).seen) == [(str(folder / "east.json"), "east")]


def test_a_changed_snapshot_is_parsed_again_and_the_others_are_not(
    tmp_path: Path, parses: list[str]
) -> None:
    folder, cache = tmp_path / "inventory", tmp_path / "ws.inventory"
    _write(folder, "east", _deployment("a-v2", False))
    _write(folder, "west", _deployment("a-v1", True))
    _settled(folder, cache)
    _write(folder, "east", _deployment("a-v2", True))
    parses.clear()

    statuses = load_snapshots([str(folder)], cache=cache)

    assert parses == ["east.json"]
    assert statuses[("east", ObjectRef("Deployment", "team", "a-v2"))].readiness is (
        Readiness.READY
    )
    parses.clear()
    _settled(folder, cache)
    assert parses == ["east.json"]  # its second reading keeps it
    load_snapshots([str(folder)], cache=cache)
    assert parses == ["east.json"]


def test_the_cluster_a_file_is_read_for_is_part_of_the_key(
    tmp_path: Path, parses: list[str]
) -> None:
    path = _write(tmp_path, "snap", _deployment("a-v1", True))
    cache = tmp_path / "ws.inventory"
    for _ in range(2):
        load_snapshots([f"east={path}"], cache=cache)

    statuses = load_snapshots([f"west={path}"], cache=cache)

    assert parses == ["snap.json"] * 3
    assert list(statuses) == [("west", ObjectRef("Deployment", "team", "a-v1"))]


def _readiness_cut_short(kept: bytes) -> bytes:
    """The cache with its first pickle (what was seen and kept) whole, the second cut short."""
    stream = io.BytesIO(kept)
    pickle.load(stream)  # noqa: S301 (our own test file)
    return kept[: stream.tell() + 5]


@pytest.mark.parametrize(
    ("damage", "parsed"),
    [
        pytest.param(lambda kept: b"not a pickle", 2, id="garbage"),
        pytest.param(lambda kept: b"", 2, id="empty"),
        pytest.param(lambda kept: pickle.dumps(((0, "old"), {}, frozenset())), 2, id="old-format"),
        pytest.param(lambda kept: pickle.dumps(["unexpected"]), 2, id="foreign-shape"),
        # What was kept is known, so the next reading keeps it again at once.
        pytest.param(_readiness_cut_short, 1, id="readiness-cut-short"),
    ],
)
def test_a_cache_that_cannot_be_used_is_a_miss_and_is_written_anew(
    tmp_path: Path, parses: list[str], damage: Callable[[bytes], bytes], parsed: int
) -> None:
    folder, cache = tmp_path / "inventory", tmp_path / "ws.inventory"
    _write(folder, "east", _deployment("a-v1", True))
    _settled(folder, cache)
    cache.write_bytes(damage(cache.read_bytes()))
    expected = load_snapshots([str(folder)])
    parses.clear()

    statuses = load_snapshots([str(folder)], cache=cache)
    _settled(folder, cache)

    assert statuses == expected
    assert parses == ["east.json"] * parsed


def test_another_code_version_does_not_trust_the_cache(
    tmp_path: Path, parses: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, cache = tmp_path / "inventory", tmp_path / "ws.inventory"
    _write(folder, "east", _deployment("a-v1", True))
    _settled(folder, cache)
    monkeypatch.setattr(snapshot, "code_fingerprint", lambda: "a-newer-release")

    load_snapshots([str(folder)], cache=cache)

    assert parses == ["east.json"] * 3


def test_a_broken_snapshot_still_fails_and_is_not_kept(tmp_path: Path) -> None:
    folder, cache = tmp_path / "inventory", tmp_path / "ws.inventory"
    folder.mkdir()
    (folder / "east.json").write_text('{"kind": "List", "items": [')

    with pytest.raises(ManifestError, match="invalid JSON"):
        load_snapshots([str(folder)], cache=cache)
    with pytest.raises(ManifestError, match="invalid JSON"):
        load_snapshots([str(folder)], cache=cache)
    assert not cache.exists()


def test_a_cache_that_cannot_be_written_only_costs_the_time(tmp_path: Path) -> None:
    folder = tmp_path / "inventory"
    _write(folder, "east", _deployment("a-v1", True))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")

    statuses = load_snapshots([str(folder)], cache=blocker / "ws.inventory")

    assert statuses == load_snapshots([str(folder)])
