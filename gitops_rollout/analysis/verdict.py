"""What one decision pass returns: the action, why, and every per-metric result it rests on.

The decide stage builds these; render, the PR body and the logs read them. They hold plain
numbers and sentences (no numpy), so they can be printed, compared in tests and written as JSON
(`Verdict.as_dict`) for ``--json`` output and for a reviewer who wants to recompute a decision
from the counts. Nothing here computes a statistic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    """What the rollout should do next; the values are the wire form (status, trailers, JSON)."""

    ADVANCE = "advance"
    """Move to the next step (or, for A/B/n, apply `Verdict.suggested_weights`)."""
    HOLD = "hold"
    """Keep the current weights and look again next pass."""
    ROLLBACK = "rollback"
    """Send all traffic back to the baseline."""
    PROMOTE = "promote"
    """Make the candidate (or the A/B/n winner) the new primary."""


class CheckVerdict(StrEnum):
    """The state of one test on one version."""

    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    """Proven acceptable: non-inferior to the baseline, or within the limit, with confidence."""
    FAIL = "fail"
    """Proven unacceptable: worse than the baseline, or beyond the limit, with confidence."""
    UNDECIDED = "undecided"
    """Not enough evidence either way yet."""
    NO_DATA = "no-data"
    """The metric could not be computed (not exported, or no usable interval)."""


class Comparison(StrEnum):
    """What a check compares the candidate with."""

    RELATIVE = "relative"
    """Against the baseline: the bounds are on the ratio candidate / baseline."""
    UPPER_LIMIT = "upper-limit"
    """Against a fixed upper limit: the bounds are on the candidate's own value."""
    LOWER_LIMIT = "lower-limit"
    """Against a fixed lower limit: the bounds are on the candidate's own value."""
    REWARD = "reward"
    """A/B/n reward: the bounds are on candidate - baseline (higher is better once oriented)."""
    TRAFFIC_SPLIT = "traffic-split"
    """Sample-ratio check: observed against configured share of requests."""


@dataclass(frozen=True)
class Tally:
    """The counts a check used, so that a reviewer can recompute it."""

    intervals: int
    """Intervals that entered the test (after warm-up, without missing scrapes)."""
    baseline_requests: float
    candidate_requests: float
    baseline_events: float | None = None
    """Bad events (errors, slow requests, counter increments); None for means."""
    candidate_events: float | None = None


@dataclass(frozen=True)
class Check:
    """One test of one metric on one version, in the words of the PR's evidence table."""

    metric: str
    version: str
    comparison: Comparison
    verdict: CheckVerdict
    unit: str
    """Unit of `baseline` and `candidate` (``ms``, ``fraction of requests``, ...)."""
    baseline: float | None
    """The baseline's estimate over the same intervals (None for limits without data)."""
    candidate: float | None
    lower: float | None
    """Lower confidence bound on the compared quantity (ratio for relative checks)."""
    upper: float | None
    """Upper confidence bound on the compared quantity."""
    limit: float | None
    """What `upper` (or `lower`, for lower limits) must beat to pass: margin ratio or limit."""
    fail_at: float | None
    """What `lower` (or `upper`, for lower limits) must cross for the check to fail."""
    tally: Tally
    note: str = ""
    """A plain sentence on anything a reviewer needs to read the numbers (edges, variance)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "version": self.version,
            "comparison": self.comparison.value,
            "verdict": self.verdict.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "lower": self.lower,
            "upper": self.upper,
            "limit": self.limit,
            "failAt": self.fail_at,
            "tally": {
                "intervals": self.tally.intervals,
                "baselineRequests": self.tally.baseline_requests,
                "candidateRequests": self.tally.candidate_requests,
                "baselineEvents": self.tally.baseline_events,
                "candidateEvents": self.tally.candidate_events,
            },
            "note": self.note,
        }


@dataclass(frozen=True)
class Verdict:
    """The decision of one pass for one rollout."""

    action: Action
    reasons: tuple[str, ...]
    """Plain sentences, most important first; the PR body and the INFO log line use them."""
    checks: tuple[Check, ...] = ()
    suggested_weights: Mapping[str, int] | None = None
    """A/B/n only: integer percentages per version, summing to 100."""
    winner: str | None = None
    """A/B/n only: the version with the best reward that passed every guardrail."""
    inconclusive: bool = False
    """The step's deadline passed without a verdict; `action` is the policy's onInconclusive."""
    excluded_intervals: int = 0
    """Intervals left out as warm-up or for missing scrapes."""
    alpha: float = 0.0
    """The policy's alpha these checks were run at (rollback alpha is split across tests)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "inconclusive": self.inconclusive,
            "reasons": list(self.reasons),
            "winner": self.winner,
            "suggestedWeights": dict(self.suggested_weights) if self.suggested_weights else None,
            "excludedIntervals": self.excluded_intervals,
            "alpha": self.alpha,
            "checks": [c.as_dict() for c in self.checks],
        }


def confidence(alpha: float) -> str:
    """'99.7 %' for alpha = 0.0033."""
    return f"{100.0 * (1.0 - alpha):.4g} %"


def value(check: Check, x: float | None) -> str:
    """A number in the check's unit, as a reviewer reads it."""
    if x is None:
        return "n/a"
    if check.unit == "fraction of requests":
        return f"{100.0 * x:.3g} %"
    if check.unit == "ms":
        return f"{x:.1f} ms"
    return f"{x:.4g}"
