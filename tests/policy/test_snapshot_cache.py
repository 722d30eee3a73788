"""The snapshot cache: readiness parsed from ``--inventory`` files is kept by their content."""

from __future__ import annotations

import json
import pickle
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


def test_an_unchanged_snapshot_is_not_parsed_again(tmp_path: Path, parses: list[str]) -> None:
    folder, cache = tmp_path / "inventory", tmp_path / "cache" / "ws.inventory"
    _write(folder, "east", _deployment("a-v1", True), _deployment("a-v2", False))
    _write(folder, "west", _deployment("a-v1", True))

    first = load_snapshots([str(folder)], cache=cache)
    second = load_snapshots([str(folder)], cache=cache)

    assert parses == ["east.json", "west.json"]
    assert second == first == load_snapshots([str(folder)])
    assert first[("east", ObjectRef("Deployment", "team", "a-v2"))].readiness is (
        Readiness.NOT_READY
    )


def test_a_changed_snapshot_is_parsed_again_and_the_others_are_not(
    tmp_path: Path, parses: list[str]
) -> None:
    folder, cache = tmp_path / "inventory", tmp_path / "ws.inventory"
    _write(folder, "east", _deployment("a-v2", False))
    _write(folder, "west", _deployment("a-v1", True))
    load_snapshots([str(folder)], cache=cache)
    _write(folder, "east", _deployment("a-v2", True))
    parses.clear()

    statuses = load_snapshots([str(folder)], cache=cache)

    assert parses == ["east.json"]
    assert statuses[("east", ObjectRef("Deployment", "team", "a-v2"))].readiness is (
        Readiness.READY
    )
    parses.clear()
    load_snapshots([str(folder)], cache=cache)
    assert parses == []


def test_the_cluster_a_file_is_read_for_is_part_of_the_key(
    tmp_path: Path, parses: list[str]
) -> None:
    path = _write(tmp_path, "snap", _deployment("a-v1", True))
    cache = tmp_path / "ws.inventory"
    load_snapshots([f"east={path}"], cache=cache)

    statuses = load_snapshots([f"west={path}"], cache=cache)

    assert parses == ["snap.json", "snap.json"]
    assert list(statuses) == [("west", ObjectRef("Deployment", "team", "a-v1"))]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(b"not a pickle", id="garbage"),
        pytest.param(b"", id="empty"),
        pytest.param(pickle.dumps(((0, "another-release"), {})), id="older-format"),
        pytest.param(pickle.dumps(["unexpected"]), id="foreign-shape"),
    ],
)
def test_a_cache_that_cannot_be_used_is_a_miss_and_is_written_anew(
    tmp_path: Path, parses: list[str], damage: bytes
) -> None:
    folder, cache = tmp_path / "inventory", tmp_path / "ws.inventory"
    _write(folder, "east", _deployment("a-v1", True))
    cache.write_bytes(damage)

    statuses = load_snapshots([str(folder)], cache=cache)

    assert statuses == load_snapshots([str(folder)])
    assert parses == ["east.json", "east.json"]
    kept = SnapshotCache.read(cache).files
    assert [key[:2] for key in kept] == [(str(folder / "east.json"), "east")]


def test_another_code_version_does_not_trust_the_cache(
    tmp_path: Path, parses: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, cache = tmp_path / "inventory", tmp_path / "ws.inventory"
    _write(folder, "east", _deployment("a-v1", True))
    load_snapshots([str(folder)], cache=cache)
    monkeypatch.setattr(snapshot, "code_fingerprint", lambda: "a-newer-release")

    load_snapshots([str(folder)], cache=cache)

    assert parses == ["east.json", "east.json"]


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
