"""Synthetic evidence for the analysis tests: what the metrics stage would hand to `decide`.

Poisson traffic split by weight, binomial errors, lognormal latency (median 50 ms, sigma 0.5)
with a slow path at 400 ms, exported through Prometheus' default histogram buckets with an
exact-in-distribution sum. Independent of bench/decisions.py on purpose: the tests check the
statistics against data the benchmark did not generate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

from gitops_rollout.metrics.evidence import Evidence, VersionSeries

FloatArray = npt.NDArray[np.float64]

BUCKETS = (
    5.0,
    10.0,
    25.0,
    50.0,
    75.0,
    100.0,
    250.0,
    500.0,
    750.0,
    1000.0,
    2500.0,
    5000.0,
    7500.0,
    10000.0,
)
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def latency_moments(scale: float = 1.0, slow: float = 0.01) -> tuple[FloatArray, ...]:
    """P(bucket), mean and variance inside each bucket for the latency mixture x scale."""
    edges = np.log(np.concatenate(([1e-300], BUCKETS, [np.inf])))
    prob = np.zeros(len(BUCKETS) + 1)
    m1 = np.zeros_like(prob)
    m2 = np.zeros_like(prob)
    for weight, median in ((1.0 - slow, 50.0 * scale), (slow, 400.0 * scale)):
        z = (edges - np.log(median)) / 0.5
        prob += weight * np.diff(ndtr(z))
        m1 += weight * median * np.exp(0.125) * np.diff(ndtr(z - 0.5))
        m2 += weight * median**2 * np.exp(0.5) * np.diff(ndtr(z - 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(prob > 0, m1 / prob, 0.0)
        var = np.where(prob > 0, np.maximum(m2 / prob - mean**2, 0.0), 0.0)
    return prob / prob.sum(), mean, var


def version_series(
    rng: np.random.Generator,
    name: str,
    requests: FloatArray,
    *,
    error_rate: float | FloatArray = 0.005,
    latency: float | FloatArray = 1.0,
    slow: float = 0.01,
    custom: Mapping[str, FloatArray] | None = None,
    missing: Sequence[int] = (),
) -> VersionSeries:
    k = requests.size
    scales = np.broadcast_to(np.asarray(latency, dtype=np.float64), (k,))
    rates = np.broadcast_to(np.asarray(error_rate, dtype=np.float64), (k,))
    hist = np.zeros((k, len(BUCKETS) + 1))
    sums = np.zeros(k)
    for i in range(k):
        prob, mean, var = latency_moments(float(scales[i]), slow)
        hist[i] = rng.multinomial(int(requests[i]), prob)
        sums[i] = np.sum(hist[i] * mean + np.sqrt(hist[i] * var) * rng.standard_normal(prob.size))
    errors = rng.binomial(requests.astype(np.int64), np.minimum(rates, 1.0)).astype(np.float64)
    flags = np.zeros(k, dtype=bool)
    req = requests.astype(np.float64).copy()
    extra = {key: np.asarray(v, dtype=np.float64).copy() for key, v in (custom or {}).items()}
    for i in missing:
        flags[i] = True
        req[i] = errors[i] = sums[i] = 0.0
        hist[i] = 0.0
        for v in extra.values():
            v[i] = 0.0
    return VersionSeries(name, req, errors, np.maximum(sums, 0.0), BUCKETS, hist, extra, flags)


def split(
    rng: np.random.Generator, intervals: int, *, traffic: float, shares: Sequence[float]
) -> FloatArray:
    """Requests per version per interval, shape (versions, intervals)."""
    total = rng.poisson(traffic * 60.0, intervals)
    out: FloatArray = rng.multinomial(total, np.asarray(shares)).T.astype(np.float64)
    return out


def canary(
    rng: np.random.Generator,
    *,
    intervals: int,
    traffic: float = 100.0,
    share: float = 0.5,
    base_error: float = 0.005,
    error_ratio: float = 1.0,
    latency: float | FloatArray = 1.0,
    slow: float = 0.01,
    missing: Sequence[int] = (),
    start: datetime = T0,
) -> Evidence:
    """Baseline v1 and candidate v2."""
    n = split(rng, intervals, traffic=traffic, shares=(1.0 - share, share))
    return Evidence(
        tuple(start + i * MINUTE for i in range(intervals + 1)),
        MINUTE,
        {
            "v1": version_series(rng, "v1", n[0], error_rate=base_error, missing=missing),
            "v2": version_series(
                rng,
                "v2",
                n[1],
                error_rate=base_error * error_ratio,
                latency=latency,
                slow=slow,
                missing=missing,
            ),
        },
    )


def abn(
    rng: np.random.Generator,
    *,
    intervals: int,
    ctr: Sequence[float],
    shares: Sequence[float],
    traffic: float = 1000.0,
    error_rates: Sequence[float] | None = None,
    reward: str = "clicks",
) -> Evidence:
    """Arms v1 (baseline), v2, v3, ... with a click counter as reward."""
    n = split(rng, intervals, traffic=traffic, shares=shares)
    rates = error_rates or [0.005] * len(ctr)
    series = {}
    for i, (p, e) in enumerate(zip(ctr, rates, strict=True)):
        clicks = rng.binomial(n[i].astype(np.int64), p).astype(np.float64)
        name = f"v{i + 1}"
        series[name] = version_series(rng, name, n[i], error_rate=e, custom={reward: clicks})
    return Evidence(tuple(T0 + i * MINUTE for i in range(intervals + 1)), MINUTE, series)
