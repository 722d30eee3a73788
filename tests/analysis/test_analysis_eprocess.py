"""The rate e-processes: false crossings stay below alpha when the null holds (A/A), however
often they are looked at, and they cross quickly when it does not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gitops_rollout.analysis import eprocess

INTERVALS = 60
SCHEDULE = np.minimum(np.array([5, 10, 20, 30, 40] + [50] * (INTERVALS - 5)) / 100.0, 0.5)


def simulate(rng, runs, *, traffic, p0, ratio, weights, overdispersed=False):
    """Per-interval (candidate errors, baseline errors, candidate share of requests)."""
    total = rng.poisson(traffic * 60.0, (runs, INTERVALS))
    n_b = rng.binomial(total, weights)
    n_a = total - n_b
    p = np.full((runs, INTERVALS), p0)
    if overdispersed:
        p = p * np.exp(rng.normal(0.0, 0.5, (runs, INTERVALS)))
    e_a = rng.binomial(n_a, np.minimum(p, 1)).astype(float)
    e_b = rng.binomial(n_b, np.minimum(p * ratio, 1)).astype(float)
    share = np.where(total > 0, n_b / np.maximum(total, 1), 0.0)
    return e_b, e_a, share, n_b.astype(float)


def crossing_rate(log_e: np.ndarray, alpha: float) -> float:
    """Share of runs whose e-process ever reached 1/alpha over the whole path."""
    return float(np.mean(np.max(log_e, axis=1) >= math.log(1.0 / alpha)))


AA_CASES = [
    pytest.param(100.0, 0.005, SCHEDULE, False, id="100rps-0.5%-schedule"),
    pytest.param(10.0, 0.01, 0.5, False, id="10rps-1%-half"),
    pytest.param(1000.0, 0.001, 0.1, False, id="1000rps-0.1%-tenth"),
    pytest.param(100.0, 0.005, SCHEDULE, True, id="100rps-overdispersed"),
]


@pytest.mark.parametrize(("traffic", "p0", "weights", "overdispersed"), AA_CASES)
def test_rollback_side_crosses_at_most_alpha_when_candidate_is_equal(
    traffic, p0, weights, overdispersed
):
    rng = np.random.default_rng(11)
    e_b, e_a, share, _ = simulate(
        rng, 3000, traffic=traffic, p0=p0, ratio=1.0, weights=weights, overdispersed=overdispersed
    )
    log_e = eprocess.split_log_evalue(e_b, e_a, share, null_ratio=1.0, worse=True, path=True)
    for alpha in (0.05, 0.01):
        assert crossing_rate(log_e, alpha) <= alpha, alpha


@pytest.mark.parametrize(("traffic", "p0", "weights", "overdispersed"), AA_CASES)
def test_promote_side_crosses_at_most_alpha_at_the_margin(traffic, p0, weights, overdispersed):
    rng = np.random.default_rng(12)
    e_b, e_a, share, _ = simulate(
        rng, 3000, traffic=traffic, p0=p0, ratio=1.5, weights=weights, overdispersed=overdispersed
    )
    log_e = eprocess.split_log_evalue(e_b, e_a, share, null_ratio=1.5, worse=False, path=True)
    assert crossing_rate(log_e, 0.05) <= 0.05


def test_the_whole_null_is_covered_not_only_its_boundary():
    rng = np.random.default_rng(13)
    e_b, e_a, share, _ = simulate(rng, 3000, traffic=100.0, p0=0.005, ratio=0.7, weights=0.5)
    log_e = eprocess.split_log_evalue(e_b, e_a, share, null_ratio=1.0, worse=True, path=True)
    assert crossing_rate(log_e, 0.05) <= 0.01


@pytest.mark.parametrize(
    ("ratio", "null", "worse", "within"),
    [
        pytest.param(2.0, 1.0, True, 10, id="2x-rolled-back-within-10-min"),
        pytest.param(1.0, 1.5, False, 30, id="neutral-proven-within-30-min"),
    ],
)
def test_a_real_difference_is_found(ratio, null, worse, within):
    rng = np.random.default_rng(14)
    e_b, e_a, share, _ = simulate(rng, 1000, traffic=100.0, p0=0.005, ratio=ratio, weights=SCHEDULE)
    log_e = eprocess.split_log_evalue(e_b, e_a, share, null_ratio=null, worse=worse, path=True)
    found = np.max(log_e[:, :within], axis=1) >= math.log(100.0)
    assert np.mean(found) >= 0.9


def test_a_catastrophe_is_found_in_the_first_two_intervals():
    rng = np.random.default_rng(15)
    e_b, e_a, share, _ = simulate(rng, 1000, traffic=100.0, p0=0.005, ratio=10.0, weights=SCHEDULE)
    log_e = eprocess.split_log_evalue(
        e_b[:, :2], e_a[:, :2], share[:, :2], null_ratio=1.0, worse=True, path=True
    )
    crossed = log_e >= math.log(300.0)
    assert np.mean(crossed[:, 0]) >= 0.9
    assert np.mean(crossed[:, 1]) >= 0.99


def test_path_and_final_value_agree():
    rng = np.random.default_rng(16)
    e_b, e_a, share, _ = simulate(rng, 50, traffic=100.0, p0=0.005, ratio=1.3, weights=0.3)
    path = eprocess.split_log_evalue(e_b, e_a, share, null_ratio=1.0, worse=True, path=True)
    final = eprocess.split_log_evalue(e_b, e_a, share, null_ratio=1.0, worse=True)
    np.testing.assert_allclose(path[:, -1], final)


def test_intervals_without_events_or_without_a_version_carry_no_evidence():
    zero = np.zeros(5)
    log_e = eprocess.split_log_evalue(
        np.array([0.0, 3.0, 0.0, 0.0, 0.0]),
        np.array([0.0, 0.0, 5.0, 0.0, 0.0]),
        np.array([0.5, 1.0, 0.0, 0.5, 0.5]),
        null_ratio=1.0,
        worse=True,
    )
    assert log_e == pytest.approx(0.0)
    assert eprocess.split_log_evalue(zero, zero, zero + 0.5, null_ratio=1.0, worse=False) == (
        pytest.approx(0.0)
    )


@pytest.mark.parametrize("worse", [True, False], ids=["above-limit", "below-limit"])
def test_one_sample_test_crosses_at_most_alpha_at_the_limit(worse):
    rng = np.random.default_rng(17)
    exposure = rng.poisson(3000.0, (3000, INTERVALS)).astype(float)
    events = rng.binomial(exposure.astype(np.int64), 0.01).astype(float)
    log_e = eprocess.poisson_log_evalue(events, exposure, null_rate=0.01, worse=worse, path=True)
    assert crossing_rate(log_e, 0.05) <= 0.05


def test_bounds_bracket_the_estimate_and_agree_with_the_tests():
    rng = np.random.default_rng(18)
    e_b, e_a, share, _ = simulate(rng, 1, traffic=100.0, p0=0.005, ratio=2.0, weights=0.5)
    e_b, e_a, share = e_b[0, :20], e_a[0, :20], share[0, :20]
    bounds = eprocess.split_bounds(e_b, e_a, share, alpha_lower=0.01, alpha_upper=0.01)
    assert bounds.lower is not None and bounds.upper is not None and bounds.estimate is not None
    assert bounds.lower < bounds.estimate < bounds.upper
    rejected = eprocess.split_log_evalue(e_b, e_a, share, null_ratio=1.0, worse=True)
    assert (bounds.lower > 1.0) == (float(rejected) >= math.log(100.0))
    assert 1.2 < bounds.estimate < 3.0


def test_one_sample_bounds_contain_the_rate():
    rng = np.random.default_rng(19)
    exposure = rng.poisson(3000.0, 30).astype(float)
    events = rng.binomial(exposure.astype(np.int64), 0.02).astype(float)
    bounds = eprocess.poisson_bounds(events, exposure, alpha_lower=0.01, alpha_upper=0.01)
    assert bounds.lower is not None and bounds.upper is not None
    assert bounds.lower < 0.02 < bounds.upper
    assert bounds.upper / bounds.lower < 1.5
