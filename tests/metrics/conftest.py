"""Fixtures: a real Prometheus serving the backfilled history of `metrics_history`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The harness lives in tests/ for every suite to share.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics_history import build_history
from prometheus_harness import (
    Binaries,
    PrometheusServer,
    backfill,
    require_prometheus,
)


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    return require_prometheus()


@pytest.fixture(scope="session")
def prometheus(
    binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """One Prometheus for the whole session; starting it costs about a second."""
    workdir = tmp_path_factory.mktemp("prometheus-history")
    backfill(build_history(), workdir / "data", binaries=binaries)
    with PrometheusServer(workdir, binaries=binaries) as server:
        yield server
