"""Fixtures of the live-cluster tests: a fake API server and a kubeconfig pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .fake_apiserver import FakeApiServer


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kubeconfig(tmp_path: Path, api: FakeApiServer) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig", contexts={"prod-east": api.url})
