"""The metrics stage: per-interval evidence for every rollout, from Prometheus or a file.

The reconciler picks a backend by kind from `PROVIDERS` (an unknown kind is an error, never a
silent default), builds a `RolloutRef` per rollout and calls `collect` once per pass::

    provider = create_provider("prometheus", ProviderConfig("https://prometheus:9090"))
    collected = collect(provider, rollouts, now=now)
    evidence = collected.evidence["prod/default/fashionmnist"]

Deciding what the evidence means is the analysis stage's business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from gitops_rollout.errors import MetricsError
from gitops_rollout.metrics.base import (
    MetricsProvider,
    QueryError,
    RolloutRef,
    VersionRef,
)
from gitops_rollout.metrics.collect import Collected, collect
from gitops_rollout.metrics.evidence import Evidence, VersionSeries
from gitops_rollout.metrics.file import FileProvider, MetricsFileError
from gitops_rollout.metrics.prometheus import PrometheusClient, PrometheusOptions
from gitops_rollout.metrics.prometheus_provider import PrometheusProvider

__all__ = [
    "PROVIDERS",
    "Collected",
    "Evidence",
    "MetricsFileError",
    "MetricsProvider",
    "PrometheusOptions",
    "ProviderConfig",
    "ProviderKind",
    "QueryError",
    "RolloutRef",
    "UnknownProviderError",
    "VersionRef",
    "VersionSeries",
    "collect",
    "create_provider",
]


class ProviderKind(StrEnum):
    PROMETHEUS = "prometheus"
    FILE = "file"


@dataclass(frozen=True)
class ProviderConfig:
    """What a backend needs to start."""

    location: str
    """Prometheus' base URL (``https://prometheus.monitoring:9090``), or a recording's path."""
    prometheus: PrometheusOptions = field(default_factory=PrometheusOptions)
    """Auth, TLS, timeouts and retries; only the ``prometheus`` kind reads them."""


class UnknownProviderError(MetricsError):
    """The configuration names a backend that does not exist; fix the flag or setting."""

    exit_code = 1


def _prometheus(config: ProviderConfig) -> MetricsProvider:
    return PrometheusProvider(PrometheusClient(config.location, config.prometheus))


def _file(config: ProviderConfig) -> MetricsProvider:
    return FileProvider.load(Path(config.location))


PROVIDERS: dict[ProviderKind, Callable[[ProviderConfig], MetricsProvider]] = {
    ProviderKind.PROMETHEUS: _prometheus,
    ProviderKind.FILE: _file,
}


def create_provider(kind: str, config: ProviderConfig) -> MetricsProvider:
    """The backend registered as `kind`; raises UnknownProviderError for any other kind."""
    try:
        factory = PROVIDERS[ProviderKind(kind)]
    except (ValueError, KeyError) as err:
        known = ", ".join(k.value for k in PROVIDERS)
        raise UnknownProviderError(
            f"unknown metrics provider {kind!r}; use one of: {known}"
        ) from err
    return factory(config)
