"""Data gates: warm-up exclusion, the sample-ratio e-process and the per-pass data gate."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

from gitops_rollout.analysis import gates

from . import simdata


@pytest.mark.parametrize(
    ("requests", "seconds", "warm_requests", "excluded"),
    [
        pytest.param([0, 50, 50, 50, 50], 0.0, 0.0, [0, 0, 0, 0, 0], id="no-warmup"),
        pytest.param(
            [0, 50, 50, 50, 50], 120.0, 0.0, [0, 1, 1, 0, 0], id="2-min-from-first-traffic"
        ),
        pytest.param([50, 50, 50, 50, 50], 90.0, 0.0, [1, 1, 0, 0, 0], id="90s-covers-straddle"),
        pytest.param([40, 40, 40, 40, 40], 0.0, 100.0, [1, 1, 1, 0, 0], id="100-requests"),
        pytest.param([40, 40, 40, 40, 40], 0.0, 80.0, [1, 1, 0, 0, 0], id="80-requests-boundary"),
        pytest.param([40, 40, 40, 40, 40], 120.0, 100.0, [1, 1, 1, 0, 0], id="both-longest"),
        pytest.param([0, 0, 40, 40, 40], 0.0, 50.0, [0, 0, 1, 1, 0], id="requests-from-first"),
    ],
)
def test_warmup_excludes_the_first_minutes_or_requests(requests, seconds, warm_requests, excluded):
    starts = np.arange(5) * 60.0
    ok = np.ones(5, dtype=bool)
    got = gates.warmup_excluded(
        starts,
        np.asarray([requests], dtype=float),
        ok,
        warmup_seconds=seconds,
        warmup_requests=warm_requests,
    )
    assert got.astype(int).tolist() == excluded


def test_missing_scrapes_do_not_count_as_warm_requests():
    ok = np.array([True, False, True, True])
    got = gates.warmup_excluded(
        np.arange(4) * 60.0,
        np.array([[60.0, 60.0, 60.0, 60.0]]),
        ok,
        warmup_seconds=0.0,
        warmup_requests=100.0,
    )
    assert got.tolist() == [True, True, True, False]


def test_sample_ratio_e_process_crosses_at_most_alpha_when_the_split_is_right():
    rng = np.random.default_rng(31)
    shares = np.array([0.9, 0.1])
    counts = rng.multinomial(rng.poisson(6000, (20000, 30)), shares)  # (runs, intervals, 2)
    running = np.cumsum(counts, axis=1).astype(float)
    log_e = gates.srm_log_evalue(running, shares)
    crossed = np.max(log_e, axis=1) >= math.log(1 / 0.01)
    assert np.mean(crossed) <= 0.01


def test_sample_ratio_mismatch_is_found_within_minutes():
    rng = np.random.default_rng(32)
    counts = rng.multinomial(rng.poisson(6000, (500, 5)), [0.53, 0.47]).astype(float)
    log_e = gates.srm_log_evalue(np.cumsum(counts, axis=1), np.array([0.5, 0.5]))
    assert np.mean(np.max(log_e, axis=1) >= math.log(1 / gates.SRM_ALPHA)) >= 0.95


def _gate(evidence, now, *, step_started=simdata.T0, timeout=timedelta(minutes=10)):
    return gates.check_data(
        evidence, ["v1", "v2"], step_started=step_started, now=now, no_data_timeout=timeout
    )


def test_fresh_complete_evidence_passes_the_gate():
    ev = simdata.canary(np.random.default_rng(33), intervals=3)
    assert _gate(ev, ev.boundaries[-1]) is None


@pytest.mark.parametrize(
    ("missing", "now_offset", "timeout", "fragment", "timed_out"),
    [
        pytest.param(
            (2,),
            0,
            10,
            "scrape for 10:02-10:03 is missing for v1 and v2",
            False,
            id="latest-missing",
        ),
        pytest.param((), 5, 10, "newest metrics end at 10:03, too long ago", False, id="stale"),
        pytest.param((), 12, 10, "no usable data since 10:03 (12 min)", True, id="timed-out"),
        pytest.param(
            (1, 2), 0, 2, "no usable data since 10:01 (2 min)", True, id="missing-until-timeout"
        ),
    ],
)
def test_gate_holds_without_fresh_data(missing, now_offset, timeout, fragment, timed_out):
    ev = simdata.canary(np.random.default_rng(34), intervals=3, missing=missing)
    gate = _gate(
        ev, ev.boundaries[-1] + timedelta(minutes=now_offset), timeout=timedelta(minutes=timeout)
    )
    assert gate is not None
    assert fragment in gate.reason
    assert gate.timed_out is timed_out


def test_a_version_without_metrics_is_no_data():
    ev = simdata.canary(np.random.default_rng(35), intervals=3)
    gate = gates.check_data(
        ev,
        ["v1", "v3"],
        step_started=simdata.T0,
        now=ev.boundaries[-1],
        no_data_timeout=timedelta(minutes=10),
    )
    assert gate is not None and gate.reason == "no metrics were found for v3"


def test_a_version_serving_nothing_is_no_data():
    ev = simdata.canary(np.random.default_rng(36), intervals=3, share=0.0)
    gate = _gate(ev, ev.boundaries[-1])
    assert gate is not None and gate.reason == "v2 served no requests in 10:02-10:03"
