"""Data gates: which intervals a test may use, and whether this pass may decide at all.

Before any statistic runs the data must be fit to judge: the latest scrape present and fresh,
every active version serving requests, the candidate past its declared warm-up (cold caches make
any new version look slow, and a sensitive test would rightly notice), and the router splitting
traffic as configured (a sample-ratio mismatch means the counts do not measure what we think).
A failed gate means HOLD: missing data is never a failure and never a pass. Only after the
policy's noDataTimeout does "no data" become the policy's noData action.

The interval masks and the sample-ratio e-process are array functions (leading axes allowed) so
that the benchmark applies the very same rules to thousands of simulated rollouts; `check_data`
is the per-pass gate `decide` calls. Turning a gate into an action is left to `decide`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
from scipy.special import gammaln

from gitops_rollout.metrics.evidence import Evidence, VersionSeries

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

SRM_ALPHA = 0.001
"""Alpha of the sample-ratio test: a false alarm only holds the rollout, but a real mismatch
invalidates the comparison, so it is checked strictly and reported loudly."""
SRM_CONCENTRATION = 100.0
"""Dirichlet prior concentration around the configured shares (the usual default)."""
STALE_INTERVALS = 2.0
"""Evidence whose last interval ended more than this many intervals before `now` is stale."""


def usable(series: Sequence[VersionSeries]) -> BoolArray:
    """Intervals every given version scraped, with no negative or non-finite count."""
    if not series:
        return np.zeros(0, dtype=bool)
    ok = np.ones(series[0].intervals, dtype=bool)
    for s in series:
        if s.missing.size:
            ok &= ~s.missing
        for values in (s.requests, s.errors, s.latency_sum_ms):
            ok &= np.isfinite(values) & (values >= 0)
    return ok


def warmup_excluded(
    starts: FloatArray,
    cand_requests: FloatArray,
    ok: BoolArray,
    *,
    warmup_seconds: float,
    warmup_requests: float,
) -> BoolArray:
    """Intervals that hold any of a candidate's warm-up.

    ``starts`` (..., K): interval start times in seconds; ``cand_requests`` (..., C, K): each
    candidate's requests; ``ok`` (..., K): usable intervals. Warm-up time runs from the start
    of the first usable interval in which any candidate served a request; warm-up requests are
    each candidate's first ``warmup_requests`` (the interval holding the last of them is
    excluded too, since it mixes cold and warm requests).
    """
    served = ok[..., None, :] & (cand_requests > 0)
    excluded = np.zeros(ok.shape, dtype=bool)
    if warmup_seconds > 0:
        any_served = np.any(served, axis=-2)
        first = np.argmax(any_served, axis=-1)
        began = np.take_along_axis(starts, first[..., None], axis=-1)
        started = np.any(any_served, axis=-1)[..., None]
        excluded |= started & (starts >= began) & (starts < began + warmup_seconds)
    if warmup_requests > 0:
        counted = np.where(ok[..., None, :], cand_requests, 0.0)
        running = np.cumsum(counted, axis=-1)
        before = running - counted
        excluded |= np.any((before < warmup_requests) & (running > 0), axis=-2)
    return excluded


def srm_log_evalue(
    counts: FloatArray, shares: FloatArray, *, concentration: float = SRM_CONCENTRATION
) -> FloatArray:
    """Log e-value against "requests are split as ``shares``" (Dirichlet-multinomial mixture).

    ``counts`` (..., V): requests per version summed over the intervals tested; ``shares`` (V,)
    positive and summing to 1.
    """
    prior = concentration * np.asarray(shares, dtype=np.float64)
    n = np.sum(counts, axis=-1)
    out: FloatArray = (
        gammaln(concentration)
        - gammaln(concentration + n)
        + np.sum(gammaln(prior + counts) - gammaln(prior) - counts * np.log(shares), axis=-1)
    )
    return out


# ---------------------------------------------------------------------------------------------
# The per-pass gate


@dataclass(frozen=True)
class Gate:
    """Why this pass cannot judge, if it cannot."""

    reason: str
    timed_out: bool = False
    """No usable data for longer than the policy's noDataTimeout."""


def check_data(
    evidence: Evidence,
    versions: Sequence[str],
    *,
    step_started: datetime,
    now: datetime,
    no_data_timeout: timedelta,
) -> Gate | None:
    """None when the latest interval is present, fresh and every version served requests."""
    missing = [v for v in versions if v not in evidence.series]
    if missing:
        return _no_data(
            evidence,
            versions,
            f"no metrics were found for {_names(missing)}",
            step_started=step_started,
            now=now,
            timeout=no_data_timeout,
        )
    series = [evidence.series[v] for v in versions]
    if evidence.intervals == 0 or any(s.intervals != evidence.intervals for s in series):
        return _no_data(
            evidence,
            versions,
            "no complete interval of metrics is available yet",
            step_started=step_started,
            now=now,
            timeout=no_data_timeout,
        )
    last = evidence.intervals - 1
    window = f"{_clock(evidence.boundaries[last])}-{_clock(evidence.boundaries[last + 1])}"
    if now - evidence.boundaries[-1] > evidence.interval * STALE_INTERVALS:
        reason = f"the newest metrics end at {_clock(evidence.boundaries[-1])}, too long ago"
    elif not usable(series)[last]:
        absent = [s.version for s in series if s.missing.size and s.missing[last]]
        reason = f"the scrape for {window} is missing for {_names(absent or list(versions))}"
    else:
        idle = [s.version for s in series if s.requests[last] <= 0]
        if not idle:
            return None
        reason = f"{_names(idle)} served no requests in {window}"
    return _no_data(
        evidence,
        versions,
        reason,
        step_started=step_started,
        now=now,
        timeout=no_data_timeout,
    )


def _no_data(
    evidence: Evidence,
    versions: Sequence[str],
    reason: str,
    *,
    step_started: datetime,
    now: datetime,
    timeout: timedelta,
) -> Gate:
    since = step_started
    present = [evidence.series[v] for v in versions if v in evidence.series]
    if len(present) == len(versions) and evidence.intervals:
        good = usable(present)
        for s in present:
            good &= s.requests > 0
        hits = np.nonzero(good)[0]
        if hits.size:
            since = max(since, evidence.boundaries[int(hits[-1]) + 1])
    timed_out = now - since >= timeout
    if timed_out:
        reason += f"; no usable data since {_clock(since)} ({_minutes(now - since)})"
    return Gate(reason, timed_out)


def current_weights(weights: Mapping[str, int], versions: Sequence[str]) -> dict[str, float]:
    """Configured shares of the versions that should receive traffic (weight > 0)."""
    active = {v: float(weights.get(v, 0)) for v in versions if weights.get(v, 0) > 0}
    total = sum(active.values())
    return {v: w / total for v, w in active.items()} if total > 0 else {}


def _names(versions: Sequence[str]) -> str:
    names = list(versions)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _clock(moment: datetime) -> str:
    return moment.strftime("%H:%M")


def _minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60.0:.0f} min"
