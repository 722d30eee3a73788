"""Decision-quality benchmark: four rollout decision rules on the same simulated metrics.

What: a simulator of the per-interval counters Prometheus would hold for a baseline and a
candidate (Poisson traffic, lognormal latency with a slow path exported through histogram
buckets, binomial errors, and the nuisances of ANALYSIS.md), fed to four rules side by side:
Flagger-style thresholds, Kayenta-style Mann-Whitney judgements, Iter8-style Bayesian posteriors
and ours, which calls the real analysis functions (gates, guardrails, e-processes; the same code
`decide` runs, on thousands of rollouts at once). Plus an A/B/n experiment for the winner rule.

Why: statistics.md section 5; the targets are ANALYSIS.md's. It prints, per cell and rule,
false promotions, false rollbacks and inconclusive runs (with one-sided 95 % upper bounds),
time to decision (median, p90) and exposure, then checks our targets.

Leaves out: the weight schedule is the same for every rule (5, 10, 20, 30, 40, then 50 % each
minute; rules decide when to stop and what to conclude, so they see identical data), Kayenta
points are per 60-s interval, and counter resets are assumed handled by the metrics stage.

Run from the repository root:  python -m bench.decisions [--quick] [--runs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats
from scipy.special import ndtr

from gitops_rollout.analysis import abn, buckets, gates
from gitops_rollout.analysis.decide import rollback_alpha
from gitops_rollout.analysis.guardrails import VersionCounts, evaluate, guardrails_of
from gitops_rollout.policy import Analysis, Objective

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

BUCKETS_MS = (
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
"""The Python client's default histogram buckets, in milliseconds."""
INTERVAL_S = 60.0
HORIZON = 60
"""Intervals simulated; a rule without a verdict by then is inconclusive (T_max = 60 min)."""
SCHEDULE = (5, 10, 20, 30, 40, 50)
"""Candidate weight per interval (percent), then 50 % until the end."""
LAST_STEP = len(SCHEDULE) - 1
MEDIAN_MS, SIGMA, SLOW_MS, SLOW_FRACTION = 50.0, 0.5, 400.0, 0.01
POST_PROMOTION_S = 3600.0
"""A false promotion is priced as one hour of full traffic on the bad candidate."""
CHUNK = 2000


# ---------------------------------------------------------------------------------------------
# Cells


@dataclass(frozen=True)
class Candidate:
    name: str
    errors: float
    """Error-rate multiplier."""
    latency: float
    """Multiplier of every latency quantile."""
    slow: float
    """Share of requests on the slow path (baseline: 1 %)."""
    should_promote: bool


CANDIDATES = {
    c.name: c
    for c in (
        Candidate("good", 0.8, 0.95, SLOW_FRACTION, True),
        Candidate("neutral", 1.0, 1.0, SLOW_FRACTION, True),
        Candidate("margin-err", 1.5, 1.0, SLOW_FRACTION, False),
        Candidate("margin-lat", 1.0, 1.05, SLOW_FRACTION, False),
        Candidate("bad-err", 2.0, 1.0, SLOW_FRACTION, False),
        Candidate("bad-lat", 1.0, 1.2, SLOW_FRACTION, False),
        Candidate("bad-tail", 1.0, 1.0, 0.03, False),
        Candidate("cat-err", 10.0, 1.0, SLOW_FRACTION, False),
        Candidate("cat-lat", 1.0, 2.0, SLOW_FRACTION, False),
    )
}


@dataclass(frozen=True)
class Nuisance:
    name: str
    bursts: bool = False
    """Traffic x LogNormal(0, 0.3^2) per interval and a diurnal +-30 %; errors x exp(N(0, 0.5^2))
    per interval, shared by both versions (overdispersion)."""
    pods: bool = False
    """Baseline on 10 pods, candidate on 1-2; each pod's latency x LogNormal(0, 0.05^2)."""
    warmup: bool = False
    """Candidate latency x (1 + 0.3 e^(-t / 2 min)), errors x 3 in its first minute; ours
    declares a 5-minute warm-up, Kayenta-style begins after 5 minutes."""
    measurement: bool = False
    """10 % of scrapes missing, scrape times jittered by up to 15 s."""


NUISANCES = {
    n.name: n
    for n in (
        Nuisance("N1"),
        Nuisance("N2", bursts=True),
        Nuisance("N3", pods=True),
        Nuisance("N4", warmup=True),
        Nuisance("N5", measurement=True),
    )
}


@dataclass(frozen=True)
class Cell:
    traffic: float
    """Requests per second, both versions together."""
    p0: float
    """Baseline error rate."""
    nuisance: str
    candidate: str
    runs: int

    @property
    def key(self) -> str:
        return f"{self.traffic:g}rps/p0={100 * self.p0:g}%/{self.nuisance}/{self.candidate}"


# ---------------------------------------------------------------------------------------------
# Simulation


@dataclass(frozen=True)
class Sim:
    """One chunk of simulated rollouts; arrays are (runs, intervals[, buckets])."""

    starts: FloatArray
    """(R, K + 1) interval boundaries in seconds since the rollout began."""
    weight: FloatArray
    """(K,) configured candidate share."""
    req: tuple[FloatArray, FloatArray]
    """(baseline, candidate) requests."""
    err: tuple[FloatArray, FloatArray]
    lat_sum: tuple[FloatArray, FloatArray]
    hist: tuple[FloatArray, FloatArray]
    missing: BoolArray
    true_excess: FloatArray
    """(R,) candidate error rate minus baseline's, for exposure."""


def schedule(intervals: int = HORIZON) -> FloatArray:
    w = [SCHEDULE[min(k, LAST_STEP)] for k in range(intervals)]
    return np.asarray(w, dtype=np.float64) / 100.0


def _bucket_moments(
    medians: FloatArray, slow: FloatArray | float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """P(bucket), mean and variance within each bucket for the latency mixture.

    ``medians`` (..., pods): the fast path's median per pod (the slow path scales with it);
    pods share traffic equally. Returns arrays (..., J + 1).
    """
    edges = np.log(np.concatenate(([1e-300], BUCKETS_MS, [np.inf])))
    prob = np.zeros((*medians.shape[:-1], len(BUCKETS_MS) + 1))
    m1 = np.zeros_like(prob)
    m2 = np.zeros_like(prob)
    slow_share = np.asarray(slow, dtype=np.float64)[..., None, None]
    for weight, scale in ((1.0 - slow_share, 1.0), (slow_share, SLOW_MS / MEDIAN_MS)):
        mu = np.log(medians * scale)[..., None]  # (..., pods, 1)
        z = (edges - mu) / SIGMA
        cdf0 = ndtr(z)
        cdf1 = ndtr(z - SIGMA)
        cdf2 = ndtr(z - 2 * SIGMA)
        w = weight / medians.shape[-1]
        prob += np.sum(w * np.diff(cdf0, axis=-1), axis=-2)
        m1 += np.sum(w * np.exp(mu + SIGMA**2 / 2) * np.diff(cdf1, axis=-1), axis=-2)
        m2 += np.sum(w * np.exp(2 * mu + 2 * SIGMA**2) * np.diff(cdf2, axis=-1), axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(prob > 0, m1 / prob, 0.0)
        var = np.where(prob > 0, np.maximum(m2 / prob - mean**2, 0.0), 0.0)
    prob = np.maximum(prob, 0.0)
    prob /= prob.sum(axis=-1, keepdims=True)
    return prob, mean, var


def _latency(
    rng: np.random.Generator, n: FloatArray, moments: tuple[FloatArray, FloatArray, FloatArray]
) -> tuple[FloatArray, FloatArray]:
    prob, mean, var = moments
    hist = rng.multinomial(n.astype(np.int64), prob).astype(np.float64)
    noise = rng.standard_normal(hist.shape)
    total = np.sum(hist * mean + np.sqrt(hist * var) * noise, axis=-1)
    return hist, np.maximum(total, 0.0)


def simulate(cell: Cell, runs: int, rng: np.random.Generator) -> Sim:
    cand = CANDIDATES[cell.candidate]
    nuisance = NUISANCES[cell.nuisance]
    k = HORIZON
    starts = np.tile(np.arange(k + 1, dtype=np.float64) * INTERVAL_S, (runs, 1))
    if nuisance.measurement:
        starts[:, 1:-1] += rng.uniform(-15.0, 15.0, (runs, k - 1))
    length = np.diff(starts, axis=1)
    rate = np.full((runs, k), cell.traffic)
    if nuisance.bursts:
        phase = rng.uniform(0, 2 * math.pi, (runs, 1))
        rate = rate * rng.lognormal(0.0, 0.3, (runs, k))
        rate = rate * (1 + 0.3 * np.sin(2 * math.pi * starts[:, :-1] / 86400.0 + phase))
    total = rng.poisson(rate * length).astype(np.float64)
    weight = schedule(k)
    n_b = rng.binomial(total.astype(np.int64), weight).astype(np.float64)
    n_a = total - n_b

    p_a = np.full((runs, k), cell.p0)
    if nuisance.bursts:
        p_a = p_a * np.exp(rng.normal(0.0, 0.5, (runs, k)))
    p_b = p_a * cand.errors
    if nuisance.warmup:
        p_b = np.where(starts[:, :-1] < INTERVAL_S, 3 * p_b, p_b)
    e_a = rng.binomial(n_a.astype(np.int64), np.minimum(p_a, 1.0)).astype(np.float64)
    e_b = rng.binomial(n_b.astype(np.int64), np.minimum(p_b, 1.0)).astype(np.float64)

    if nuisance.pods:
        pods_a = MEDIAN_MS * rng.lognormal(0.0, 0.05, (runs, 10))
        count_b = rng.integers(1, 3, runs)
        pods_b = MEDIAN_MS * rng.lognormal(0.0, 0.05, (runs, 2))
        pods_b[:, 1] = np.where(count_b == 2, pods_b[:, 1], pods_b[:, 0])
    else:
        pods_a = np.full((runs, 1), MEDIAN_MS)
        pods_b = np.full((runs, 1), MEDIAN_MS)
    pods_b = pods_b * cand.latency
    base_moments = _bucket_moments(pods_a[:, None, :], SLOW_FRACTION)
    if nuisance.warmup:
        middle = 0.5 * (starts[:, :-1] + starts[:, 1:])
        factor = 1 + 0.3 * np.exp(-middle / 120.0)
        cand_moments = _bucket_moments(pods_b[:, None, :] * factor[..., None], cand.slow)
    else:
        cand_moments = _bucket_moments(pods_b[:, None, :], cand.slow)
    hist_a, sum_a = _latency(rng, n_a, base_moments)
    hist_b, sum_b = _latency(rng, n_b, cand_moments)

    missing = np.zeros((runs, k), dtype=bool)
    if nuisance.measurement:
        missing = rng.random((runs, k)) < 0.10
        for arr in (n_a, n_b, e_a, e_b, sum_a, sum_b):
            arr[missing] = 0.0
        hist_a[missing] = 0.0
        hist_b[missing] = 0.0
    return Sim(
        starts,
        weight,
        (n_a, n_b),
        (e_a, e_b),
        (sum_a, sum_b),
        (hist_a, hist_b),
        missing,
        np.full(runs, cell.p0 * (cand.errors - 1.0)),
    )


# ---------------------------------------------------------------------------------------------
# Rules. Each returns (verdict per run: 1 promote, -1 rollback, 0 none by the horizon;
# the pass (interval index) at which it was reached).


@dataclass(frozen=True)
class Outcome:
    verdict: IntArray
    at: IntArray


def _first(promote: BoolArray, rollback: BoolArray) -> Outcome:
    """The first pass at which either fires (rollback wins a tie)."""
    any_ = promote | rollback
    hit = np.any(any_, axis=1)
    at = np.where(hit, np.argmax(any_, axis=1), any_.shape[1] - 1)
    rows = np.arange(any_.shape[0])
    verdict = np.where(hit, np.where(rollback[rows, at], -1, 1), 0)
    return Outcome(verdict.astype(np.int64), at.astype(np.int64))


def histogram_quantile(hist: FloatArray, q: float) -> FloatArray:
    """Prometheus' histogram_quantile on non-cumulative buckets (last one +Inf)."""
    upper = np.asarray(BUCKETS_MS)
    lower = np.concatenate(([0.0], upper[:-1]))
    cumulative = np.cumsum(hist, axis=-1)
    total = cumulative[..., -1]
    rank = q * total
    idx = np.argmax(cumulative >= rank[..., None], axis=-1)
    finite = idx < len(BUCKETS_MS)
    safe = np.minimum(idx, len(BUCKETS_MS) - 1)
    below = np.where(
        idx > 0,
        np.take_along_axis(cumulative, np.maximum(idx - 1, 0)[..., None], axis=-1)[..., 0],
        0.0,
    )
    inside = np.take_along_axis(hist, idx[..., None], axis=-1)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(inside > 0, (rank - below) / inside, 0.0)
    value = lower[safe] + (upper[safe] - lower[safe]) * frac
    out: FloatArray = np.where(finite, value, upper[-1])
    return np.where(total > 0, out, np.nan)


def flagger(sim: Sim, cell: Cell) -> Outcome:
    """Every interval: canary success rate >= 99 % and p99 <= 500 ms, else a failed check (no
    data also fails); 5 failed checks roll back, 5 passed checks (10 -> 50 % by 10) promote."""
    n_b, e_b = sim.req[1], sim.err[1]
    p99 = histogram_quantile(sim.hist[1], 0.99)
    with np.errstate(divide="ignore", invalid="ignore"):
        success = 1.0 - e_b / n_b
    ok = ~sim.missing & (n_b > 0) & (success >= 0.99) & (p99 <= 500.0)
    passes = np.cumsum(ok, axis=1)
    fails = np.cumsum(~ok, axis=1)
    return _first(passes >= 5, fails >= 5)


def _hl_interval(
    x: FloatArray, y: FloatArray, z: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Hodges-Lehmann estimate of the shift x - y and its Mann-Whitney confidence interval,
    per row, from the order statistics of the pairwise differences (NaN points ignored)."""
    d = (x[:, :, None] - y[:, None, :]).reshape(x.shape[0], -1)
    m = np.sum(~np.isnan(x), axis=1)
    n = np.sum(~np.isnan(y), axis=1)
    count = m * n
    ordered = np.sort(d, axis=1)
    c = np.floor(count / 2.0 - z * np.sqrt(m * n * (m + n + 1) / 12.0)).astype(np.int64)
    defined = (c >= 1) & (count > 0)
    lo_idx = np.clip(c - 1, 0, d.shape[1] - 1)
    hi_idx = np.clip(count - c, 0, d.shape[1] - 1)
    rows = np.arange(d.shape[0])
    low = np.where(defined, ordered[rows, lo_idx], -np.inf)
    high = np.where(defined, ordered[rows, hi_idx], np.inf)
    mid_lo = ordered[rows, np.clip((count - 1) // 2, 0, d.shape[1] - 1)]
    mid_hi = ordered[rows, np.clip(count // 2, 0, d.shape[1] - 1)]
    estimate = np.where(count > 0, 0.5 * (mid_lo + mid_hi), np.nan)
    return estimate, low, high


def _mean_of_points(points: FloatArray) -> FloatArray:
    present = ~np.isnan(points)
    with np.errstate(divide="ignore", invalid="ignore"):
        out: FloatArray = np.where(present, points, 0.0).sum(axis=1) / present.sum(axis=1)
    return out


def kayenta(sim: Sim, cell: Cell) -> Outcome:
    """Ten judgements, one per interval, on a growing window of per-minute points of error rate
    and mean latency; Mann-Whitney 98 % interval with tolerance 0.25 and meanRatio >= 1.0 ->
    High; an interim score <= 75 rolls back, a final score >= 95 promotes."""
    runs = sim.req[0].shape[0]
    begin = 5 if NUISANCES[cell.nuisance].warmup else 0
    z = float(stats.norm.ppf(0.99))
    with np.errstate(divide="ignore", invalid="ignore"):
        points = []
        for arm in (0, 1):
            n = sim.req[arm]
            valid = ~sim.missing & (n > 0)
            points.append(
                (
                    np.where(valid, sim.err[arm] / n, np.nan),
                    np.where(valid, sim.lat_sum[arm] / n, np.nan),
                )
            )
    promote = np.zeros((runs, HORIZON), dtype=bool)
    rollback = np.zeros((runs, HORIZON), dtype=bool)
    for j in range(10):
        k = begin + j
        window = slice(begin, k + 1)
        high = np.zeros(runs, dtype=bool)
        for metric in (0, 1):
            x = points[1][metric][:, window]
            y = points[0][metric][:, window]
            estimate, low, _ = _hl_interval(x, y, z)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = _mean_of_points(x) / _mean_of_points(y)
            effect_ok = np.isnan(ratio) | (ratio >= 1.0)
            high |= (low > 0.25 * np.abs(estimate)) & effect_ok
        if j < 9:
            rollback[:, k] = high
        else:
            rollback[:, k] = high
            promote[:, k] = ~high
    return _first(promote, rollback)


def iter8(sim: Sim, cell: Cell, rng: np.random.Generator) -> Outcome:
    """15 iterations of posterior checks: Beta(0.1 + e, 0.1 + n - e) error rates and normal mean
    latencies; P(win) = P(err_B <= 1.5 err_A) P(lat_B <= 1.05 lat_A); promote when > 0.99,
    roll back when the iterations end without a winner."""
    runs = sim.req[0].shape[0]
    draws = 256
    iterations = 15
    usable = ~sim.missing
    n = [np.cumsum(np.where(usable, r, 0.0), axis=1) for r in sim.req]
    e = [np.cumsum(np.where(usable, x, 0.0), axis=1) for x in sim.err]
    s = [np.cumsum(np.where(usable, x, 0.0), axis=1) for x in sim.lat_sum]
    var = []
    for arm in (0, 1):
        per = buckets.interval_variance(sim.hist[arm], BUCKETS_MS, sim.lat_sum[arm], sim.req[arm])
        var.append(np.cumsum(np.where(usable, np.nan_to_num(per) * sim.req[arm], 0.0), axis=1))
    promote = np.zeros((runs, HORIZON), dtype=bool)
    rollback = np.zeros((runs, HORIZON), dtype=bool)
    for k in range(iterations):
        pa = rng.beta(
            0.1 + e[0][:, k, None], 0.1 + n[0][:, k, None] - e[0][:, k, None], (runs, draws)
        )
        pb = rng.beta(
            0.1 + e[1][:, k, None], 0.1 + n[1][:, k, None] - e[1][:, k, None], (runs, draws)
        )
        p_err = np.mean(pb <= 1.5 * pa, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_a, mean_b = s[0][:, k] / n[0][:, k], s[1][:, k] / n[1][:, k]
            sd = np.sqrt(
                1.05**2 * (var[0][:, k] / n[0][:, k]) / n[0][:, k]
                + (var[1][:, k] / n[1][:, k]) / n[1][:, k]
            )
            p_lat = ndtr((1.05 * mean_a - mean_b) / sd)
        p_win = np.nan_to_num(p_err * p_lat)
        promote[:, k] = p_win > 0.99
    rollback[:, iterations - 1] = True
    return _first(promote, rollback)


def our_policy(cell: Cell) -> Analysis:
    """The policy our rule runs with: relative guardrails on error rate, mean and p99 latency
    with their default margins, alpha 0.01, a 5-minute warm-up when the cell has one."""
    return Analysis(
        objectives=(
            Objective(metric="error-rate"),
            Objective(metric="mean-latency"),
            Objective(metric="p99-latency"),
        ),
        warmup=timedelta(minutes=5) if NUISANCES[cell.nuisance].warmup else timedelta(0),
        alpha=0.01,
    )


def ours(sim: Sim, cell: Cell) -> Outcome:
    """The decision order of `decide`, applied to every pass of every run at once with the
    analysis package's own gates and tests (tests/analysis/test_bench_quick.py checks that it
    agrees with `decide` called pass by pass)."""
    analysis = our_policy(cell)
    usable = ~sim.missing
    n_a, n_b = sim.req
    excluded = gates.warmup_excluded(
        sim.starts[:, :-1],
        n_b[:, None, :],
        usable,
        warmup_seconds=analysis.warmup.total_seconds(),
        warmup_requests=float(analysis.warmup_requests),
    )
    include = usable & ~excluded

    def counts(arm: int) -> VersionCounts:
        keep = include
        return VersionCounts(
            requests=np.where(keep, sim.req[arm], 0.0),
            errors=np.where(keep, sim.err[arm], 0.0),
            latency_sum=np.where(keep, sim.lat_sum[arm], 0.0),
            buckets=np.where(keep[..., None], sim.hist[arm], 0.0),
            bounds=BUCKETS_MS,
        )

    base, cand = counts(0), counts(1)
    alpha_fail = rollback_alpha(analysis, 1)
    fail = np.zeros(n_a.shape, dtype=bool)
    proven = np.ones(n_a.shape, dtype=bool)
    for g in guardrails_of(analysis):
        for test in evaluate(g, base, cand, path=True):
            fail |= test.log_e_fail >= math.log(1.0 / alpha_fail)
            proven &= test.available & (test.log_e_pass >= math.log(1.0 / analysis.alpha))

    fresh = usable & (n_a > 0) & (n_b > 0)
    warmed = np.cumsum(include & (n_a > 0), axis=1) > 0
    srm_fail = _srm_fails(sim)
    judged = fresh & warmed & ~srm_fail
    last = np.arange(n_a.shape[1]) >= LAST_STEP
    return _first(judged & ~fail & proven & last, judged & fail)


def _srm_fails(sim: Sim) -> BoolArray:
    """The sample-ratio gate per pass, over the current step's intervals (as `decide`)."""
    usable = ~sim.missing
    counts = np.stack([np.where(usable, r, 0.0) for r in sim.req], axis=-1)  # (R, K, 2)
    running = np.cumsum(counts, axis=1)
    step = np.minimum(np.arange(counts.shape[1]), LAST_STEP)
    before = np.where((step > 0)[None, :, None], running[:, np.maximum(step - 1, 0), :], 0.0)
    in_step = running - before
    # Each step before the last lasts one interval: its counts are that interval's.
    in_step = np.where((step < LAST_STEP)[None, :, None], counts, in_step)
    shares = np.stack([1.0 - sim.weight, sim.weight], axis=-1)  # (K, 2)
    log_e = gates.srm_log_evalue(in_step, shares)
    out: BoolArray = log_e >= math.log(1.0 / gates.SRM_ALPHA)
    return out


RULES: dict[str, Callable[[Sim, Cell, np.random.Generator], Outcome]] = {
    "flagger": lambda sim, cell, rng: flagger(sim, cell),
    "kayenta": lambda sim, cell, rng: kayenta(sim, cell),
    "iter8": iter8,
    "ours": lambda sim, cell, rng: ours(sim, cell),
}


# ---------------------------------------------------------------------------------------------
# Running cells


def cell_seed(seed: int, key: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, zlib.crc32(key.encode())])


@dataclass
class Tallies:
    runs: int = 0
    promote: int = 0
    rollback: int = 0
    inconclusive: int = 0
    minutes: list[float] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)
    exposure: float = 0.0
    """Sum over runs of candidate requests served (+ an hour at full traffic if promoted)."""


def run_cell(cell: Cell, seed: int) -> dict[str, Any]:
    tallies = {name: Tallies() for name in RULES}
    sequence = cell_seed(seed, cell.key)
    done = 0
    for child in sequence.spawn((cell.runs + CHUNK - 1) // CHUNK):
        size = min(CHUNK, cell.runs - done)
        done += size
        rng = np.random.default_rng(child)
        sim = simulate(cell, size, rng)
        served = np.cumsum(sim.req[1], axis=1)
        for name, rule in RULES.items():
            outcome = rule(sim, cell, np.random.default_rng(child.spawn(1)[0]))
            t = tallies[name]
            rows = np.arange(size)
            t.runs += size
            t.promote += int(np.sum(outcome.verdict == 1))
            t.rollback += int(np.sum(outcome.verdict == -1))
            t.inconclusive += int(np.sum(outcome.verdict == 0))
            t.minutes.extend((sim.starts[rows, outcome.at + 1] / 60.0).tolist())
            t.passes.extend(outcome.at.tolist())
            exposure = served[rows, outcome.at] + np.where(
                outcome.verdict == 1, cell.traffic * POST_PROMOTION_S, 0.0
            )
            t.exposure += float(np.sum(exposure))
    return {
        "cell": cell.__dict__ | {"key": cell.key},
        "rules": {name: summarize(cell, t) for name, t in tallies.items()},
    }


def upper_bound(hits: int, runs: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate."""
    if hits >= runs:
        return 1.0
    return float(stats.beta.ppf(confidence, hits + 1, runs - hits))


def summarize(cell: Cell, t: Tallies) -> dict[str, Any]:
    good = CANDIDATES[cell.candidate].should_promote
    # A run that ends inconclusive falls back to the default (rollback) and is counted apart.
    false_promote = None if good else t.promote
    false_rollback = t.rollback if good else None
    minutes = np.asarray(t.minutes)
    passes = np.asarray(t.passes)
    return {
        "runs": t.runs,
        "promote": t.promote,
        "rollback": t.rollback,
        "inconclusive": t.inconclusive,
        "false_promotion": None if false_promote is None else false_promote / t.runs,
        "false_promotion_ub": None if false_promote is None else upper_bound(false_promote, t.runs),
        "false_rollback": None if false_rollback is None else false_rollback / t.runs,
        "false_rollback_ub": None
        if false_rollback is None
        else upper_bound(false_rollback, t.runs),
        "inconclusive_rate": t.inconclusive / t.runs,
        "inconclusive_ub": upper_bound(t.inconclusive, t.runs),
        "minutes_median": float(np.median(minutes)),
        "minutes_p90": float(np.percentile(minutes, 90)),
        "pass_median": float(np.median(passes)),
        "pass_p90": float(np.percentile(passes, 90)),
        "exposure": None if good else t.exposure / t.runs,
    }


# ---------------------------------------------------------------------------------------------
# A/B/n: correct winner when the best arm leads by 5 %


ABN_LIFTS = (0.0, 0.0, 0.05, -0.05)
"""Relative click-through lifts of the arms (arm 0 is the baseline; arm 2 is best)."""
ABN_CTR = 0.05
ABN_TRAFFIC = 1000.0


def run_abn(runs: int, seed: int, alpha: float = 0.01, floor: float = 0.10) -> dict[str, Any]:
    """Our winner rule with adaptive weights (pairwise CSs, elimination, P(best) above a floor),
    one reconcile per minute for up to an hour."""
    ctr = ABN_CTR * (1.0 + np.asarray(ABN_LIFTS))
    best = int(np.argmax(ctr))
    arms = len(ctr)
    correct = wrong = 0
    minutes: list[float] = []
    inferior = 0.0
    served_total = 0.0
    sequence = cell_seed(seed, "abn")
    done = 0
    for child in sequence.spawn((runs + CHUNK - 1) // CHUNK):
        size = min(CHUNK, runs - done)
        done += size
        rng = np.random.default_rng(child)
        weights = np.full((size, arms), 100 // arms, dtype=np.int64)
        num = np.zeros((size, arms, HORIZON))
        den = np.zeros((size, arms, HORIZON))
        decided = np.full(size, -1)
        at = np.full(size, HORIZON - 1)
        for k in range(HORIZON):
            total = rng.poisson(ABN_TRAFFIC * INTERVAL_S, size)
            active = decided < 0
            split = rng.multinomial(total, weights / 100.0)
            den[:, :, k] = np.where(active[:, None], split, 0.0)
            num[:, :, k] = rng.binomial(den[:, :, k].astype(np.int64), ctr)
            pw = abn.pairwise(
                num[:, :, : k + 1], den[:, :, : k + 1], alpha=alpha, spread=abn.Spread.BERNOULLI
            )
            better = pw.better()
            win = abn.winner(better, np.ones((size, arms), dtype=bool))
            alive = abn.survivors(better, np.zeros((size, arms), dtype=bool))
            p_best = abn.probability_best(pw.means, pw.std_errors, alive)
            weights = np.where(active[:, None], abn.allocate(p_best, alive, floor=floor), weights)
            newly = active & (win >= 0)
            decided = np.where(newly, win, decided)
            at = np.where(newly, k, at)
        correct += int(np.sum(decided == best))
        wrong += int(np.sum((decided >= 0) & (decided != best)))
        minutes.extend(((at + 1) * INTERVAL_S / 60.0).tolist())
        served = den.sum(axis=2)
        inferior += float(np.sum(served) - np.sum(served[:, best]))
        served_total += float(np.sum(served))
    return {
        "runs": runs,
        "correct": correct / runs,
        "correct_lb": 1.0 - upper_bound(runs - correct, runs),
        "wrong": wrong / runs,
        "wrong_ub": upper_bound(wrong, runs),
        "none": (runs - correct - wrong) / runs,
        "minutes_median": float(np.median(minutes)),
        "minutes_p90": float(np.percentile(minutes, 90)),
        "inferior_share": inferior / served_total,
        "uniform_inferior_share": (arms - 1) / arms,
    }


# ---------------------------------------------------------------------------------------------
# Configurations, targets and the table


def cells(*, quick: bool, runs: int, nuisance_runs: int, traffic: Sequence[float]) -> list[Cell]:
    """Quick: the reference traffic only. Full: every candidate at every traffic level (N1),
    the error candidates at the other baseline error rates, and the nuisances N2-N5."""
    if quick:
        return [
            Cell(100.0, 0.005, "N1", name, runs)
            for name in (
                "good",
                "neutral",
                "margin-err",
                "margin-lat",
                "bad-err",
                "cat-err",
                "cat-lat",
            )
        ]
    out = [Cell(lam, 0.005, "N1", name, runs) for lam in traffic for name in CANDIDATES]
    if 100.0 in traffic:
        for p0 in (0.001, 0.01):
            for name in ("neutral", "margin-err", "bad-err", "cat-err"):
                out.append(Cell(100.0, p0, "N1", name, runs))
        for nuisance in ("N2", "N3", "N4", "N5"):
            for name in (
                "good",
                "neutral",
                "margin-err",
                "margin-lat",
                "bad-err",
                "cat-err",
                "cat-lat",
            ):
                out.append(Cell(100.0, 0.005, nuisance, name, nuisance_runs))
    return out


def targets(results: list[dict[str, Any]], abn_result: dict[str, Any]) -> list[dict[str, Any]]:
    """ANALYSIS.md's targets, checked on our rule."""
    out: list[dict[str, Any]] = []

    def add(name: str, ok: bool, detail: str) -> None:
        out.append({"target": name, "ok": bool(ok), "detail": detail})

    ours_by = {r["cell"]["key"]: r["rules"]["ours"] for r in results}
    cell_of = {r["cell"]["key"]: r["cell"] for r in results}
    # N3 is reported apart: with one or two candidate pods whose latency differs by +-5 %
    # from pod to pod, the candidate's realised latency is not the version's, and a rule that
    # judges what the candidate serves cannot tell the two apart (see the report).
    for suffix, pods in (("", False), (" [N3 pods]", True)):
        chosen = {k: c for k, c in cell_of.items() if (c["nuisance"] == "N3") is pods}

        def worst(kinds: tuple[str, ...], field: str, among: dict[str, Any] = chosen) -> str | None:
            keys = [k for k, c in among.items() if c["candidate"].startswith(kinds)]
            return max(keys, key=lambda k: ours_by[k][field]) if keys else None

        key = worst(("margin", "bad"), "false_promotion_ub")
        if key:
            ub = ours_by[key]["false_promotion_ub"]
            add(
                f"false promotion <= 1 % at or beyond the margin{suffix}",
                ub <= 0.01,
                f"worst upper bound {100 * ub:.2f} % ({key})",
            )
        key = worst(("cat",), "false_promotion_ub")
        if key:
            r = ours_by[key]
            add(
                f"false promotion <= 0.1 % for catastrophic candidates{suffix}",
                r["false_promotion_ub"] <= 0.001 or r["promote"] == 0,
                f"worst upper bound {100 * r['false_promotion_ub']:.3f} % "
                f"({r['promote']}/{r['runs']}, {key})",
            )
        key = worst(("good", "neutral"), "false_rollback_ub")
        if key:
            ub = ours_by[key]["false_rollback_ub"]
            add(
                f"false rollback <= 1 % for neutral and good{suffix}",
                ub <= 0.01,
                f"worst upper bound {100 * ub:.2f} % ({key})",
            )
    ref = "100rps/p0=0.5%/N1/"
    if ref + "cat-err" in ours_by:
        for name in ("cat-err", "cat-lat"):
            r = ours_by[ref + name]
            add(
                f"{name} rolled back at the first pass (about 300 candidate requests)",
                r["pass_median"] == 0 and r["pass_p90"] <= 1 and r["rollback"] == r["runs"],
                f"pass median {r['pass_median']:.0f}, p90 {r['pass_p90']:.0f} (0 = first); "
                f"rolled back {r['rollback']}/{r['runs']}",
            )
    if ref + "bad-err" in ours_by:
        r = ours_by[ref + "bad-err"]
        add(
            "2x errors rolled back in median <= 5 min, p90 <= 8 min (100 rps, 0.5 %)",
            r["minutes_median"] <= 5 and r["minutes_p90"] <= 8,
            f"median {r['minutes_median']:.1f} min, p90 {r['minutes_p90']:.1f} min",
        )
        flag = next(x["rules"]["flagger"] for x in results if x["cell"]["key"] == ref + "bad-err")
        if flag["exposure"] and r["exposure"]:
            add(
                "exposure to a 2x-error candidate >= 10x lower than Flagger-style",
                flag["exposure"] >= 10 * r["exposure"],
                f"ours {r['exposure'] / 1000:.0f}k vs flagger {flag['exposure'] / 1000:.0f}k "
                "candidate requests",
            )
    if ref + "neutral" in ours_by:
        r = ours_by[ref + "neutral"]
        reference = fixed_horizon_minutes(traffic=100.0, p0=0.005)
        add(
            "neutral promoted in median no later than a fixed-horizon test (same schedule)",
            r["minutes_median"] <= reference,
            f"median {r['minutes_median']:.1f} min vs fixed-horizon {reference:.1f} min "
            "(one-sided alpha 1 %, power 90 %, errors within 1.5x)",
        )
        share = max(
            ours_by[ref + n]["inconclusive_rate"] for n in ("neutral", "good") if ref + n in ours_by
        )
        add(
            "neutral and good inconclusive <= 5 % at 100 rps",
            share <= 0.05,
            f"worst {100 * share:.2f} %",
        )
    add(
        "A/B/n correct winner >= 95 % at a 5 % lead",
        abn_result["correct"] >= 0.95,
        f"{100 * abn_result['correct']:.1f} % correct, {100 * abn_result['wrong']:.2f} % wrong",
    )
    return out


def fixed_horizon_minutes(*, traffic: float, p0: float, margin: float = 1.5) -> float:
    """When a fixed-sample test of "error ratio < margin" (one-sided alpha 1 %, power 90 % at
    ratio 1) could be run on the benchmark's schedule: the expected information
    sum(events * pi (1 - pi)) must reach (z_alpha + z_beta)^2 / log(margin)^2."""
    need = float(stats.norm.ppf(0.99) + stats.norm.ppf(0.9)) ** 2 / math.log(margin) ** 2
    per_minute = traffic * INTERVAL_S * p0
    information = 0.0
    for k, w in enumerate(schedule(HORIZON * 4)):
        gain = per_minute * w * (1 - w)
        if information + gain >= need:
            return float(k + (need - information) / gain)
        information += gain
    return math.inf


def _pct(x: float | None, ub: float | None = None) -> str:
    if x is None:
        return "-"
    text = f"{100 * x:.2f}"
    return f"{text} (<{100 * ub:.2f})" if ub is not None else text


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'cell':<34} {'rule':<8} {'false promote % (ub95)':>23} "
        f"{'false rollback % (ub95)':>24} {'inconcl % (ub95)':>17} {'t med':>6} "
        f"{'t p90':>6} {'exposure':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        for name, s in r["rules"].items():
            exposure = "-" if s["exposure"] is None else f"{s['exposure'] / 1000:.1f}k"
            lines.append(
                f"{r['cell']['key']:<34} {name:<8} "
                f"{_pct(s['false_promotion'], s['false_promotion_ub']):>23} "
                f"{_pct(s['false_rollback'], s['false_rollback_ub']):>24} "
                f"{_pct(s['inconclusive_rate'], s['inconclusive_ub']):>17} "
                f"{s['minutes_median']:>6.1f} {s['minutes_p90']:>6.1f} {exposure:>9}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a < 60 s subset (100 rps, N1)")
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="rollouts per safety cell (default 10000; quick 3000)",
    )
    parser.add_argument(
        "--nuisance-runs",
        type=int,
        default=None,
        help="rollouts per nuisance (N2-N5) cell (default 5000)",
    )
    parser.add_argument(
        "--abn-runs", type=int, default=None, help="A/B/n rollouts (default 5000; quick 500)"
    )
    parser.add_argument(
        "--traffic",
        default="10,100,1000",
        help="requests per second, comma-separated (full run only)",
    )
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--workers", type=int, default=2, help="processes (cells run in parallel)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write results here")
    args = parser.parse_args(argv)

    runs = args.runs or (3000 if args.quick else 10000)
    nuisance_runs = args.nuisance_runs or 5000
    abn_runs = args.abn_runs or (500 if args.quick else 5000)
    traffic = [float(x) for x in args.traffic.split(",") if x]
    todo = cells(quick=args.quick, runs=runs, nuisance_runs=nuisance_runs, traffic=traffic)
    began = time.monotonic()
    print(
        f"# decisions benchmark: {len(todo)} cells, seed {args.seed}, "
        f"{'quick' if args.quick else 'full'} configuration, horizon {HORIZON} min",
        flush=True,
    )
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = [pool.submit(run_cell, cell, args.seed) for cell in todo]
        abn_future = pool.submit(run_abn, abn_runs, args.seed)
        results = [f.result() for f in futures]
        abn_result = abn_future.result()
    print(table(results))
    print()
    print(
        f"A/B/n ({abn_result['runs']} runs, arms {ABN_LIFTS} over CTR {ABN_CTR}, "
        f"{ABN_TRAFFIC:g} rps): correct winner {100 * abn_result['correct']:.1f} % "
        f"(lower 95 % bound {100 * abn_result['correct_lb']:.1f} %), wrong "
        f"{100 * abn_result['wrong']:.2f} % (<{100 * abn_result['wrong_ub']:.2f}), none "
        f"{100 * abn_result['none']:.1f} %, time median {abn_result['minutes_median']:.0f} "
        f"min p90 {abn_result['minutes_p90']:.0f} min, traffic to inferior arms "
        f"{100 * abn_result['inferior_share']:.1f} % (uniform "
        f"{100 * abn_result['uniform_inferior_share']:.0f} %)"
    )
    print()
    checked = targets(results, abn_result)
    for t in checked:
        print(f"[{'ok' if t['ok'] else 'MISSED'}] {t['target']}: {t['detail']}")
    elapsed = time.monotonic() - began
    print(f"\n# {elapsed:.0f} s")
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "cells": results,
                    "abn": abn_result,
                    "targets": checked,
                    "seconds": elapsed,
                    "seed": args.seed,
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
