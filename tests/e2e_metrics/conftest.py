"""Fixtures of the decision tests: worlds around a real Prometheus, closed after each test."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

# The Prometheus harness lives in tests/ for every suite to share.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics_world import MakeWorld, World
from prometheus_harness import Binaries, require_prometheus


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    return require_prometheus()


@pytest.fixture
def make_world(binaries: Binaries, tmp_path: Path) -> Iterator[MakeWorld]:
    """``make_world(files, behaviour=..., rps=...)``: a world seeded with `files`."""
    made: list[World] = []

    def make(files: Mapping[str, str], **kwargs: Any) -> World:
        world = World(tmp_path / f"world-{len(made)}", binaries=binaries, files=files, **kwargs)
        made.append(world)
        return world

    yield make
    for world in made:
        world.close()
