"""Mean and tail latency tests from histogram batches: the confidence sequence covers the true
difference over the whole path, and the guardrail e-values cross at most alpha at their margins
(A/A and at-margin), at low and high traffic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gitops_rollout.analysis import confseq
from gitops_rollout.analysis.catalogue import Source
from gitops_rollout.analysis.guardrails import Guardrail, VersionCounts, evaluate

from .simdata import BUCKETS, latency_moments

INTERVALS = 40


def latency_counts(rng, requests, *, scale=1.0, slow=0.01):
    """Histogram and exact-in-distribution sum per interval for requests of shape (R, K)."""
    prob, mean, var = latency_moments(scale, slow)
    hist = rng.multinomial(requests.astype(np.int64), prob).astype(float)
    total = np.sum(hist * mean + np.sqrt(hist * var) * rng.standard_normal(hist.shape), axis=-1)
    return hist, np.maximum(total, 0.0)


def true_mean(scale=1.0, slow=0.01):
    prob, mean, _ = latency_moments(scale, slow)
    return float(np.sum(prob * mean))


def two_versions(rng, runs, *, traffic, share, scale, slow=0.01):
    total = rng.poisson(traffic * 60.0, (runs, INTERVALS))
    n_b = rng.binomial(total, share).astype(float)
    n_a = total - n_b
    hist_a, sum_a = latency_counts(rng, n_a)
    hist_b, sum_b = latency_counts(rng, n_b, scale=scale, slow=slow)
    zeros = np.zeros_like(n_a)
    base = VersionCounts(n_a, zeros, sum_a, hist_a, BUCKETS)
    cand = VersionCounts(n_b, zeros, sum_b, hist_b, BUCKETS)
    return base, cand


def ever(log_e, alpha):
    return float(np.mean(np.max(log_e, axis=1) >= math.log(1.0 / alpha)))


TRAFFIC = [
    pytest.param(10.0, 0.5, id="10rps-half"),
    pytest.param(100.0, 0.1, id="100rps-tenth"),
]


@pytest.mark.parametrize(("traffic", "share"), TRAFFIC)
def test_confidence_sequence_covers_the_difference_over_the_whole_path(traffic, share):
    rng = np.random.default_rng(21)
    base, cand = two_versions(rng, 2000, traffic=traffic, share=share, scale=1.1)
    truth = true_mean(1.1) - true_mean(1.0)
    variance = np.fmax(*(np.where(c.requests > 0, _variance(c), np.nan) for c in (cand, base)))
    est = confseq.mean_difference(
        cand.latency_sum,
        cand.requests,
        base.latency_sum,
        base.requests,
        margin=0.0,
        cand_var=variance,
        base_var=variance,
        path=True,
    )
    tau = 0.05 * true_mean()
    radius = confseq.two_sided_radius(est.variance, np.full(est.value.shape, tau), 0.05)
    missed = np.any(np.abs(est.value - truth) > radius, axis=1)
    assert np.mean(missed) <= 0.05
    # ...and it is not vacuous: by the end it is a few ms wide.
    assert np.median(radius[:, -1]) < 0.1 * true_mean()


def _variance(counts):
    from gitops_rollout.analysis.buckets import interval_variance

    return interval_variance(counts.buckets, counts.bounds, counts.latency_sum, counts.requests)


MEAN = Guardrail("mean-latency", Source.LATENCY_MEAN, None, max_increase=0.05)


@pytest.mark.parametrize(("traffic", "share"), TRAFFIC)
def test_mean_rollback_test_crosses_at_most_alpha_at_its_margin(traffic, share):
    rng = np.random.default_rng(22)
    # The rollback margin is +2 %: a candidate exactly 2 % slower is on the null's boundary.
    base, cand = two_versions(rng, 2000, traffic=traffic, share=share, scale=1.02)
    (test,) = evaluate(MEAN, base, cand, path=True)
    assert ever(test.log_e_fail, 0.05) <= 0.05


@pytest.mark.parametrize(("traffic", "share"), TRAFFIC)
def test_mean_promotion_test_crosses_at_most_alpha_at_its_margin(traffic, share):
    rng = np.random.default_rng(23)
    base, cand = two_versions(rng, 2000, traffic=traffic, share=share, scale=1.05)
    (test,) = evaluate(MEAN, base, cand, path=True)
    assert ever(test.log_e_pass, 0.05) <= 0.05


def test_mean_tests_decide_when_the_difference_is_real():
    rng = np.random.default_rng(24)
    base, cand = two_versions(rng, 300, traffic=100.0, share=0.5, scale=1.2)
    (slow,) = evaluate(MEAN, base, cand, path=True)
    assert ever(slow.log_e_fail[:, :3], 0.01 / 3) >= 0.99
    base, cand = two_versions(rng, 300, traffic=100.0, share=0.5, scale=1.0)
    (same,) = evaluate(MEAN, base, cand, path=True)
    assert ever(same.log_e_pass[:, :20], 0.01) >= 0.95


@pytest.mark.parametrize("metric", ["p95-latency", "p99-latency"])
def test_tail_test_crosses_at_most_alpha_when_versions_are_equal(metric):
    rng = np.random.default_rng(25)
    quantile = 0.95 if metric == "p95-latency" else 0.99
    g = Guardrail(metric, Source.LATENCY_TAIL, quantile, max_increase=0.5)
    base, cand = two_versions(rng, 2000, traffic=100.0, share=0.3, scale=1.0)
    (test,) = evaluate(g, base, cand, path=True)
    assert ever(test.log_e_fail, 0.05) <= 0.05


def test_tail_test_catches_a_slow_path_that_the_mean_barely_shows():
    rng = np.random.default_rng(26)
    g = Guardrail("p99-latency", Source.LATENCY_TAIL, 0.99, max_increase=0.5)
    base, cand = two_versions(rng, 300, traffic=100.0, share=0.5, scale=1.0, slow=0.03)
    (test,) = evaluate(g, base, cand, path=True)
    assert ever(test.log_e_fail[:, :5], 0.01 / 3) >= 0.95


def test_batch_means_alone_waits_for_enough_intervals():
    values = np.array([1.0, 2.0, 3.0])
    weights = np.ones(3)
    est = confseq.batch_mean(values, weights, None, path=True)
    assert np.isnan(est.variance[:2]).all()
    assert est.variance[2] == pytest.approx(np.var(values, ddof=1) / 3)


def test_batch_means_absorbs_overdispersion_the_floor_misses():
    rng = np.random.default_rng(27)
    shift = rng.normal(0.0, 5.0, 200)  # an interval-level wobble no within-interval model sees
    values = shift + rng.normal(0.0, 0.1, 200)
    est = confseq.batch_mean(values, np.ones(200), np.full(200, 0.01))
    assert est.variance == pytest.approx(25.0 / 200, rel=0.3)
