"""Guardrails: the policy's objectives turned into tests on a candidate's counts.

Each objective (error rate, mean latency, p95/p99 latency, or a custom metric) gives up to three
tests: relative to the baseline (when ``maxIncrease`` is given, or when the objective sets no
limit at all: then the metric's default margin applies), against an upper limit and against a
lower limit. Every test yields two e-values: evidence that the candidate is unacceptable (a
FAIL, which rolls back) and evidence that it is acceptable (a PASS, needed to promote). Rates
of bad events use the Poisson-split e-process, means the normal-mixture confidence sequence,
tail latency the share of requests above a bucket edge fed to the rate tests.

`evaluate` works on arrays with any leading axes and optionally on every prefix of the
intervals (``path=True``), so the benchmark runs exactly these tests on thousands of simulated
rollouts; `summarize` turns one rollout's test into the numbers a reviewer reads. Alpha
allocation and the decision are left to `decide`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gitops_rollout.analysis import buckets, confseq, eprocess
from gitops_rollout.analysis.abn import Spread
from gitops_rollout.analysis.catalogue import (
    BUILTIN,
    DEFAULT_MAX_INCREASE,
    DEFAULT_OBJECTIVES,
    RATE_SOURCES,
    ROLLBACK_INCREASE,
    Source,
    resolve,
)
from gitops_rollout.analysis.verdict import Comparison
from gitops_rollout.metrics.evidence import VersionSeries
from gitops_rollout.policy import Analysis

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


MEAN_TAU = 0.05
"""Mixture scale of mean tests, relative to the baseline's mean (or the limit): the size of
effect the confidence sequence is tuned to resolve fastest."""


@dataclass(frozen=True)
class Guardrail:
    """One objective, resolved against the built-in and custom metrics."""

    metric: str
    source: Source | None
    """None: the policy names a metric that is neither built in nor defined in metrics."""
    quantile: float | None = None
    max_increase: float | None = None
    """Relative test margin (0.5 = 1.5x); None: no relative test."""
    upper_limit: float | None = None
    lower_limit: float | None = None

    @property
    def rollback_increase(self) -> float:
        return ROLLBACK_INCREASE[self.source] if self.source is not None else 0.0

    def comparisons(self) -> tuple[Comparison, ...]:
        out: list[Comparison] = []
        if self.max_increase is not None:
            out.append(Comparison.RELATIVE)
        if self.upper_limit is not None:
            out.append(Comparison.UPPER_LIMIT)
        if self.lower_limit is not None:
            out.append(Comparison.LOWER_LIMIT)
        return tuple(out)


def guardrails_of(analysis: Analysis) -> tuple[Guardrail, ...]:
    """The policy's objectives, or the default guardrails when it lists none."""
    out: list[Guardrail] = []
    if not analysis.objectives:
        for name in DEFAULT_OBJECTIVES:
            kind, q = BUILTIN[name]
            out.append(Guardrail(name, kind, q, DEFAULT_MAX_INCREASE[kind]))
        return tuple(out)
    for objective in analysis.objectives:
        found = resolve(objective.metric, analysis)
        source: Source | None = found[0] if found else None
        quantile = found[1] if found else None
        increase = objective.max_increase
        if increase is None and objective.upper_limit is None and objective.lower_limit is None:
            increase = DEFAULT_MAX_INCREASE[source] if source is not None else 0.0
        out.append(
            Guardrail(
                objective.metric,
                source,
                quantile,
                increase,
                objective.upper_limit,
                objective.lower_limit,
            )
        )
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Counts


@dataclass(frozen=True)
class VersionCounts:
    """One version's per-interval counts with excluded intervals zeroed (leading axes allowed).

    Shapes: (..., K) for the series, (..., K, J+1) for ``buckets`` (J = len(bounds)).
    """

    requests: FloatArray
    errors: FloatArray
    latency_sum: FloatArray
    buckets: FloatArray
    bounds: tuple[float, ...] = ()
    custom: Mapping[str, FloatArray] = field(default_factory=dict)

    @classmethod
    def from_series(cls, series: VersionSeries, include: BoolArray) -> VersionCounts:
        def keep(values: FloatArray) -> FloatArray:
            out: FloatArray = np.where(include, np.asarray(values, dtype=np.float64), 0.0)
            return out

        has_buckets = bool(series.bucket_bounds_ms) and series.buckets.shape[0] == include.size
        hist = (
            np.where(include[:, None], np.asarray(series.buckets, dtype=np.float64), 0.0)
            if has_buckets
            else np.zeros((include.size, 0))
        )
        return cls(
            keep(series.requests),
            keep(series.errors),
            keep(series.latency_sum_ms),
            hist,
            tuple(series.bucket_bounds_ms) if has_buckets else (),
            {k: keep(v) for k, v in series.custom.items() if np.shape(v) == include.shape},
        )


@dataclass(frozen=True)
class RateCounts:
    events: FloatArray
    exposure: FloatArray


@dataclass(frozen=True)
class MeanCounts:
    total: FloatArray
    count: FloatArray
    variance: FloatArray | None
    """Per-request variance per interval, or None."""


def _custom_pair(
    counts: VersionCounts, name: str, denominator: FloatArray | None
) -> tuple[FloatArray, FloatArray] | None:
    """A policy metric and its denominator, without the intervals where either is unknown
    (NaN: a scrape gap of that metric); None when it is unknown throughout (no version has a
    series of it: a wrong query, or an exporter nobody scrapes), which is no data, not zero."""
    values = counts.custom.get(name)
    if values is None or denominator is None:
        return None
    known = np.isfinite(values) & np.isfinite(denominator)
    if not np.all(known) and not np.any(known & ((values != 0) | (denominator != 0))):
        return None
    return np.where(known, values, 0.0), np.where(known, denominator, 0.0)


def rate_counts(g: Guardrail, counts: VersionCounts) -> RateCounts | None:
    if g.source is Source.ERRORS:
        return RateCounts(counts.errors, counts.requests)
    if g.source is Source.COUNTER:
        pair = _custom_pair(counts, g.metric, counts.requests)
        return None if pair is None else RateCounts(*pair)
    if g.source is Source.RATIO:
        pair = _custom_pair(counts, g.metric, counts.custom.get(f"{g.metric}/denominator"))
        return None if pair is None else RateCounts(*pair)
    return None


def mean_counts(g: Guardrail, counts: VersionCounts) -> MeanCounts | None:
    if g.source is Source.LATENCY_MEAN:
        variance = None
        if counts.bounds:
            variance = buckets.interval_variance(
                counts.buckets, counts.bounds, counts.latency_sum, counts.requests
            )
        return MeanCounts(counts.latency_sum, counts.requests, variance)
    if g.source is Source.MEAN:
        count = counts.custom.get(f"{g.metric}/denominator", counts.requests)
        pair = _custom_pair(counts, g.metric, count)
        return None if pair is None else MeanCounts(pair[0], pair[1], None)
    return None


def shared_variance(a: FloatArray | None, b: FloatArray | None) -> FloatArray | None:
    """Per interval, the larger of the two versions' per-request variances: a version with few
    requests may not have shown its slow tail yet, and its own estimate would flatter it."""
    if a is None or b is None:
        return None
    out: FloatArray = np.fmax(a, b)
    return out


# ---------------------------------------------------------------------------------------------
# Tests


@dataclass(frozen=True)
class Assessment:
    """The evidence of one test (arrays over the leading axes, and intervals if path=True)."""

    metric: str
    comparison: Comparison
    log_e_fail: FloatArray
    """Against "acceptable": large means proven unacceptable."""
    log_e_pass: FloatArray
    """Against "unacceptable": large means proven acceptable."""
    available: bool = True
    """False: the metric is not in the evidence (NO_DATA)."""
    note: str = ""


def _none(like: FloatArray) -> FloatArray:
    out: FloatArray = np.full(like.shape, -np.inf)
    return out


def _shape(counts: VersionCounts, *, path: bool) -> FloatArray:
    return counts.requests if path else counts.requests[..., 0]


def evaluate(
    g: Guardrail, base: VersionCounts, cand: VersionCounts, *, path: bool = False
) -> list[Assessment]:
    """Every test of one guardrail for one candidate against the baseline."""
    like = _shape(cand, path=path)
    tests: list[Assessment] = []
    for comparison in g.comparisons():
        if g.source is None:
            tests.append(
                Assessment(g.metric, comparison, _none(like), _none(like), False, "unknown metric")
            )
        elif comparison is Comparison.RELATIVE:
            tests.append(_relative(g, base, cand, like, path=path))
        else:
            tests.append(_absolute(g, comparison, cand, like, path=path))
    return tests


def _relative(
    g: Guardrail, base: VersionCounts, cand: VersionCounts, like: FloatArray, *, path: bool
) -> Assessment:
    assert g.source is not None and g.max_increase is not None
    if g.source is Source.LATENCY_TAIL:
        assert g.quantile is not None
        if not (base.bounds and cand.bounds):
            return Assessment(g.metric, Comparison.RELATIVE, _none(like), _none(like), False)
        edge = buckets.calibrate_edge(base.buckets + cand.buckets, g.quantile, path=path)
        fail, ok = _split_tests(
            buckets.exceedances(cand.buckets, edge.index),
            buckets.exceedances(base.buckets, edge.index),
            cand.requests,
            base.requests,
            g,
            path=path,
        )
        ready = edge.ready
        return Assessment(
            g.metric,
            Comparison.RELATIVE,
            np.where(ready, fail, -np.inf),
            np.where(ready, ok, -np.inf),
        )
    if g.source in RATE_SOURCES:
        cand_rate, base_rate = rate_counts(g, cand), rate_counts(g, base)
        if cand_rate is None or base_rate is None:
            return Assessment(g.metric, Comparison.RELATIVE, _none(like), _none(like), False)
        fail, ok = _split_tests(
            cand_rate.events,
            base_rate.events,
            cand_rate.exposure,
            base_rate.exposure,
            g,
            path=path,
        )
        return Assessment(g.metric, Comparison.RELATIVE, fail, ok)
    cand_mean, base_mean = mean_counts(g, cand), mean_counts(g, base)
    if cand_mean is None or base_mean is None:
        return Assessment(g.metric, Comparison.RELATIVE, _none(like), _none(like), False)
    fail, ok = _mean_tests(cand_mean, base_mean, g, path=path)
    return Assessment(g.metric, Comparison.RELATIVE, fail, ok)


def _split_tests(
    cand_events: FloatArray,
    base_events: FloatArray,
    cand_exposure: FloatArray,
    base_exposure: FloatArray,
    g: Guardrail,
    *,
    path: bool,
) -> tuple[FloatArray, FloatArray]:
    assert g.max_increase is not None
    total = cand_exposure + base_exposure
    share = np.where(total > 0, cand_exposure / np.where(total > 0, total, 1.0), 0.0)
    fail = eprocess.split_log_evalue(
        cand_events,
        base_events,
        share,
        null_ratio=1.0 + g.rollback_increase,
        worse=True,
        path=path,
    )
    ok = eprocess.split_log_evalue(
        cand_events,
        base_events,
        share,
        null_ratio=1.0 + g.max_increase,
        worse=False,
        path=path,
    )
    return fail, ok


def _baseline_tau(base: MeanCounts, *, path: bool) -> FloatArray:
    total = np.cumsum(base.total, axis=-1) if path else np.sum(base.total, axis=-1)
    count = np.cumsum(base.count, axis=-1) if path else np.sum(base.count, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out: FloatArray = MEAN_TAU * np.abs(total / count)
    return out


def _mean_tests(
    cand: MeanCounts, base: MeanCounts, g: Guardrail, *, path: bool
) -> tuple[FloatArray, FloatArray]:
    assert g.max_increase is not None
    variance = shared_variance(cand.variance, base.variance)
    tau = _baseline_tau(base, path=path)
    worse = confseq.mean_difference(
        cand.total,
        cand.count,
        base.total,
        base.count,
        margin=g.rollback_increase,
        cand_var=variance,
        base_var=variance,
        path=path,
    )
    within = confseq.mean_difference(
        cand.total,
        cand.count,
        base.total,
        base.count,
        margin=g.max_increase,
        cand_var=variance,
        base_var=variance,
        path=path,
    )
    fail = confseq.log_evalue_positive(worse.value, worse.variance, tau)
    ok = confseq.log_evalue_positive(-within.value, within.variance, tau)
    return fail, ok


def _absolute(
    g: Guardrail, comparison: Comparison, cand: VersionCounts, like: FloatArray, *, path: bool
) -> Assessment:
    limit = g.upper_limit if comparison is Comparison.UPPER_LIMIT else g.lower_limit
    assert limit is not None and g.source is not None
    upper = comparison is Comparison.UPPER_LIMIT
    if g.source is Source.LATENCY_TAIL:
        return _tail_limit(g, comparison, limit, cand, like, path=path)
    if g.source in RATE_SOURCES:
        rate = rate_counts(g, cand)
        if rate is None:
            return Assessment(g.metric, comparison, _none(like), _none(like), False)
        above = eprocess.poisson_log_evalue(
            rate.events, rate.exposure, null_rate=limit, worse=True, path=path
        )
        below = eprocess.poisson_log_evalue(
            rate.events, rate.exposure, null_rate=limit, worse=False, path=path
        )
        return Assessment(g.metric, comparison, *((above, below) if upper else (below, above)))
    mean = mean_counts(g, cand)
    if mean is None:
        return Assessment(g.metric, comparison, _none(like), _none(like), False)
    level = confseq.mean_level(mean.total, mean.count, limit=limit, var=mean.variance, path=path)
    tau = np.full(level.value.shape, MEAN_TAU * abs(limit) if limit else MEAN_TAU)
    above = confseq.log_evalue_positive(level.value, level.variance, tau)
    below = confseq.log_evalue_positive(-level.value, level.variance, tau)
    return Assessment(g.metric, comparison, *((above, below) if upper else (below, above)))


def _tail_limit(
    g: Guardrail,
    comparison: Comparison,
    limit: float,
    cand: VersionCounts,
    like: FloatArray,
    *,
    path: bool,
) -> Assessment:
    assert g.quantile is not None
    if not cand.bounds:
        return Assessment(g.metric, comparison, _none(like), _none(like), False)
    share = 1.0 - g.quantile
    at_or_above, at_or_below = buckets.limit_edges(cand.bounds, limit)

    def above(edge: int | None, *, worse: bool) -> FloatArray:
        if edge is None:
            return _none(like)
        index = np.full(cand.requests.shape[:-1], edge, dtype=np.int64)
        slow = buckets.exceedances(cand.buckets, index)
        return eprocess.poisson_log_evalue(
            slow, cand.requests, null_rate=share, worse=worse, path=path
        )

    if comparison is Comparison.UPPER_LIMIT:
        # Too many requests beyond an edge at or above the limit: the quantile is above it.
        fail, ok = above(at_or_above, worse=True), above(at_or_below, worse=False)
    else:
        fail, ok = above(at_or_below, worse=False), above(at_or_above, worse=True)
    return Assessment(g.metric, comparison, fail, ok)


def tests_per_candidate(guardrails: Sequence[Guardrail]) -> int:
    """How many tests each candidate runs (the rollback alpha is split across all of them)."""
    return sum(len(g.comparisons()) for g in guardrails)


def reward_counts(
    name: str, analysis: Analysis, counts: VersionCounts
) -> tuple[FloatArray, FloatArray, Spread] | None:
    """(numerator, denominator, spread) of a reward metric; None if it is not in the counts
    (or is a latency quantile, which is not a reward)."""
    found = resolve(name, analysis)
    if found is None:
        return None
    source = found[0]
    g = Guardrail(name, source)
    if source in (Source.ERRORS, Source.RATIO, Source.COUNTER):
        rate = rate_counts(g, counts)
        if rate is None:
            return None
        spread = Spread.POISSON if source is Source.COUNTER else Spread.BERNOULLI
        return rate.events, rate.exposure, spread
    if source in (Source.LATENCY_MEAN, Source.MEAN):
        mean = mean_counts(g, counts)
        return None if mean is None else (mean.total, mean.count, Spread.UNKNOWN)
    return None
