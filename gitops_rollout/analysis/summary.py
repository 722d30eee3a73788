"""For people: one rollout's tests as evidence-table rows (`Check`) and plain sentences.

The decision itself rests only on the e-values in `guardrails`; this module recomputes, for one
rollout, the numbers a reviewer reads next to it: each version's estimate, the confidence
bounds the same tests support (inverting them over a grid of margins), the counts used, and a
sentence per finding. Nothing here changes a decision; rendering the table is the PR body's job.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from gitops_rollout.analysis import buckets, confseq, eprocess
from gitops_rollout.analysis.catalogue import RATE_SOURCES, Source
from gitops_rollout.analysis.guardrails import (
    MEAN_TAU,
    Assessment,
    Guardrail,
    MeanCounts,
    RateCounts,
    VersionCounts,
    mean_counts,
    rate_counts,
    shared_variance,
)
from gitops_rollout.analysis.verdict import (
    Check,
    CheckVerdict,
    Comparison,
    Tally,
    confidence,
    value,
)

_RATIO_GRID = np.exp(np.linspace(math.log(0.2), math.log(5.0), 401))
"""Ratios at which mean tests are inverted for display (0.8 % apart)."""


def summarize(
    g: Guardrail,
    test: Assessment,
    base: VersionCounts,
    cand: VersionCounts,
    *,
    version: str,
    verdict: CheckVerdict,
    alpha_fail: float,
    alpha_pass: float,
) -> Check:
    """The reviewer's view of one test on one rollout (1-d counts, excluded intervals zero)."""
    limit, fail_at = _limits(g, test.comparison)
    used = int(np.count_nonzero((cand.requests > 0) & (base.requests > 0)))
    tally = Tally(used, float(np.sum(base.requests)), float(np.sum(cand.requests)))
    empty = Check(
        metric=g.metric,
        version=version,
        comparison=test.comparison,
        verdict=verdict,
        unit=_unit(g),
        baseline=None,
        candidate=None,
        lower=None,
        upper=None,
        limit=limit,
        fail_at=fail_at,
        tally=tally,
        note=test.note or ("" if test.available else "not found in the metrics"),
    )
    if not test.available or g.source is None:
        return empty
    if g.source is Source.LATENCY_TAIL:
        return _tail(g, test, base, cand, empty, alpha_fail, alpha_pass)
    if g.source in RATE_SOURCES:
        cand_rate, base_rate = rate_counts(g, cand), rate_counts(g, base)
        assert cand_rate is not None and base_rate is not None
        return _rate(test, cand_rate, base_rate, empty, alpha_fail, alpha_pass)
    cand_mean, base_mean = mean_counts(g, cand), mean_counts(g, base)
    assert cand_mean is not None and base_mean is not None
    return _mean(g, test, cand_mean, base_mean, empty, alpha_fail, alpha_pass)


def _limits(g: Guardrail, comparison: Comparison) -> tuple[float | None, float | None]:
    """(what the bound must beat to pass, what it must cross to fail), in the bounds' units."""
    if comparison is Comparison.RELATIVE:
        assert g.max_increase is not None
        return 1.0 + g.max_increase, 1.0 + g.rollback_increase
    if g.source is Source.LATENCY_TAIL and g.quantile is not None:
        return 1.0 - g.quantile, 1.0 - g.quantile
    limit = g.upper_limit if comparison is Comparison.UPPER_LIMIT else g.lower_limit
    return limit, limit


def _unit(g: Guardrail) -> str:
    if g.source in (Source.ERRORS, Source.LATENCY_TAIL):
        return "fraction of requests"
    if g.source is Source.LATENCY_MEAN:
        return "ms"
    if g.source is Source.COUNTER:
        return "per request"
    return "ratio" if g.source is Source.RATIO else "mean"


def _share(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _rate(
    test: Assessment,
    cand: RateCounts,
    base: RateCounts,
    empty: Check,
    alpha_fail: float,
    alpha_pass: float,
    *,
    note: str = "",
) -> Check:
    ce, be = float(np.sum(cand.events)), float(np.sum(base.events))
    cn, bn = float(np.sum(cand.exposure)), float(np.sum(base.exposure))
    tally = Tally(empty.tally.intervals, bn, cn, be, ce)
    if test.comparison is Comparison.RELATIVE:
        total = cand.exposure + base.exposure
        share = np.where(total > 0, cand.exposure / np.where(total > 0, total, 1.0), 0.0)
        found = eprocess.split_bounds(
            cand.events, base.events, share, alpha_lower=alpha_fail, alpha_upper=alpha_pass
        )
        note = note or "bounds are on the ratio of rates, candidate / baseline"
    else:
        upper = test.comparison is Comparison.UPPER_LIMIT
        found = eprocess.poisson_bounds(
            cand.events,
            cand.exposure,
            alpha_lower=alpha_fail if upper else alpha_pass,
            alpha_upper=alpha_pass if upper else alpha_fail,
        )
    return replace(
        empty,
        baseline=_share(be, bn),
        candidate=_share(ce, cn),
        lower=found.lower if found.lower is not None else 0.0,
        upper=found.upper,
        tally=tally,
        note=note,
    )


def _mean(
    g: Guardrail,
    test: Assessment,
    cand: MeanCounts,
    base: MeanCounts,
    empty: Check,
    alpha_fail: float,
    alpha_pass: float,
) -> Check:
    cand_mean = _share(float(np.sum(cand.total)), float(np.sum(cand.count)))
    base_mean = _share(float(np.sum(base.total)), float(np.sum(base.count)))
    tally = Tally(empty.tally.intervals, float(np.sum(base.count)), float(np.sum(cand.count)))
    if cand_mean is None or base_mean is None:
        return replace(empty, tally=tally)
    if test.comparison is Comparison.RELATIVE:
        variance = shared_variance(cand.variance, base.variance)
        tau = np.asarray(MEAN_TAU * abs(base_mean))
        est = confseq.mean_difference(
            cand.total,
            cand.count,
            base.total,
            base.count,
            margin=_RATIO_GRID[:, None] - 1.0,
            cand_var=variance,
            base_var=variance,
        )
        worse = confseq.log_evalue_positive(est.value, est.variance, tau)
        within = confseq.log_evalue_positive(-est.value, est.variance, tau)
        lows = _RATIO_GRID[worse >= math.log(1.0 / alpha_fail)]
        highs = _RATIO_GRID[within >= math.log(1.0 / alpha_pass)]
        return replace(
            empty,
            baseline=base_mean,
            candidate=cand_mean,
            lower=float(lows.max()) if lows.size else 0.0,
            upper=float(highs.min()) if highs.size else None,
            tally=tally,
            note=empty.note or "bounds are on the ratio of means, candidate / baseline",
        )
    upper = test.comparison is Comparison.UPPER_LIMIT
    limit = g.upper_limit if upper else g.lower_limit
    assert limit is not None
    level = confseq.mean_level(cand.total, cand.count, limit=limit, var=cand.variance)
    tau = np.asarray(MEAN_TAU * abs(limit) if limit else MEAN_TAU)
    estimate = float(level.value) + limit
    below = confseq.one_sided_radius(level.variance, tau, alpha_fail if upper else alpha_pass)
    above = confseq.one_sided_radius(level.variance, tau, alpha_pass if upper else alpha_fail)
    known = bool(np.isfinite(below))
    return replace(
        empty,
        baseline=base_mean,
        candidate=estimate,
        lower=estimate - float(below) if known else None,
        upper=estimate + float(above) if known else None,
        tally=tally,
    )


def _tail(
    g: Guardrail,
    test: Assessment,
    base: VersionCounts,
    cand: VersionCounts,
    empty: Check,
    alpha_fail: float,
    alpha_pass: float,
) -> Check:
    assert g.quantile is not None
    label = f"p{round(g.quantile * 100)}"
    if test.comparison is Comparison.RELATIVE:
        edge = buckets.calibrate_edge(base.buckets + cand.buckets, g.quantile)
        if not bool(edge.ready):
            need = buckets.CALIBRATION_EXCEEDANCES / (1.0 - g.quantile)
            return replace(
                empty, note=f"choosing the slow-request edge: waiting for {need:.0f} requests"
            )
        index = int(edge.index)
        note = (
            f"bad events = requests {buckets.edge_label(cand.bounds, index)}, the bucket edge "
            f"nearest the {label}; bounds are on the ratio of their shares"
        )
    else:
        limit = g.upper_limit if test.comparison is Comparison.UPPER_LIMIT else g.lower_limit
        assert limit is not None
        at_or_above, at_or_below = buckets.limit_edges(cand.bounds, limit)
        found = at_or_above if at_or_above is not None else at_or_below
        if found is None:
            return empty
        index = found
        upper = test.comparison is Comparison.UPPER_LIMIT
        note = (
            f"{label} {'<=' if upper else '>='} {limit:g} ms means "
            f"{'at most' if upper else 'at least'} {100 * (1 - g.quantile):g} % of requests "
            f"{buckets.edge_label(cand.bounds, index)}"
        )
    at = np.asarray(index)
    return _rate(
        test,
        RateCounts(buckets.exceedances(cand.buckets, at), cand.requests),
        RateCounts(buckets.exceedances(base.buckets, at), base.requests),
        empty,
        alpha_fail,
        alpha_pass,
        note=note,
    )


# ---------------------------------------------------------------------------------------------
# Sentences


def _bound(check: Check, x: float | None) -> str:
    if check.comparison is Comparison.RELATIVE:
        return "n/a" if x is None else f"{x:.2f}x"
    return value(check, x)


def failure(check: Check, *, baseline: str, alpha: float) -> str:
    """Why a FAIL rolls back, in one sentence."""
    what = f"{check.version}'s {check.metric}"
    sure = f"with {confidence(alpha)} confidence"
    if check.comparison is Comparison.RELATIVE:
        return (
            f"{what} is worse than {baseline}'s ({value(check, check.candidate)} against "
            f"{value(check, check.baseline)}): {sure} it is at least "
            f"{_bound(check, check.lower)} the baseline's, above the rollback margin of "
            f"{_bound(check, check.fail_at)}."
        )
    if check.comparison is Comparison.UPPER_LIMIT:
        return (
            f"{what} breaks its upper limit: {value(check, check.candidate)}, {sure} at least "
            f"{value(check, check.lower)}, against a limit of {value(check, check.limit)}."
        )
    return (
        f"{what} breaks its lower limit: {value(check, check.candidate)}, {sure} at most "
        f"{value(check, check.upper)}, against a limit of {value(check, check.limit)}."
    )


def waiting(check: Check) -> str:
    """What a check still needs before the candidate can pass, as a clause."""
    if check.verdict is CheckVerdict.NO_DATA:
        return f"{check.metric} of {check.version} has no data ({check.note or 'not exported'})"
    if check.comparison is Comparison.RELATIVE:
        if check.upper is None:
            return (
                f"{check.metric} of {check.version} needs more data to be shown below "
                f"{_bound(check, check.limit)} the baseline's"
            )
        return (
            f"{check.metric} of {check.version} is at most {_bound(check, check.upper)} the "
            f"baseline's so far, and must be shown below {_bound(check, check.limit)}"
        )
    side = "below" if check.comparison is Comparison.UPPER_LIMIT else "above"
    bound = check.upper if check.comparison is Comparison.UPPER_LIMIT else check.lower
    return (
        f"{check.metric} of {check.version} is {value(check, check.candidate)} "
        f"(bound {value(check, bound)}), and must be shown {side} {value(check, check.limit)}"
    )


def passing(check: Check) -> str:
    """What a PASS showed, as a clause."""
    if check.comparison is Comparison.RELATIVE:
        return (
            f"{check.metric} at most {_bound(check, check.upper)} the baseline's "
            f"(margin {_bound(check, check.limit)})"
        )
    bound = check.upper if check.comparison is Comparison.UPPER_LIMIT else check.lower
    side = "at most" if check.comparison is Comparison.UPPER_LIMIT else "at least"
    return f"{check.metric} {side} {value(check, bound)} (limit {value(check, check.limit)})"
