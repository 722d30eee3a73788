"""The ``file`` backend: raw counters from a YAML recording, for ``plan --metrics``, demos, tests.

The file holds what a Prometheus scrape would have read: cumulative counter values of each
version at timestamps. Increments, counter resets and missing scrapes then go through the same
`collect` code as live metrics, so a recording can show a reset (a value that falls) or a gap
(no sample for a whole interval) as well as good and bad candidates::

    apiVersion: gitops-rollout.dev/v1alpha1
    kind: MetricsRecording
    versions:
      - namespace: default
        model: fashionmnist
        version: v2                      # app.kubernetes.io/version
        bucketsMs: [25, 50, 100, 250]    # optional latency histogram edges, without +Inf
        samples:                         # cumulative values, timestamps increasing
          - {at: "2024-05-01T10:00:00Z", requests: 0, errors: 0, latencySumMs: 0,
             buckets: [0, 0, 0, 0, 0], custom: {user-engagement: 0}}
          - {at: "2024-05-01T10:01:00Z", requests: 600, errors: 3, latencySumMs: 30125.5,
             buckets: [100, 400, 580, 598, 600], custom: {user-engagement: 31}}

Every counter is optional in a sample; ``buckets`` are cumulative (as Prometheus' ``le``
buckets), one per edge plus +Inf. ``custom`` keys are policy metric names (``name/denominator``
for a ratio's or mean's denominator; ``feedback`` for Seldon's feedback count). At an interval
boundary a counter reads as its last sample within the interval before it, as
``last_over_time`` does on Prometheus. A version not in the file has no data.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from gitops_rollout.errors import InputError, MetricsError, Problem
from gitops_rollout.metrics.base import (
    CounterId,
    CounterKind,
    RawSeries,
    Reading,
    Values,
    Window,
    nan_values,
    utc,
)
from gitops_rollout.metrics.queries import format_edge
from gitops_rollout.yamlsource import YamlProblem, format_path, load_documents, load_fast

API_VERSION = "gitops-rollout.dev/v1alpha1"
KIND = "MetricsRecording"


class MetricsFileError(InputError):
    """A metrics recording is invalid; each problem names the file, line and field."""


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class Sample(_Model):
    """Cumulative counter values of one version at one instant."""

    at: datetime
    requests: float | None = Field(default=None, ge=0)
    errors: float | None = Field(default=None, ge=0)
    latency_sum_ms: float | None = Field(default=None, ge=0)
    buckets: tuple[float, ...] | None = None
    custom: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cumulative(self) -> Sample:
        if self.buckets is not None and any(b < a for a, b in pairwise(self.buckets)):
            raise ValueError("buckets are cumulative (each at least the one before it)")
        return self


class VersionRecording(_Model):
    namespace: str = Field(min_length=1)
    model: str = Field(min_length=1)
    version: str = Field(min_length=1)
    buckets_ms: tuple[float, ...] = ()
    samples: tuple[Sample, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> VersionRecording:
        edges = self.buckets_ms
        if any(e <= 0 for e in edges) or any(b <= a for a, b in pairwise(edges)):
            raise ValueError("bucketsMs must be positive and increasing")
        for i, sample in enumerate(self.samples):
            if sample.buckets is not None and len(sample.buckets) != len(edges) + 1:
                raise ValueError(
                    f"samples[{i}].buckets has {len(sample.buckets)} values; bucketsMs has "
                    f"{len(edges)} edges, so give {len(edges) + 1} (the last is +Inf)"
                )
            if i and utc(sample.at) <= utc(self.samples[i - 1].at):
                raise ValueError(f"samples[{i}].at is not after samples[{i - 1}].at")
        return self


class Recording(_Model):
    api_version: Literal["gitops-rollout.dev/v1alpha1"]
    kind: Literal["MetricsRecording"]
    versions: tuple[VersionRecording, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> Recording:
        seen: set[tuple[str, str, str]] = set()
        for v in self.versions:
            key = (v.namespace, v.model, v.version)
            if key in seen:
                raise ValueError(f"{'/'.join(key)} is recorded twice; merge its samples")
            seen.add(key)
        return self


class FileProvider:
    """`MetricsProvider` over a `Recording`."""

    def __init__(self, recording: Recording, *, name: str) -> None:
        self._name = name
        self._versions = {(v.namespace, v.model, v.version): v for v in recording.versions}

    @classmethod
    def load(cls, path: Path) -> FileProvider:
        """Read and validate a recording; raises MetricsFileError (located) or MetricsError."""
        try:
            text = path.read_bytes()
        except OSError as err:
            raise MetricsError(f"cannot read metrics file {path}: {err.strerror}") from err
        return cls(parse(text, file=str(path)), name=str(path))

    def describe(self) -> str:
        return f"metrics file {self._name}"

    def read(self, windows: Sequence[Window]) -> Mapping[str, Reading | MetricsError]:
        out: dict[str, Reading | MetricsError] = {}
        for w in windows:
            series: list[RawSeries] = []
            asked: list[str] = []
            instants = w.grid.epoch_ms()
            window_ms = round(w.grid.step.total_seconds() * 1000)
            for ref in w.rollout.versions:
                entry = self._versions.get((ref.namespace, w.rollout.model, ref.version))
                where = f"{self._name}: {ref.namespace}/{w.rollout.model}/{ref.version}"
                if entry is None:
                    asked.append(f"{where} (not recorded)")
                    continue
                asked.append(where)
                series.extend(_series(entry, instants, window_ms))
            out[w.rollout.key] = Reading(tuple(series), tuple(asked))
        return out


def parse(text: str | bytes, *, file: str) -> Recording:
    """Validate a recording; every problem is reported with its line.

    A valid recording is parsed once, with libyaml; only an invalid one is parsed again with
    line tracking to say where the problems are (recordings grow to thousands of samples).
    """
    try:
        fast = load_fast(text)
    except yaml.YAMLError:
        fast = None
    if fast is not None and len(fast) == 1:
        try:
            return Recording.model_validate(fast[0])
        except ValidationError:
            pass  # located below
    try:
        docs = load_documents(text, file=file)
    except YamlProblem as err:
        raise MetricsFileError([err.problem]) from err
    if len(docs) != 1:
        raise MetricsFileError(
            [
                Problem(
                    file,
                    None,
                    "",
                    f"expected one YAML document, found {len(docs)}",
                    f"write one {KIND} document",
                )
            ]
        )
    doc = docs[0]
    try:
        return Recording.model_validate(doc.value)
    except ValidationError as err:
        problems = []
        errors = err.errors(include_url=False)
        deeper = [tuple(e["loc"]) for e in errors]
        for error in errors:
            loc = tuple(error["loc"])
            if error["type"] == "too_short" and any(
                len(other) > len(loc) and other[: len(loc)] == loc for other in deeper
            ):
                # A list whose items failed also reports itself as too short; the items say it.
                continue
            reason = str(error["msg"]).removeprefix("Value error, ")
            fix = ""
            if error["type"] == "extra_forbidden":
                reason, fix = "unknown field", "remove it or check its spelling"
            elif error["type"] == "missing":
                reason, fix = "required field is missing", "add it"
            elif error["type"] == "too_short":
                reason, fix = "is empty", "add at least one entry"
            elif error["type"] == "literal_error" and loc and loc[0] in ("apiVersion", "kind"):
                fix = f"start the file with apiVersion: {API_VERSION} and kind: {KIND}"
            problems.append(Problem(file, doc.line_of(loc), format_path(loc), reason, fix))
        raise MetricsFileError(problems) from err


def _series(entry: VersionRecording, instants: list[int], window_ms: int) -> list[RawSeries]:
    times = [round(utc(s.at).timestamp() * 1000) for s in entry.samples]
    # The sample each instant reads: the last within (instant - window, instant].
    picks: list[Sample | None] = []
    for t in instants:
        i = bisect.bisect_right(times, t) - 1
        picks.append(entry.samples[i] if i >= 0 and times[i] > t - window_ms else None)

    edges = [format_edge(e) for e in entry.buckets_ms] + ["+Inf"]
    # Every counter any sample has gets a column, NaN where the instant read no sample.
    counters: dict[CounterId, Values] = {}
    for sample in entry.samples:
        for counter, _ in _fields(sample, edges):
            counters.setdefault(counter, nan_values(len(instants)))
    for j, picked in enumerate(picks):
        if picked is not None:
            for counter, value in _fields(picked, edges):
                counters[counter][j] = value
    return [RawSeries(entry.version, c, "", values) for c, values in counters.items()]


def _fields(sample: Sample, edges: list[str]) -> list[tuple[CounterId, float]]:
    out: list[tuple[CounterId, float]] = []
    if sample.requests is not None:
        out.append((CounterId(CounterKind.REQUESTS), sample.requests))
    if sample.errors is not None:
        out.append((CounterId(CounterKind.ERRORS), sample.errors))
    if sample.latency_sum_ms is not None:
        out.append((CounterId(CounterKind.LATENCY_SUM_MS), sample.latency_sum_ms))
    if sample.buckets is not None:
        out.extend(
            (CounterId(CounterKind.BUCKET, edge), value)
            for edge, value in zip(edges, sample.buckets, strict=True)
        )
    out.extend(
        (CounterId(CounterKind.CUSTOM, name), value) for name, value in sample.custom.items()
    )
    return out
