"""Evidence from raw counters: per-interval increments, counter resets, missing scrapes.

Stateless: every pass reads the raw counters again at every interval boundary since the step
started (plus its warm-up), so a restarted reconciler, or a scrape that arrived late, yields
the same numbers as if nothing had happened. Boundaries lie on multiples of the interval since
the Unix epoch, so rollouts that share an interval share instants and one query serves a whole
namespace; counting starts at the first boundary after ``since``.

Per raw counter (one process, one status code, one bucket), over each interval:

- present at both ends: the difference, or the end value if it fell (the process restarted
  and counts from zero again; what it counted before restarting is lost, and the interval is
  flagged `VersionSeries.reset`);
- first seen at the end, never before (a new process, a first 5xx): the end value;
- gone for good (a pod scaled away): nothing more;
- absent at an end but present before and after (a scrape gap): the interval cannot be
  attributed, so it is missing.

A version's interval is missing (`VersionSeries.missing`, all its counts zero) when any of its
built-in counters has a gap there, or when none of them was read at either end: no data is
never zero traffic, so it can be neither a pass nor a failure. Policy metrics (`custom`) follow
the same rules, but an absent policy counter reads as zero events while the version is
observed, NaN across its own gaps, and NaN throughout when no version has it at all.
What the numbers mean is the analysis stage's business.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from gitops_rollout.errors import MetricsError
from gitops_rollout.metrics.base import (
    CounterKind,
    Grid,
    MetricsProvider,
    RawSeries,
    Reading,
    RolloutRef,
    Values,
    Window,
    utc,
)
from gitops_rollout.metrics.evidence import Evidence, VersionSeries
from gitops_rollout.metrics.queries import FEEDBACK
from gitops_rollout.policy import MetricKind, TargetKind

log = logging.getLogger(__name__)

DEFAULT_SETTLE = timedelta(seconds=10)
"""A boundary closer to ``now`` than this waits for the next pass: the last scrapes before it
may not have been written yet."""

Flags = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Collected:
    """Evidence for each rollout, by `RolloutRef.key`, or the error that prevented it."""

    evidence: dict[str, Evidence]
    errors: dict[str, MetricsError]

    def __getitem__(self, key: str) -> Evidence:
        """The rollout's evidence; raises its MetricsError if it has none."""
        if key in self.errors:
            raise self.errors[key]
        return self.evidence[key]


def collect(
    provider: MetricsProvider,
    rollouts: Sequence[RolloutRef],
    *,
    now: datetime,
    settle: timedelta = DEFAULT_SETTLE,
) -> Collected:
    """Evidence for every rollout at `now`, reading each backend once for all of them."""
    windows = [window_for(r, now=now, settle=settle) for r in rollouts]
    keys = [w.rollout.key for w in windows]
    if len(set(keys)) != len(keys):
        raise ValueError(f"rollout keys must be unique: {sorted(keys)}")
    readable = [w for w in windows if w.grid.count >= 3]
    answers: Mapping[str, Reading | MetricsError] = {}
    if readable:
        try:
            answers = provider.read(readable)
        except MetricsError as failure:
            # A backend that fails as a whole fails every rollout it was asked about.
            answers = {w.rollout.key: failure for w in readable}
    evidence: dict[str, Evidence] = {}
    errors: dict[str, MetricsError] = {}
    for w in windows:
        key = w.rollout.key
        if w.grid.count < 3:
            evidence[key] = evidence_of(w, Reading((), ()))
            continue
        answer = answers.get(key)
        if answer is None:
            errors[key] = MetricsError(f"{key}: {provider.describe()} returned no reading")
        elif isinstance(answer, MetricsError):
            errors[key] = answer
        else:
            evidence[key] = evidence_of(w, answer)
    # One line per distinct failure: an outage would otherwise repeat itself per rollout.
    by_message: dict[str, list[str]] = {}
    for key, err in errors.items():
        by_message.setdefault(str(err), []).append(key)
    for message, failed in by_message.items():
        log.warning("no metrics for %s: %s", ", ".join(failed), message)
    return Collected(evidence, errors)


def window_for(rollout: RolloutRef, *, now: datetime, settle: timedelta = DEFAULT_SETTLE) -> Window:
    """The instants `rollout`'s counters are read at: one interval before the first boundary,
    then every boundary from the first at or after ``since`` to the last before ``now - settle``.
    """
    step = round(rollout.interval.total_seconds() * 1000)
    first = -(-_ms(rollout.since) // step) * step
    last = (_ms(utc(now) - settle) // step) * step
    boundaries = (last - first) // step + 1 if last >= first else 0
    start = datetime.fromtimestamp((first - step) / 1000, tz=UTC)
    count = boundaries + 1 if boundaries else 0
    return Window(rollout, Grid(start, timedelta(milliseconds=step), count))


def evidence_of(window: Window, reading: Reading) -> Evidence:
    """Per-interval increments of `reading`'s raw counters (pure; see the module docstring)."""
    rollout = window.rollout
    boundaries = window.grid.instants[1:]
    k = max(0, len(boundaries) - 1)
    by_version: dict[str, list[RawSeries]] = {v.version: [] for v in rollout.versions}
    for raw in reading.series:
        if raw.version in by_version:
            by_version[raw.version].append(raw)
    custom_names = _custom_names(rollout, reading)
    known = {r.counter.arg for r in reading.series if r.counter.kind is CounterKind.CUSTOM}
    if rollout.target is TargetKind.SELDON:
        # The executor that counts predictions also counts feedback; before the first
        # feedback its series simply does not exist yet.
        known.add(FEEDBACK)
    series = {
        version: _version_series(version, raws, k, custom_names, known)
        for version, raws in by_version.items()
    }
    return Evidence(
        boundaries=boundaries,
        interval=rollout.interval,
        series=series,
        queries=reading.queries,
    )


def increments(values: Values) -> tuple[Values, Flags]:
    """Increments of one raw counter between consecutive instants after the first, and where
    they cannot be known (a gap). ``values[0]`` is the look-back instant before counting."""
    present = ~np.isnan(values)
    n = len(values)
    k = max(0, n - 2)
    inc = np.zeros(k, dtype=np.float64)
    gap = np.zeros(k, dtype=np.bool_)
    seen_before = np.concatenate(([False], np.logical_or.accumulate(present)[:-1]))
    seen_after = np.concatenate((np.logical_or.accumulate(present[::-1])[::-1][1:], [False]))
    for i in range(k):
        a, b = i + 1, i + 2
        if present[a] and present[b]:
            inc[i] = values[b] - values[a] if values[b] >= values[a] else values[b]
        elif present[b]:
            if seen_before[a]:
                gap[i] = True
            else:
                inc[i] = values[b]
        elif present[a]:
            gap[i] = bool(seen_after[b])
        else:
            gap[i] = bool(seen_before[a] and seen_after[b])
    return inc, gap


def fell(values: Values) -> Flags:
    """Intervals (after the look-back instant) in which a raw counter fell: its process
    restarted, and what it counted since the interval began is lost."""
    start, end = values[1:-1], values[2:]
    both = ~np.isnan(start) & ~np.isnan(end)
    out: Flags = both & (np.nan_to_num(end) < np.nan_to_num(start))
    return out


def _custom_names(rollout: RolloutRef, reading: Reading) -> list[str]:
    names: list[str] = []
    for metric in rollout.metrics:
        names.append(metric.name)
        if metric.denominator or metric.kind is not MetricKind.COUNTER:
            names.append(f"{metric.name}/denominator")
    if rollout.target is TargetKind.SELDON:
        names.append(FEEDBACK)
    for raw in reading.series:
        if raw.counter.kind is CounterKind.CUSTOM:
            names.append(raw.counter.arg)
    return list(dict.fromkeys(names))


def _version_series(
    version: str, raws: list[RawSeries], k: int, custom_names: list[str], known: set[str]
) -> VersionSeries:
    builtin = [r for r in raws if r.counter.kind is not CounterKind.CUSTOM]
    observed = np.zeros(k + 2, dtype=np.bool_)
    missing = np.zeros(k, dtype=np.bool_)
    reset = np.zeros(k, dtype=np.bool_)
    sums: dict[CounterKind, Values] = {
        kind: np.zeros(k, dtype=np.float64)
        for kind in (CounterKind.REQUESTS, CounterKind.ERRORS, CounterKind.LATENCY_SUM_MS)
    }
    buckets: dict[str, dict[str, Values]] = {}
    for raw in builtin:
        observed |= ~np.isnan(raw.values)
        inc, gap = increments(raw.values)
        missing |= gap
        reset |= fell(raw.values)
        if raw.counter.kind is CounterKind.BUCKET:
            buckets.setdefault(raw.key, {})[raw.counter.arg] = inc
        else:
            sums[raw.counter.kind] += inc
    if k:
        missing |= ~observed[1:-1] | ~observed[2:]
    bounds, bucket_counts = _buckets(buckets, k)
    custom = _custom(raws, custom_names, known, k, missing)
    keep = ~missing
    return VersionSeries(
        version=version,
        requests=sums[CounterKind.REQUESTS] * keep,
        errors=sums[CounterKind.ERRORS] * keep,
        latency_sum_ms=sums[CounterKind.LATENCY_SUM_MS] * keep,
        bucket_bounds_ms=bounds,
        buckets=bucket_counts * keep[:, None],
        custom=custom,
        missing=missing,
        reset=reset & keep,
    )


def _buckets(per_key: dict[str, dict[str, Values]], k: int) -> tuple[tuple[float, ...], Values]:
    """Non-cumulative bucket counts from cumulative ``le`` counters of every process.

    Only edges every process exports are kept, so the sum over processes stays cumulative.
    """
    if not per_key:
        return (), np.zeros((k, 0), dtype=np.float64)
    edges = set.intersection(*(set(edges) for edges in per_key.values()))
    if "+Inf" not in edges:
        return (), np.zeros((k, 0), dtype=np.float64)
    ordered = sorted(edges, key=float)
    cumulative = np.zeros((k, len(ordered)), dtype=np.float64)
    for by_edge in per_key.values():
        for j, edge in enumerate(ordered):
            cumulative[:, j] += by_edge[edge]
    counts = np.diff(cumulative, axis=1, prepend=0.0)
    # A restart inside an interval can make a lower edge gain more than a higher one.
    counts = np.maximum(counts, 0.0)
    return tuple(float(e) for e in ordered[:-1]), counts


def _custom(
    raws: list[RawSeries], names: list[str], known: set[str], k: int, missing: Flags
) -> dict[str, Values]:
    """Policy metrics; `known` are the names some version of the rollout has series of."""
    out: dict[str, Values] = {}
    for name in names:
        if name not in known:
            # Not one series for any version: a wrong query or an exporter not scraped, so
            # unknown rather than zero events.
            out[name] = np.where(missing, 0.0, math.nan)
            continue
        mine = [r for r in raws if r.counter.kind is CounterKind.CUSTOM and r.counter.arg == name]
        total = np.zeros(k, dtype=np.float64)
        for raw in mine:
            inc, gap = increments(raw.values)
            total += np.where(gap, math.nan, inc)
        out[name] = np.where(missing, 0.0, total)
    return out


def _ms(moment: datetime) -> int:
    return round(utc(moment).timestamp() * 1000)
