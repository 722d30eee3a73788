"""The metrics an objective may name, where their numbers come from, and the default margins.

A module of its own, without numpy: policy validation reads it on every pass that loads a
policy, and must not pay for the statistics (`guardrails` holds the tests themselves).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from gitops_rollout.policy import FEEDBACK_METRIC, Analysis, MetricKind


class Source(StrEnum):
    """Where a metric's numbers come from and which test family applies."""

    ERRORS = "errors"
    LATENCY_MEAN = "latency-mean"
    LATENCY_TAIL = "latency-tail"
    COUNTER = "counter"
    RATIO = "ratio"
    MEAN = "mean"


RATE_SOURCES = frozenset({Source.ERRORS, Source.LATENCY_TAIL, Source.COUNTER, Source.RATIO})

BUILTIN: Mapping[str, tuple[Source, float | None]] = {
    "error-rate": (Source.ERRORS, None),
    "mean-latency": (Source.LATENCY_MEAN, None),
    "p95-latency": (Source.LATENCY_TAIL, 0.95),
    "p99-latency": (Source.LATENCY_TAIL, 0.99),
}

DEFAULT_MAX_INCREASE: Mapping[Source, float] = {
    Source.ERRORS: 0.5,
    Source.LATENCY_TAIL: 0.5,
    Source.COUNTER: 0.5,
    Source.RATIO: 0.5,
    Source.LATENCY_MEAN: 0.05,
    Source.MEAN: 0.05,
}
"""Non-inferiority margins when an objective gives none. Rates: 1.5x the baseline (tighter
margins need thousands of bad events to prove); means: +5 %. For p95/p99 the margin is on the
share of requests slower than the baseline's quantile edge (1.5x as many slow requests)."""

ROLLBACK_INCREASE: Mapping[Source, float] = {
    Source.ERRORS: 0.0,
    Source.LATENCY_TAIL: 0.0,
    Source.COUNTER: 0.0,
    Source.RATIO: 0.0,
    Source.LATENCY_MEAN: 0.02,
    Source.MEAN: 0.02,
}
"""Rollback when the candidate is worse than the baseline by more than this, with confidence.
Rates: any increase. Means: 2 %, below which latency differences between two deployments of
the same code (node types, pod placement) are common and not worth a rollback."""

DEFAULT_OBJECTIVES = ("error-rate", "mean-latency")
"""Guardrails used when the policy lists none."""


def resolve(name: str, analysis: Analysis) -> tuple[Source, float | None] | None:
    """The source (and quantile) of a metric name; None if it is unknown.

    ``feedback`` not defined by the policy is Seldon's feedback count, a built-in counter of
    the seldon target (other targets have no such series: validation says so).
    """
    if name in BUILTIN:
        return BUILTIN[name]
    for custom in analysis.metrics:
        if custom.name == name:
            kind = {
                MetricKind.COUNTER: Source.COUNTER,
                MetricKind.RATIO: Source.RATIO,
                MetricKind.MEAN: Source.MEAN,
            }[custom.kind]
            return kind, None
    if name == FEEDBACK_METRIC:
        return Source.COUNTER, None
    return None
