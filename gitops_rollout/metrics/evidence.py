"""Evidence: per-interval increments of raw counters, per version, as the tests consume them.

The metrics stage produces it (from Prometheus or a file); the analysis stage reads it. Values
are increments between two consecutive interval boundaries of the raw counters (counter resets
already handled), never `rate()` or `histogram_quantile()` output. Nothing here talks to a
backend or decides anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

Counts = npt.NDArray[np.float64]


@dataclass(frozen=True)
class VersionSeries:
    """One version's increments over intervals 0..k-1 (k = len(requests)).

    Arrays are aligned on the same intervals as `Evidence.boundaries`. An interval whose
    scrape is missing has `missing[i] = True` and zeros elsewhere; tests must skip it rather
    than count it as a pass or a failure.
    """

    version: str
    """The version label (``app.kubernetes.io/version``) the series belongs to."""
    requests: Counts
    errors: Counts
    latency_sum_ms: Counts
    """Sum of request durations in the interval, milliseconds."""
    bucket_bounds_ms: tuple[float, ...] = ()
    """Upper edges (``le``) of the latency histogram buckets, ascending, without +Inf."""
    buckets: Counts = field(default_factory=lambda: np.zeros((0, 0)))
    """Shape (k, len(bucket_bounds_ms) + 1): non-cumulative counts per bucket, last is +Inf."""
    custom: dict[str, Counts] = field(default_factory=dict)
    """Policy metrics and rewards by name (for ratio metrics: ``name`` and ``name/denominator``)."""
    missing: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    reset: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    """Intervals in which a built-in counter fell (its process restarted): what it counted
    between the interval's start and the restart is lost, so the counts there are short."""

    @property
    def intervals(self) -> int:
        return int(self.requests.shape[0])


@dataclass(frozen=True)
class Evidence:
    """What one pass knows about one rollout's versions since its step started."""

    boundaries: tuple[datetime, ...]
    """k + 1 instants; interval i runs from boundaries[i] to boundaries[i + 1]."""
    interval: timedelta
    series: dict[str, VersionSeries]
    """By version label; the baseline (primary) and each candidate."""
    queries: tuple[str, ...] = ()
    """The PromQL (or file keys) used, for the PR body and for reviewers to recompute."""

    @property
    def intervals(self) -> int:
        return max(0, len(self.boundaries) - 1)
