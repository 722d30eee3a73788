"""The ``prometheus`` backend: raw counters of many rollouts from few range queries.

Windows are grouped by metric family, namespace and interval. Each group runs its family's
templates once, as range queries over the union of its windows (all windows of one interval
share the epoch-aligned grid `collect` builds, so every boundary is a step of the union), and
hands each series to the versions it belongs to. A pass therefore makes a fixed number of
built-in queries per namespace and interval however many models live there. Policy metrics are
each rollout's own queries. Which PromQL to ask is `queries`' business; HTTP is the client's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from gitops_rollout.errors import MetricsError
from gitops_rollout.metrics.base import (
    CounterId,
    CounterKind,
    QueryError,
    RawSeries,
    Reading,
    Values,
    VersionRef,
    Window,
)
from gitops_rollout.metrics.prometheus import PrometheusClient, RangeSeries
from gitops_rollout.metrics.queries import (
    FAMILIES,
    Family,
    Measure,
    Source,
    counters_of,
    custom_owner,
    custom_queries,
    family_of,
    render,
    series_key,
    series_keys,
    version_key,
)
from gitops_rollout.policy import TargetKind

log = logging.getLogger(__name__)

_Member = tuple[Window, VersionRef]


@dataclass
class _Answer:
    series: list[RawSeries] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)

    def asked(self, promql: str) -> None:
        if promql not in self.queries:
            self.queries.append(promql)


class PrometheusProvider:
    """`MetricsProvider` over a `PrometheusClient`."""

    def __init__(self, client: PrometheusClient) -> None:
        self._client = client

    def describe(self) -> str:
        return f"Prometheus at {self._client.url}"

    def read(self, windows: Sequence[Window]) -> Mapping[str, Reading | MetricsError]:
        live = [w for w in windows if w.grid.count > 0]
        answers = {w.rollout.key: _Answer() for w in live}
        failed: dict[str, MetricsError] = {}
        instants = {w.rollout.key: w.grid.epoch_ms() for w in live}

        groups: dict[tuple[Source, str, timedelta], list[_Member]] = {}
        for w in live:
            source = family_of(w.rollout.target).source
            for v in w.rollout.versions:
                groups.setdefault((source, v.namespace, w.grid.step), []).append((w, v))
        for (source, namespace, step), members in groups.items():
            self._builtin(FAMILIES[source], namespace, step, members, answers, instants, failed)

        cache: dict[tuple[str, datetime, datetime, timedelta], list[RangeSeries]] = {}
        for w in live:
            key = w.rollout.key
            if key in failed:
                continue
            for query in custom_queries(w.rollout):
                answers[key].asked(query.promql)
                ask = (query.promql, w.grid.start, w.grid.end, w.grid.step)
                try:
                    if ask not in cache:
                        cache[ask] = self._client.range(
                            query.promql, start=w.grid.start, end=w.grid.end, step=w.grid.step
                        )
                except MetricsError as err:
                    failed[key] = _located(err, rollout=key, field=query.field)
                    break
                for series in cache[ask]:
                    owner = custom_owner(query, series.labels)
                    if owner is None:
                        continue
                    answers[key].series.append(
                        RawSeries(
                            owner.version,
                            CounterId(CounterKind.CUSTOM, query.name),
                            ",".join(f"{k}={v}" for k, v in sorted(series.labels.items())),
                            _values(series, instants[key], 1.0),
                        )
                    )

        out: dict[str, Reading | MetricsError] = {}
        for w in live:
            key = w.rollout.key
            answer = answers[key]
            out[key] = failed.get(key) or Reading(tuple(answer.series), tuple(answer.queries))
        return out

    def _builtin(
        self,
        family: Family,
        namespace: str,
        step: timedelta,
        members: list[_Member],
        answers: dict[str, _Answer],
        instants: dict[str, list[int]],
        failed: dict[str, MetricsError],
    ) -> None:
        """Run `family`'s templates once for `namespace` and share the series out."""
        start = min(w.grid.start for w, _ in members)
        end = max(w.grid.end for w, _ in members)
        index: dict[tuple[TargetKind, str], list[_Member]] = {}
        for w, v in members:
            index.setdefault((w.rollout.target, version_key(w.rollout.target, v)), []).append(
                (w, v)
            )
        targets = {w.rollout.target for w, _ in members}
        keys = {w.rollout.key for w, _ in members}
        for template in family.templates:
            promql = render(template, family, namespace=namespace, window=step)
            for key in keys:
                answers[key].asked(promql)
            try:
                answer = self._client.range(promql, start=start, end=end, step=step)
            except MetricsError as err:
                # A built-in query names no policy field; its text is in the message.
                for key in keys:
                    failed.setdefault(key, err)
                return
            log.debug("%s in %s: %d series", template.name, namespace, len(answer))
            scale = family.to_ms if template.measure is Measure.LATENCY_SUM else 1.0
            for series in answer:
                owners = _owners(series, targets, index)
                if not owners:
                    continue
                counters = counters_of(family, template, series.labels)
                raw_key = series_key(family, series.labels)
                for w, v in owners:
                    values = _values(series, instants[w.rollout.key], scale)
                    answers[w.rollout.key].series.extend(
                        RawSeries(v.version, counter, raw_key, values) for counter in counters
                    )


def _owners(
    series: RangeSeries,
    targets: set[TargetKind],
    index: dict[tuple[TargetKind, str], list[_Member]],
) -> list[_Member]:
    owners: list[_Member] = []
    for target in targets:
        for candidate in series_keys(target, series.labels):
            found = index.get((target, candidate))
            if found:
                owners.extend(found)
                break
    return owners


def _values(series: RangeSeries, instants_ms: list[int], scale: float) -> Values:
    by_ms = {round(ts * 1000): value * scale for ts, value in series.points}
    return np.array([by_ms.get(t, np.nan) for t in instants_ms], dtype=np.float64)


def _located(err: MetricsError, *, rollout: str, field: str) -> MetricsError:
    if isinstance(err, QueryError):
        return err.located(rollout=rollout, field=field)
    return err
