"""A/B/n: simultaneous pairwise comparisons, elimination, winner and traffic weights."""

from __future__ import annotations

import numpy as np
import pytest

from gitops_rollout.analysis import abn


@pytest.mark.parametrize(
    ("p_best", "alive", "floor", "expected"),
    [
        pytest.param([0.25, 0.25, 0.25, 0.25], [1, 1, 1, 1], 0.10, [25, 25, 25, 25], id="even"),
        pytest.param([0.0, 0.0, 1.0, 0.0], [1, 1, 1, 1], 0.10, [10, 10, 70, 10], id="floor"),
        pytest.param([0.1, 0.0, 0.9, 0.0], [1, 0, 1, 0], 0.10, [18, 0, 82, 0], id="eliminated"),
        pytest.param([0.5, 0.5, 0.0], [1, 1, 1], 0.40, [34, 33, 33], id="floor-too-high"),
        pytest.param([1 / 3, 1 / 3, 1 / 3], [1, 1, 1], 0.0, [34, 33, 33], id="remainder"),
        pytest.param([0.0, 1.0], [1, 1], 0.125, [13, 87], id="fractional-floor-rounds-up"),
    ],
)
def test_allocate_gives_integer_weights_summing_to_100(p_best, alive, floor, expected):
    got = abn.allocate(np.asarray(p_best), np.asarray(alive, dtype=bool), floor=floor)
    assert got.tolist() == expected
    assert int(got.sum()) == 100


def test_allocate_works_on_many_rollouts_at_once():
    rng = np.random.default_rng(41)
    p = rng.dirichlet(np.ones(4), 1000)
    alive = rng.random((1000, 4)) < 0.8
    alive[:, 0] = True
    got = abn.allocate(p, alive, floor=0.1)
    assert (got.sum(axis=1) == 100).all()
    assert (got[alive] >= 10).all()
    assert (got[~alive] == 0).all()


def test_probability_best_ranks_arms_and_ignores_eliminated_ones():
    means = np.array([0.050, 0.051, 0.060, 0.070])
    errors = np.array([0.001, 0.001, 0.001, 0.001])
    alive = np.array([True, True, True, False])
    p = abn.probability_best(means, errors, alive)
    assert p.sum() == pytest.approx(1.0)
    assert p[3] == 0.0
    assert p[2] > 0.99
    low = abn.probability_best(means, errors, alive, prefer_higher=False)
    assert low[0] > low[1] > low[2]


def test_better_is_transitive():
    difference = np.array([[0.0, 1.0, 2.0], [-1.0, 0.0, 1.0], [-2.0, -1.0, 0.0]])
    radius = np.array([[0.0, 0.5, 5.0], [0.5, 0.0, 0.5], [5.0, 0.5, 0.0]])
    pw = abn.Pairwise(difference, radius, np.zeros(3), np.zeros(3))
    better = pw.better()
    # 0 beats 1 and 1 beats 2 directly; 0 beats 2 only through 1.
    assert better.astype(int).tolist() == [[0, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert abn.winner(better, np.ones(3, dtype=bool)) == 0
    assert abn.winner(better, np.array([False, True, True])) == -1
    assert abn.survivors(better, np.zeros(3, dtype=bool)).tolist() == [True, False, False]


def _clicks(rng, runs, ctr, per_arm, intervals):
    den = rng.poisson(per_arm, (runs, len(ctr), intervals)).astype(float)
    num = rng.binomial(den.astype(np.int64), np.asarray(ctr)[None, :, None]).astype(float)
    return num, den


def test_no_wrong_winner_and_no_arm_eliminated_when_all_arms_are_equal():
    rng = np.random.default_rng(42)
    num, den = _clicks(rng, 2000, [0.05, 0.05, 0.05], 5000, 30)
    eliminated = np.zeros(2000, dtype=bool)
    for k in range(1, 31):
        pw = abn.pairwise(num[..., :k], den[..., :k], alpha=0.05, spread=abn.Spread.BERNOULLI)
        eliminated |= ~abn.survivors(pw.better(), np.zeros((2000, 3), dtype=bool)).all(axis=1)
    assert np.mean(eliminated) <= 0.05


def test_the_best_arm_wins_and_the_worst_is_eliminated_first():
    rng = np.random.default_rng(43)
    num, den = _clicks(rng, 300, [0.05, 0.05, 0.06, 0.04], 15000, 30)
    pw = abn.pairwise(num, den, alpha=0.01, spread=abn.Spread.BERNOULLI)
    better = pw.better()
    win = abn.winner(better, np.ones((300, 4), dtype=bool))
    assert np.mean(win == 2) >= 0.95
    early = abn.pairwise(num[..., :3], den[..., :3], alpha=0.01, spread=abn.Spread.BERNOULLI)
    out = ~abn.survivors(early.better(), np.zeros((300, 4), dtype=bool))
    assert out[:, 3].mean() > out[:, 0].mean()


def test_lower_is_better_rewards_are_oriented():
    rng = np.random.default_rng(44)
    num, den = _clicks(rng, 1, [0.05, 0.03], 50000, 20)
    pw = abn.pairwise(num[0], den[0], alpha=0.01, spread=abn.Spread.BERNOULLI, prefer_higher=False)
    assert pw.better().tolist() == [[False, False], [True, False]]
    assert pw.means[1] < pw.means[0]
