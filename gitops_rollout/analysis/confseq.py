"""Normal-mixture confidence sequences for means (latency, reward rates), from interval batches.

Prometheus exports a sum and a count per interval but no sum of squares, so a version's mean is
known per interval and its variance is not. Each interval is treated as a batch: the estimate is
a weighted mean of per-interval values d_k (for a comparison, d_k = mean_B,k - (1 + m) mean_A,k,
the margin-shifted difference, so a relative margin needs no ratio algebra), and its variance is
the batch-means variance, which also absorbs drift, bursts and pod-to-pod differences. Early on,
when there are too few batches for that, a within-interval variance (from histogram buckets or a
Poisson model, given by the caller) is used as a floor. Comparing within intervals and then
averaging keeps a drift in latency from being mistaken for a difference when the candidate's
share grows over time.

The e-values are Robbins' normal mixture (one-sided: half-normal mixing over the effect), valid
at every look asymptotically (Howard et al. 2021; Waudby-Smith et al. 2024). Arrays carry any
leading axes; ``path=True`` returns the value after each interval. Which margins and alphas to
use is left to `guardrails`, `abn` and `decide`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import log_ndtr

FloatArray = npt.NDArray[np.float64]

MIN_BATCHES_WITHOUT_FLOOR = 3
"""Batches needed before a batch-means variance alone is trusted (no within-interval floor)."""


@dataclass(frozen=True)
class Estimate:
    """A weighted mean of interval values and the variance of that mean."""

    value: FloatArray
    variance: FloatArray
    """NaN when it cannot be estimated yet."""
    batches: FloatArray
    """Intervals that contributed."""


def _sum(values: FloatArray, *, path: bool) -> FloatArray:
    out: FloatArray = np.cumsum(values, axis=-1) if path else np.sum(values, axis=-1)
    return out


def batch_mean(
    values: FloatArray,
    weights: FloatArray,
    within: FloatArray | None,
    *,
    path: bool = False,
) -> Estimate:
    """Weighted mean of per-interval ``values`` (weight 0 = interval absent) with variance
    max(batch-means variance, sum w^2 within / (sum w)^2).

    ``within`` is each value's own sampling variance (None if unknown: then at least
    `MIN_BATCHES_WITHOUT_FLOOR` batches are required).
    """
    present = weights > 0
    w = np.where(present, weights, 0.0)
    d = np.where(present, values, 0.0)
    sw = _sum(w, path=path)
    swd = _sum(w * d, path=path)
    sw2 = _sum(w * w, path=path)
    sw2d = _sum(w * w * d, path=path)
    sw2d2 = _sum(w * w * d * d, path=path)
    batches = _sum(present.astype(np.float64), path=path)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = swd / sw
        spread = np.maximum(sw2d2 - 2.0 * mean * sw2d + mean * mean * sw2, 0.0)
        batch_var = batches / (batches - 1.0) * spread / (sw * sw)
        batch_var = np.where(batches >= 2, batch_var, np.nan)
        if within is None:
            variance = np.where(batches >= MIN_BATCHES_WITHOUT_FLOOR, batch_var, np.nan)
        else:
            floor = _sum(w * w * np.where(present, within, 0.0), path=path) / (sw * sw)
            variance = np.where(np.isnan(batch_var), floor, np.maximum(batch_var, floor))
    return Estimate(np.asarray(mean), np.asarray(variance), batches)


def mean_difference(
    cand_sum: FloatArray,
    cand_count: FloatArray,
    base_sum: FloatArray,
    base_count: FloatArray,
    *,
    margin: float | FloatArray,
    cand_var: FloatArray | None,
    base_var: FloatArray | None,
    path: bool = False,
) -> Estimate:
    """Estimate of D = mean_B - (1 + margin) mean_A, compared within each interval.

    Intervals are weighted by 1 / (1/n_B + (1+m)^2/n_A), the inverse of their variance when
    both versions have the same spread. ``cand_var`` / ``base_var`` are per-request variances
    per interval for the within-interval floor (None: batch means only). ``margin`` may be an
    array shaped (..., 1) to evaluate several margins at once.
    """
    scale = 1.0 + np.asarray(margin, dtype=np.float64)
    both = (cand_count > 0) & (base_count > 0)
    n_b = np.where(both, cand_count, 1.0)
    n_a = np.where(both, base_count, 1.0)
    values = cand_sum / n_b - scale * base_sum / n_a
    weights = np.where(both, 1.0 / (1.0 / n_b + scale * scale / n_a), 0.0)
    within = None
    if cand_var is not None and base_var is not None:
        within = cand_var / n_b + scale * scale * base_var / n_a
    return batch_mean(values, weights, within, path=path)


def mean_level(
    total: FloatArray,
    count: FloatArray,
    *,
    limit: float,
    var: FloatArray | None,
    path: bool = False,
) -> Estimate:
    """Estimate of mean - limit for one version (intervals weighted by their counts);
    ``var`` is the per-request variance per interval (None: batch means only)."""
    present = count > 0
    n = np.where(present, count, 1.0)
    values = total / n - limit
    weights = np.where(present, count, 0.0)
    within = None if var is None else var / n
    return batch_mean(values, weights, within, path=path)


def log_evalue_positive(estimate: FloatArray, variance: FloatArray, tau: FloatArray) -> FloatArray:
    """Log e-value against "effect <= 0" from an estimate with the given variance.

    Half-normal mixture with scale ``tau`` over positive effects:
    log 2 + 1/2 log(V/(V+t^2)) + t^2 D^2 / (2 V (V+t^2)) + log Phi(t D / sqrt(V (V+t^2))).
    Undefined inputs (no variance yet) give -inf: no evidence.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.asarray(variance, dtype=np.float64)
        t2 = np.asarray(tau, dtype=np.float64) ** 2
        d = np.asarray(estimate, dtype=np.float64)
        total = v + t2
        out = (
            math.log(2.0)
            + 0.5 * np.log(v / total)
            + t2 * d * d / (2.0 * v * total)
            + log_ndtr(np.sqrt(t2) * d / np.sqrt(v * total))
        )
        ok = np.isfinite(out) & (v > 0) & (t2 > 0)
    result: FloatArray = np.where(ok, out, -np.inf)
    return result


def one_sided_radius(variance: FloatArray, tau: FloatArray, alpha: float) -> FloatArray:
    """The x at which `log_evalue_positive(x, variance, tau)` reaches log(1/alpha).

    An estimate above x rejects "effect <= 0"; so estimate - x is a lower confidence bound
    and estimate + x an upper one (each at alpha). NaN where the variance is unknown.
    """
    v = np.asarray(variance, dtype=np.float64)
    t2 = np.asarray(tau, dtype=np.float64) ** 2 * np.ones_like(v)
    target = math.log(1.0 / alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        # At the two-sided radius the one-sided e-value is already above 1/alpha.
        high = np.sqrt(v * (v + t2) / t2 * (2.0 * target + np.log1p(t2 / v)))
    low = np.zeros_like(high)
    for _ in range(60):
        mid = 0.5 * (low + high)
        above = log_evalue_positive(mid, v, np.sqrt(t2)) >= target
        high = np.where(above, mid, high)
        low = np.where(above, low, mid)
    out: FloatArray = np.where((v > 0) & np.isfinite(v), high, np.nan)
    return out


def two_sided_radius(variance: FloatArray, tau: FloatArray, alpha: float) -> FloatArray:
    """Radius of the two-sided normal-mixture confidence sequence at level alpha:
    sqrt(V (V + t^2) / t^2 * (2 log(1/alpha) + log(1 + t^2 / V)))."""
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.asarray(variance, dtype=np.float64)
        t2 = np.asarray(tau, dtype=np.float64) ** 2
        out: FloatArray = np.sqrt(
            v * (v + t2) / t2 * (2.0 * math.log(1.0 / alpha) + np.log1p(t2 / v))
        )
    return np.where((v > 0) & np.isfinite(v), out, np.nan)
