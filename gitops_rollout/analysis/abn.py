"""A/B/n: which arm has the best reward, which arms are out, and where traffic should go.

Every pair of arms gets a two-sided confidence sequence on the difference of their reward per
request (or per denominator), compared within intervals so that traffic moving between arms
cannot bias it, at alpha 2 alpha / (K (K - 1)) each so that all of them hold at once with
probability 1 - alpha. An arm proven worse than some other arm is eliminated; an arm proven
better than every other arm (directly, or through arms it beats) is the winner, provided it
passed its guardrails. Traffic among the survivors follows each arm's probability of being best
(a normal approximation, computed by quadrature, no random draws) above an exploration floor;
the weights never affect the validity of the confidence sequences, because they are chosen
before the next interval's data exist.

Arrays carry any leading axes (arms, then intervals, last); the benchmark passes thousands of
rollouts at once. Guardrails and the final action are left to `guardrails` and `decide`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from scipy.special import log_ndtr

from gitops_rollout.analysis import confseq

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

REWARD_TAU = 0.05
"""Mixture scale relative to the mean reward: tuned to resolve a 5 % lead fastest."""
QUADRATURE_POINTS = 256


class Spread(StrEnum):
    """How a reward varies within an interval, for the variance floor of early intervals."""

    POISSON = "poisson"
    """Counts of events per request (variance = rate)."""
    BERNOULLI = "bernoulli"
    """A share in [0, 1] (variance = p (1 - p))."""
    UNKNOWN = "unknown"
    """A mean of arbitrary values: only batch means, so a few intervals are needed."""


@dataclass(frozen=True)
class Pairwise:
    """All pairwise comparisons; `difference[..., i, j]` estimates reward_i - reward_j,
    oriented so that larger is better."""

    difference: FloatArray
    radius: FloatArray
    """Half-width of the simultaneous confidence sequence (NaN while unknown)."""
    means: FloatArray
    """Each arm's pooled reward (in the metric's own orientation)."""
    std_errors: FloatArray

    @property
    def lower(self) -> FloatArray:
        out: FloatArray = self.difference - self.radius
        return out

    def better(self, out: BoolArray | None = None) -> BoolArray:
        """better[..., i, j]: arm i is proven better than arm j, directly or through arms it
        beats. Arms in ``out`` (failed a guardrail) neither beat nor are beaten: a failed arm
        must not eliminate the others."""
        direct = np.nan_to_num(self.lower, nan=-np.inf) > 0.0
        if out is not None:
            direct &= ~out[..., :, None] & ~out[..., None, :]
        arms = direct.shape[-1]
        closed = direct.copy()
        for k in range(arms):
            closed |= closed[..., :, k, None] & closed[..., None, k, :]
        result: BoolArray = closed & ~np.eye(arms, dtype=bool)
        return result


def pairwise(
    numerator: FloatArray,
    denominator: FloatArray,
    *,
    alpha: float,
    spread: Spread,
    prefer_higher: bool = True,
) -> Pairwise:
    """Compare every pair of arms; inputs have shape (..., arms, intervals)."""
    arms = numerator.shape[-2]
    pair_alpha = 2.0 * alpha / (arms * (arms - 1)) if arms > 1 else alpha
    sign = 1.0 if prefer_higher else -1.0
    lead = numerator.shape[:-2]
    difference = np.zeros((*lead, arms, arms))
    radius = np.zeros((*lead, arms, arms))
    total_num = np.sum(numerator, axis=(-2, -1))
    total_den = np.sum(denominator, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = REWARD_TAU * np.abs(total_num / total_den)
    for i in range(arms):
        for j in range(i + 1, arms):
            within_i, within_j = _within(numerator, denominator, i, j, spread)
            est = confseq.mean_difference(
                numerator[..., i, :],
                denominator[..., i, :],
                numerator[..., j, :],
                denominator[..., j, :],
                margin=0.0,
                cand_var=within_i,
                base_var=within_j,
            )
            r = confseq.two_sided_radius(est.variance, tau, pair_alpha)
            difference[..., i, j] = sign * est.value
            difference[..., j, i] = -sign * est.value
            radius[..., i, j] = radius[..., j, i] = r
    means = np.zeros((*lead, arms))
    errors = np.zeros((*lead, arms))
    for i in range(arms):
        var = _per_unit_variance(numerator[..., i, :], denominator[..., i, :], spread)
        level = confseq.mean_level(numerator[..., i, :], denominator[..., i, :], limit=0.0, var=var)
        means[..., i] = level.value
        errors[..., i] = np.sqrt(level.variance)
    return Pairwise(difference, radius, means, errors)


def _per_unit_variance(num: FloatArray, den: FloatArray, spread: Spread) -> FloatArray | None:
    if spread is Spread.UNKNOWN:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(den > 0, num / den, 0.0)
    if spread is Spread.BERNOULLI:
        rate = np.clip(rate, 0.0, 1.0)
        out: FloatArray = rate * (1.0 - rate)
        return out
    return rate


def _within(
    num: FloatArray, den: FloatArray, i: int, j: int, spread: Spread
) -> tuple[FloatArray | None, FloatArray | None]:
    """Per-request variance per interval for a pair, from both arms pooled (the spread under
    "no difference", and not flattering an arm that has had little traffic)."""
    pooled = _per_unit_variance(
        num[..., i, :] + num[..., j, :], den[..., i, :] + den[..., j, :], spread
    )
    return pooled, pooled


def winner(better: BoolArray, eligible: BoolArray, out: BoolArray | None = None) -> IntArray:
    """Index of the eligible arm proven better than every other arm still in contention (not
    in ``out``), else -1."""
    arms = better.shape[-1]
    contenders = np.ones(better.shape[:-1], dtype=bool) if out is None else ~out
    beaten = better | ~contenders[..., None, :] | np.eye(arms, dtype=bool)
    beats_all = np.all(beaten, axis=-1)
    candidates = beats_all & eligible & contenders
    found: IntArray = np.where(
        np.any(candidates, axis=-1), np.argmax(candidates, axis=-1), -1
    ).astype(np.int64)
    return found


def survivors(better: BoolArray, failed: BoolArray) -> BoolArray:
    """Arms not proven worse than another arm and not failed by a guardrail."""
    out: BoolArray = ~np.any(better, axis=-2) & ~failed
    return out


def probability_best(
    means: FloatArray, std_errors: FloatArray, alive: BoolArray, *, prefer_higher: bool = True
) -> FloatArray:
    """P(arm is best among the alive arms) under independent normal approximations."""
    mu = np.nan_to_num(means if prefer_higher else -means)
    scale = np.maximum(np.nan_to_num(std_errors, nan=0.0), 1e-12 * (1.0 + np.abs(mu)))
    anyone = np.any(alive, axis=-1, keepdims=True)
    big = np.where(alive, mu + 8.0 * scale, -np.inf).max(axis=-1, keepdims=True)
    small = np.where(alive, mu - 8.0 * scale, np.inf).min(axis=-1, keepdims=True)
    big, small = np.where(anyone, big, 1.0), np.where(anyone, small, 0.0)
    steps = np.linspace(0.0, 1.0, QUADRATURE_POINTS)
    x = small[..., None] + (big - small)[..., None] * steps  # (..., 1, Q)
    z = (x - mu[..., None]) / scale[..., None]  # (..., A, Q)
    log_cdf = np.where(alive[..., None], log_ndtr(z), 0.0)
    log_pdf = -0.5 * z * z - np.log(scale[..., None]) - 0.5 * math.log(2.0 * math.pi)
    others = np.sum(log_cdf, axis=-2, keepdims=True) - log_cdf
    mass = np.sum(np.exp(log_pdf + others), axis=-1)
    mass = np.where(alive, mass, 0.0)
    total = np.sum(mass, axis=-1, keepdims=True)
    uniform = alive / np.maximum(np.sum(alive, axis=-1, keepdims=True), 1)
    out: FloatArray = np.where(total > 0, mass / np.where(total > 0, total, 1.0), uniform)
    return out


def allocate(p_best: FloatArray, alive: BoolArray, *, floor: float) -> IntArray:
    """Integer percentages summing to 100: each alive arm gets at least ceil(100 floor), the
    rest in proportion to its probability of being best; eliminated arms get 0."""
    count = np.sum(alive, axis=-1, keepdims=True)
    least = math.ceil(100.0 * floor - 1e-9)
    squeezed = count * least > 100
    least_each = np.where(squeezed, 0, least)
    spare = 100 - count * least_each
    p = np.where(alive, p_best, 0.0)
    total = np.sum(p, axis=-1, keepdims=True)
    p = np.where(total > 0, p / np.where(total > 0, total, 1.0), alive / np.maximum(count, 1))
    p = np.where(squeezed, alive / np.maximum(count, 1), p)
    target = spare * p
    whole = np.floor(target)
    left = (spare - np.sum(whole, axis=-1, keepdims=True)).astype(np.int64)
    fraction = np.where(alive, target - whole, -1.0)
    order = np.argsort(-fraction, axis=-1, kind="stable")
    rank = np.argsort(order, axis=-1, kind="stable")
    whole = whole + (rank < left)
    out: IntArray = np.where(alive, whole + least_each, 0).astype(np.int64)
    return out
