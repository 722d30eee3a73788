"""What the metrics stage is asked, what a backend answers, and the Protocol every backend meets.

A pass asks for raw counter values of every version of every rollout at that rollout's interval
boundaries (a `Window`). A backend (`MetricsProvider`: Prometheus, a YAML file) answers with
`RawSeries`, one per raw counter, NaN where no sample was there. Turning those values into
per-interval increments, with counter resets and missing scrapes handled, is `collect`'s job,
shared by every backend; choosing PromQL is `queries`' job; HTTP is `prometheus`' job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

import numpy as np
import numpy.typing as npt

from gitops_rollout.errors import MetricsError
from gitops_rollout.policy import CustomMetric, RolloutPolicy, TargetKind

Values = npt.NDArray[np.float64]


def utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive datetime is taken to be UTC already (as ``--now`` often is)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class CounterKind(StrEnum):
    """What a raw counter measures; `collect` sums each kind into one `VersionSeries` field."""

    REQUESTS = "requests"
    ERRORS = "errors"
    LATENCY_SUM_MS = "latency_sum_ms"
    BUCKET = "bucket"
    """A cumulative histogram bucket; `CounterId.arg` is its upper edge in ms (``+Inf`` last)."""
    CUSTOM = "custom"
    """A policy metric or a built-in extra; `CounterId.arg` is its `VersionSeries.custom` name."""


@dataclass(frozen=True, order=True)
class CounterId:
    kind: CounterKind
    arg: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value}[{self.arg}]" if self.arg else self.kind.value


@dataclass(frozen=True)
class VersionRef:
    """One version of a model, as the inventory found it."""

    version: str
    """Its ``app.kubernetes.io/version`` label; the key of `Evidence.series`."""
    name: str
    """The Deployment, InferenceService or SeldonDeployment that serves it."""
    namespace: str
    """Where that object runs (Seldon's separate deployments may differ per version)."""
    predictor: str = "default"
    """Seldon only: the predictor serving this version."""
    workload: str | None = None
    """The workload name metrics carry when it is not derived from `name` (KServe native mode:
    the Knative revision, e.g. ``wisdom-predictor-00002``)."""


@dataclass(frozen=True)
class RolloutRef:
    """One rollout the pass needs evidence for."""

    key: str
    """The caller's name for the rollout (e.g. ``cluster/namespace/model``); results use it."""
    target: TargetKind
    model: str
    namespace: str
    """The policy's namespace: ``$namespace`` in custom queries that do not run per version."""
    versions: tuple[VersionRef, ...]
    since: datetime
    """Where counting starts: the step's start plus the warm-up. Rounded up to the interval grid."""
    interval: timedelta
    metrics: tuple[CustomMetric, ...] = ()
    """The policy's ``spec.analysis.metrics``, in file order (errors name their index)."""

    def __post_init__(self) -> None:
        labels = [v.version for v in self.versions]
        doubled = sorted({label for label in labels if labels.count(label) > 1})
        if doubled:
            raise ValueError(f"{self.key}: version {', '.join(doubled)} is listed twice")
        if self.interval.total_seconds() < 1:
            raise ValueError(f"{self.key}: interval {self.interval} is shorter than a second")

    @classmethod
    def from_policy(
        cls,
        policy: RolloutPolicy,
        *,
        key: str,
        versions: Sequence[VersionRef],
        step_start: datetime,
    ) -> RolloutRef:
        """The rollout of `policy` whose current step's change took effect at `step_start`."""
        analysis = policy.spec.analysis
        interval = analysis.interval if analysis else timedelta(minutes=1)
        warmup = analysis.warmup if analysis else timedelta(0)
        return cls(
            key=key,
            target=policy.spec.target.kind,
            model=policy.model,
            namespace=policy.spec.namespace,
            versions=tuple(versions),
            since=utc(step_start) + warmup,
            interval=interval,
            metrics=analysis.metrics if analysis else (),
        )


@dataclass(frozen=True)
class Grid:
    """Evenly spaced instants: start, start + step, ..., `count` of them."""

    start: datetime
    step: timedelta
    count: int

    @property
    def end(self) -> datetime:
        return self.start + self.step * max(0, self.count - 1)

    @property
    def instants(self) -> tuple[datetime, ...]:
        return tuple(self.start + self.step * i for i in range(self.count))

    def epoch_ms(self) -> list[int]:
        """The instants as whole Unix milliseconds, the key backends match samples on."""
        first = round(self.start.timestamp() * 1000)
        step = round(self.step.total_seconds() * 1000)
        return [first + step * i for i in range(self.count)]


@dataclass(frozen=True)
class Window:
    """A rollout and the instants its counters are read at.

    ``grid.instants[0]`` lies one interval before the first boundary: a raw counter seen there
    existed before counting started, so a later first sighting cannot be mistaken for a new one.
    """

    rollout: RolloutRef
    grid: Grid


@dataclass(frozen=True)
class RawSeries:
    """One raw counter of one version, read at every instant of its window's grid."""

    version: str
    counter: CounterId
    key: str
    """Tells the raw counters of one version and counter apart (scrape target, status code)."""
    values: Values
    """Cumulative values, NaN where the counter had no sample."""


@dataclass(frozen=True)
class Reading:
    """A backend's answer for one window."""

    series: tuple[RawSeries, ...]
    queries: tuple[str, ...]
    """What was asked (PromQL, or file entries), for the PR body."""


class QueryError(MetricsError):
    """The backend rejected a query (syntax, bad parameters, failed execution).

    Unlike an outage, retrying will not help: the query must change. `field` names the policy
    field the query came from (empty for built-in templates), so the caller can point at the
    file and line.
    """

    def __init__(
        self,
        *,
        query: str,
        error_type: str,
        error: str,
        rollout: str = "",
        field: str = "",
    ) -> None:
        self.query = query
        self.error_type = error_type
        self.error = error
        self.rollout = rollout
        self.field = field
        where = ": ".join(part for part in (rollout, field) if part)
        prefix = f"{where}: " if where else ""
        super().__init__(
            f"{prefix}Prometheus rejected the query ({error_type}): {error}; query: {query}"
        )

    def located(self, *, rollout: str, field: str) -> QueryError:
        """The same error, naming the rollout and the policy field the query came from."""
        return QueryError(
            query=self.query,
            error_type=self.error_type,
            error=self.error,
            rollout=rollout,
            field=field,
        )


class MetricsProvider(Protocol):
    """A backend of raw counters (see `PROVIDERS`)."""

    def read(self, windows: Sequence[Window]) -> Mapping[str, Reading | MetricsError]:
        """Raw counters of every window's versions by rollout key, or the MetricsError that
        stopped that window (outage, HTTP error, rejected query); one window's failure never
        hides another's reading."""
        ...

    def describe(self) -> str:
        """Where the counters come from, for logs and PR bodies; never contains credentials."""
        ...


def nan_values(count: int) -> Values:
    return np.full(count, math.nan, dtype=np.float64)
