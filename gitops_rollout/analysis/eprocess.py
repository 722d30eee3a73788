"""E-processes for rates of bad events: errors, slow requests, counter increments.

Two tests, both mixtures of likelihood ratios over a grid, so that each may be looked at after
every interval without inflating its error rate (Ville: P(an e-process ever reaches 1/alpha)
<= alpha under its null):

- the Poisson-split test compares two versions. Given an interval's total bad events, the
  candidate's share of them is Binomial(total, theta_k(r)), theta_k(r) = pi_k r / (pi_k r + 1 -
  pi_k), where pi_k is the candidate's share of requests in that interval and r the ratio of
  the two rates. The baseline's own rate, and any drift common to both versions, cancel; weights
  may change between intervals. One-sided nulls ("r <= r0", "r >= r0") are tested with
  alternatives on one side only, which keeps the mixture a supermartingale for the whole null.
- the one-sample test compares one version's rate with a fixed limit (Poisson likelihood ratio,
  which is also a supermartingale when the counts are binomial).

Every function takes per-interval arrays with the interval axis last and any leading axes (the
benchmark passes thousands of simulated rollouts at once). With ``path=True`` the result has an
interval axis holding the value after each interval, otherwise only the final value.

Which counts to feed, at which alpha, and what a rejection means are left to `guardrails` and
`decide`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

GRID_STEP = 1.0 / 16
"""Spacing of the alternatives on the log-ratio scale (about 6 %)."""
GRID_SPAN = 3.0
"""Alternatives reach e^3 (about 20x) beyond the null, as far as a catastrophe needs."""
WORSE_SCALE = math.log(2.0)
"""Half-normal scale of the 'worse' alternatives on log(r / r0): most weight below 2.5x."""
BETTER_CENTRE = 0.0
BETTER_SCALE = 0.5
"""'Better' alternatives are weighted as N(log 1, 0.5^2) on log r: a candidate proving it is
not worse is usually about as good as the baseline."""
LIMIT_BETTER_SCALE = 1.0
"""For absolute limits the truth is often well inside the limit (half or a tenth of it)."""


def logsumexp(values: FloatArray, axis: int = -1, *, keepdims: bool = False) -> FloatArray:
    """log(sum(exp(values))) along ``axis``, stable, and several times faster than scipy's
    for the large arrays the benchmark passes."""
    top = np.max(values, axis=axis, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    out: FloatArray = np.log(np.sum(np.exp(values - safe), axis=axis, keepdims=True)) + safe
    return out if keepdims else np.squeeze(out, axis=axis)


_OFFSETS = np.arange(1, round(GRID_SPAN / GRID_STEP) + 1, dtype=np.float64) * GRID_STEP


@dataclass(frozen=True)
class Mixture:
    """One side of a test: alternatives as offsets from the null on the log scale, and weights."""

    offsets: FloatArray
    """log(alternative / null); positive for 'worse', negative for 'better'."""
    log_weights: FloatArray
    """Log of probability weights (they sum to 1)."""


def _normalised(log_density: FloatArray) -> FloatArray:
    out: FloatArray = log_density - logsumexp(log_density)
    return out


def worse_mixture() -> Mixture:
    """Alternatives above the null, half-normal on log(r / r0) with scale log 2."""
    return Mixture(_OFFSETS, _normalised(-0.5 * (_OFFSETS / WORSE_SCALE) ** 2))


def _better_log_weights(log_null: FloatArray) -> FloatArray:
    log_r = log_null[..., None] - _OFFSETS
    density = -0.5 * ((log_r - BETTER_CENTRE) / BETTER_SCALE) ** 2
    out: FloatArray = density - logsumexp(density, axis=-1, keepdims=True)
    return out


def better_mixture(log_null: float) -> Mixture:
    """Alternatives below the null, weighted N(0, 0.5^2) on log r (centred on 'no change')."""
    return Mixture(-_OFFSETS, _better_log_weights(np.array(log_null)))


def limit_mixture(*, worse: bool) -> Mixture:
    """Alternatives for a one-sample test against a limit (worse = above it)."""
    scale = WORSE_SCALE if worse else LIMIT_BETTER_SCALE
    sign = 1.0 if worse else -1.0
    return Mixture(sign * _OFFSETS, _normalised(-0.5 * (_OFFSETS / scale) ** 2))


def _accumulate(values: FloatArray, *, path: bool, axis: int) -> FloatArray:
    out: FloatArray = np.cumsum(values, axis=axis) if path else np.sum(values, axis=axis)
    return out


def _split_terms(
    cand_events: FloatArray, base_events: FloatArray, share: FloatArray, log_r: FloatArray
) -> FloatArray:
    """Per-interval log-likelihood of ratio(s) ``log_r`` (last axis), up to a constant in r."""
    total = cand_events + base_events
    valid = (share > 0.0) & (share < 1.0) & (total > 0.0)
    # Zero counts make an interval contribute nothing, whatever its share.
    pi = np.where(valid, share, 0.5)[..., None]
    x = np.where(valid, cand_events, 0.0)[..., None]
    n = np.where(valid, total, 0.0)[..., None]
    out: FloatArray = x * log_r - n * np.log1p(pi * np.expm1(log_r))
    return out


def split_log_evalue(
    cand_events: FloatArray,
    base_events: FloatArray,
    share: FloatArray,
    *,
    null_ratio: float,
    worse: bool,
    path: bool = False,
) -> FloatArray:
    """Log e-value of the Poisson-split test against ``r <= null_ratio`` (worse=True) or
    ``r >= null_ratio`` (worse=False).

    ``share`` is the candidate's share of requests (or of the denominator) per interval;
    intervals with no events, or where one version had no requests, contribute nothing.
    """
    log_null = math.log(null_ratio)
    mixture = worse_mixture() if worse else better_mixture(log_null)
    grid = np.concatenate(([log_null], log_null + mixture.offsets))
    loglik = _accumulate(_split_terms(cand_events, base_events, share, grid), path=path, axis=-2)
    ratios = loglik[..., 1:] - loglik[..., :1]
    out: FloatArray = logsumexp(ratios + mixture.log_weights, axis=-1)
    return out


def poisson_log_evalue(
    events: FloatArray,
    exposure: FloatArray,
    *,
    null_rate: float,
    worse: bool,
    path: bool = False,
) -> FloatArray:
    """Log e-value of the one-sample test against ``rate <= null_rate`` (worse=True) or
    ``rate >= null_rate`` (worse=False), rate = events per unit of exposure."""
    x = _accumulate(events, path=path, axis=-1)[..., None]
    n = _accumulate(exposure, path=path, axis=-1)[..., None]
    mixture = limit_mixture(worse=worse)
    u = mixture.offsets
    ratios = x * u - n * null_rate * np.expm1(u)
    out: FloatArray = logsumexp(ratios + mixture.log_weights, axis=-1)
    return out


# ---------------------------------------------------------------------------------------------
# Bounds and estimates for people (one rollout at a time, never used to decide)

_FINE = GRID_STEP / 8
_STRIDE = 8
_DISPLAY_RANGE = math.log(50.0)


@dataclass(frozen=True)
class Bounds:
    """A point estimate and one-sided confidence bounds, each at its own alpha."""

    estimate: float | None
    lower: float | None
    """None when nothing above zero is supported."""
    upper: float | None
    """None when nothing finite is supported."""


def split_bounds(
    cand_events: FloatArray,
    base_events: FloatArray,
    share: FloatArray,
    *,
    alpha_lower: float,
    alpha_upper: float,
) -> Bounds:
    """Estimate of r (maximum likelihood) and the bounds the two one-sided tests support:
    the largest r0 for which ``r <= r0`` is rejected at alpha_lower, the smallest r0 for which
    ``r >= r0`` is rejected at alpha_upper. One rollout (1-d arrays) only."""
    total = float(np.sum(cand_events + base_events))
    if total <= 0:
        return Bounds(None, None, None)
    span = _DISPLAY_RANGE + GRID_SPAN
    steps = round(span / _FINE)
    lattice = np.arange(-steps, steps + 1, dtype=np.float64) * _FINE
    loglik = np.sum(_split_terms(cand_events, base_events, share, lattice), axis=-2)
    centre = round(_DISPLAY_RANGE / _FINE)
    nulls = np.arange(steps - centre, steps + centre + 1)
    worse = worse_mixture()
    idx_up = nulls[:, None] + _STRIDE * np.arange(1, worse.offsets.size + 1)[None, :]
    log_e_worse = logsumexp(loglik[idx_up] - loglik[nulls][:, None] + worse.log_weights, axis=1)
    idx_down = nulls[:, None] - _STRIDE * np.arange(1, worse.offsets.size + 1)[None, :]
    better_weights = _better_log_weights(lattice[nulls])
    log_e_better = logsumexp(loglik[idx_down] - loglik[nulls][:, None] + better_weights, axis=1)
    rejected_low = np.nonzero(log_e_worse >= math.log(1.0 / alpha_lower))[0]
    rejected_high = np.nonzero(log_e_better >= math.log(1.0 / alpha_upper))[0]
    lower = float(np.exp(lattice[nulls[rejected_low.max()]])) if rejected_low.size else None
    upper = float(np.exp(lattice[nulls[rejected_high.min()]])) if rejected_high.size else None
    best = float(np.exp(lattice[nulls[np.argmax(loglik[nulls])]]))
    return Bounds(best, lower, upper)


def poisson_bounds(
    events: FloatArray, exposure: FloatArray, *, alpha_lower: float, alpha_upper: float
) -> Bounds:
    """Estimate of a rate and the bounds of the one-sample tests (one rollout only)."""
    x = float(np.sum(events))
    n = float(np.sum(exposure))
    if n <= 0:
        return Bounds(None, None, None)
    estimate = x / n
    centre = estimate if x > 0 else 1.0 / n
    nulls = centre * np.exp(np.arange(-400, 401, dtype=np.float64) * (_FINE * 2))
    worse = limit_mixture(worse=True)
    better = limit_mixture(worse=False)
    u_w, u_b = worse.offsets[None, :], better.offsets[None, :]
    rate = nulls[:, None]
    log_e_worse = logsumexp(x * u_w - n * rate * np.expm1(u_w) + worse.log_weights, axis=1)
    log_e_better = logsumexp(x * u_b - n * rate * np.expm1(u_b) + better.log_weights, axis=1)
    rejected_low = np.nonzero(log_e_worse >= math.log(1.0 / alpha_lower))[0]
    rejected_high = np.nonzero(log_e_better >= math.log(1.0 / alpha_upper))[0]
    lower = float(nulls[rejected_low.max()]) if rejected_low.size else None
    upper = float(nulls[rejected_high.min()]) if rejected_high.size else None
    return Bounds(estimate, lower, upper)
