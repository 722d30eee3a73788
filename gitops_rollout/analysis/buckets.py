"""What the latency tests read from Prometheus histogram buckets.

Histograms give counts per bucket (non-cumulative here, last one is +Inf) and the exact sum.
Three things are taken from them: a per-request variance per interval (the floor under the
batch-means variance while there are few intervals), the bucket edge used as the "slow request"
threshold for a tail-latency test, and the count of requests above an edge.

The slow threshold for p95/p99 is a bucket edge near that quantile, chosen once from the first
few hundred requests of both versions pooled. Pooling ignores which version served a request, so
under "no difference" the choice tells nothing about the split the test then looks at; and the
choice is frozen once made, so later passes test the same thing. (ANALYSIS.md asks for a
pre-rollout window of the baseline; Evidence carries none, and this is the closest label-blind
substitute.) Arrays carry any leading axes; buckets are the last axis, intervals the one before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

CALIBRATION_EXCEEDANCES = 20.0
"""Requests expected above the quantile before an edge is chosen (400 for p95, 2000 for p99):
enough to tell neighbouring edges apart."""


def interval_variance(
    buckets: FloatArray, bounds: Sequence[float], total: FloatArray, count: FloatArray
) -> FloatArray:
    """Per-request variance of each interval from its buckets and its exact sum.

    Inside a finite bucket values are taken as log-uniform (density 1/x, closer to the right-
    skewed shape of latency than a flat one; the first bucket, from 0, as uniform); the +Inf
    bucket holds whatever the sum leaves (at least the last edge). The second moment is then
    rescaled so that the implied mean equals the exact one. On lognormal latency with a slow
    path and the default buckets this overstates the variance by 15-65 %: a floor, on the
    safe side. NaN where the interval has no request.
    """
    edges = np.asarray(bounds, dtype=np.float64)
    lower = np.concatenate(([0.0], edges[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_width = np.log(edges / lower)
        m1 = np.where(lower > 0, (edges - lower) / log_width, 0.5 * edges)
        m2 = np.where(lower > 0, (edges**2 - lower**2) / (2.0 * log_width), edges**2 / 3.0)
    finite = buckets[..., :-1]
    overflow = buckets[..., -1]
    finite_sum = np.sum(finite * m1, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        overflow_value = np.where(
            overflow > 0,
            np.maximum((total - finite_sum) / np.where(overflow > 0, overflow, 1.0), edges[-1]),
            0.0,
        )
        implied_mean = (finite_sum + overflow * overflow_value) / count
        mean = total / count
        scale = np.where(implied_mean > 0, mean / implied_mean, 1.0)
        second = (np.sum(finite * m2, axis=-1) + overflow * overflow_value**2) / count
        variance = second * scale * scale - mean * mean
        out: FloatArray = np.where(count > 0, np.maximum(variance, 0.0), np.nan)
    return out


@dataclass(frozen=True)
class Edge:
    """The slow-request threshold of a tail test, per rollout."""

    index: IntArray
    """Index into the bucket bounds (requests above bounds[index] are slow)."""
    ready: BoolArray
    """Whether the edge has been chosen yet (per interval when path=True)."""


def calibrate_edge(pooled: FloatArray, quantile: float, *, path: bool = False) -> Edge:
    """Choose the bucket edge nearest the ``quantile`` of the pooled histogram of the earliest
    intervals that together hold CALIBRATION_EXCEEDANCES / (1 - quantile) requests.

    ``pooled`` has shape (..., K, J+1): both versions' bucket counts added, excluded intervals
    zeroed. "Nearest" is on the scale of exceedance: |log(share above edge / (1 - q))|.
    """
    need = CALIBRATION_EXCEEDANCES / (1.0 - quantile)
    per_interval = np.sum(pooled, axis=-1)
    running = np.cumsum(per_interval, axis=-1)
    reached = running >= need
    found = np.any(reached, axis=-1)
    first = np.argmax(reached, axis=-1)
    cumulative = np.cumsum(pooled, axis=-2)
    at_first = np.take_along_axis(cumulative, first[..., None, None], axis=-2)[..., 0, :]
    above = np.cumsum(at_first[..., ::-1], axis=-1)[..., ::-1][..., 1:]
    total = np.sum(at_first, axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.abs(np.log(above / total / (1.0 - quantile)))
    distance = np.where(above > 0, distance, np.inf)
    index = np.argmin(distance, axis=-1).astype(np.int64)
    if path:
        steps = np.arange(per_interval.shape[-1])
        ready = found[..., None] & (steps >= first[..., None])
    else:
        ready = found
    return Edge(index, np.asarray(ready))


def exceedances(buckets: FloatArray, index: IntArray) -> FloatArray:
    """Requests above bounds[index] per interval; ``index`` has the leading shape."""
    above = np.cumsum(buckets[..., ::-1], axis=-1)[..., ::-1][..., 1:]
    picked = np.broadcast_to(index[..., None, None], (*above.shape[:-1], 1))
    out: FloatArray = np.take_along_axis(above, picked, axis=-1)[..., 0]
    return out


def limit_edges(bounds: Sequence[float], limit: float) -> tuple[int | None, int | None]:
    """Edges that bracket an absolute quantile limit: (smallest edge >= limit, largest edge <=
    limit). More than 1-q of requests above the first proves the limit broken; fewer than 1-q
    above the second proves it met. None where no such edge exists."""
    edges = list(bounds)
    at_or_above = [i for i, e in enumerate(edges) if e >= limit - 1e-9 * max(1.0, abs(limit))]
    at_or_below = [i for i, e in enumerate(edges) if e <= limit + 1e-9 * max(1.0, abs(limit))]
    return (
        at_or_above[0] if at_or_above else None,
        at_or_below[-1] if at_or_below else None,
    )


def edge_label(bounds: Sequence[float], index: int) -> str:
    """How a reviewer reads an edge: "slower than 250 ms"."""
    value = bounds[index]
    shown = f"{value:g}" if math.isfinite(value) else "+Inf"
    return f"slower than {shown} ms"
