"""The daemon loop: intervals, no overlap, isolation of failures, reloads, shutdown, metrics."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from gitops_rollout.inventory.live import LiveInventory
from gitops_rollout.lease import ShardAssignment, ShardLeases, shard_of
from gitops_rollout.observability import Health, Metrics, ObservabilityServer, logfmt
from gitops_rollout.schedule import DaemonSettings, PolicyListing, Scheduler, Service, run
from gitops_rollout.settings import ScheduleSettings

TICK = timedelta(seconds=0.15)
SETTINGS = DaemonSettings(
    default_interval=TICK,
    jitter=timedelta(0),
    reload_interval=timedelta(seconds=0.1),
    backoff_max=timedelta(seconds=2),
    grace=timedelta(seconds=2),
    listen=None,
)


@dataclass(frozen=True)
class Decision:
    policy: str
    cluster: str
    action: str
    reason: str


@dataclass
class Report:
    decisions: Sequence[Decision] = ()
    prs_opened: int = 0
    errors: Mapping[str, Sequence[str]] = field(default_factory=dict)


class Passes:
    """A recording `run_pass`: per-policy behaviour, call log, overlap detection."""

    def __init__(self, behaviour: Mapping[str, Callable[[], Report]] | None = None) -> None:
        self.behaviour = dict(behaviour or {})
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.running: dict[str, int] = defaultdict(int)
        self.max_running: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()

    def __call__(self, names: list[str]) -> Report:
        (name,) = names
        with self.lock:
            self.calls[name].append(time.monotonic())
            self.running[name] += 1
            self.max_running[name] = max(self.max_running[name], self.running[name])
        try:
            action = self.behaviour.get(name)
            return (
                action()
                if action
                else Report(
                    decisions=[Decision(name, "prod-east", "step", "candidate within bounds")],
                    prs_opened=1,
                )
            )
        finally:
            with self.lock:
                self.running[name] -= 1

    def count(self, name: str) -> int:
        with self.lock:
            return len(self.calls[name])


def listing(*names: str, version: str = "v1", interval: timedelta = TICK) -> PolicyListing:
    return PolicyListing(version, dict.fromkeys(names, interval))


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


@pytest.fixture
def make_scheduler() -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(**kw: object) -> Scheduler:
        kw.setdefault("settings", SETTINGS)
        scheduler = Scheduler(**kw)  # type: ignore[arg-type]
        made.append(scheduler)
        scheduler.start()
        return scheduler

    yield make
    for scheduler in made:
        scheduler.stop(timedelta(seconds=2))


def test_passes_run_at_their_interval_without_overlap(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    def slow() -> Report:
        time.sleep(0.4)  # longer than the interval: the next run must not start alongside
        return Report()

    passes = Passes({"slow": slow})
    make_scheduler(run_pass=passes, list_policies=lambda: listing("iris", "slow"))

    assert wait_for(lambda: passes.count("iris") >= 5 and passes.count("slow") >= 2)
    iris = passes.calls["iris"]
    gaps = [b - a for a, b in itertools.pairwise(iris)]
    assert min(gaps) > TICK.total_seconds() * 0.6, gaps
    assert passes.max_running["slow"] == 1
    assert passes.max_running["iris"] == 1


def test_a_failing_policy_does_not_stop_the_others_and_backs_off(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    def boom() -> Report:
        raise RuntimeError("prometheus unreachable")

    def git_error() -> Report:
        return Report(errors={"git": ["push rejected"]})

    passes = Passes({"broken": boom, "rejected": git_error})
    scheduler = make_scheduler(
        run_pass=passes, list_policies=lambda: listing("iris", "broken", "rejected")
    )

    assert wait_for(lambda: passes.count("iris") >= 10, timeout=6)
    # Backoff: 2x, 4x, 8x... the interval after consecutive failures.
    assert passes.count("broken") < passes.count("iris") / 2
    assert passes.count("rejected") < passes.count("iris") / 2
    failures = scheduler.metrics.consecutive_failures
    assert failures.labels(policy="broken")._value.get() >= 2
    assert failures.labels(policy="iris")._value.get() == 0
    text = scheduler.metrics.render().decode()
    assert 'gitops_rollout_errors_total{stage="pass"}' in text
    assert 'gitops_rollout_errors_total{stage="git"}' in text


def test_policy_set_reload_adds_and_removes_jobs(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    current = [listing("iris", "scoring")]
    passes = Passes()
    scheduler = make_scheduler(run_pass=passes, list_policies=lambda: current[0])
    assert wait_for(lambda: passes.count("scoring") >= 1)

    current[0] = listing("iris", "wisdom", version="v2", interval=TICK * 2)

    assert wait_for(lambda: set(scheduler.policies()) == {"iris", "wisdom"})
    assert scheduler.policies()["wisdom"] == TICK * 2
    assert wait_for(lambda: passes.count("wisdom") >= 1)
    before = passes.count("scoring")
    time.sleep(TICK.total_seconds() * 3)
    assert passes.count("scoring") <= before + 1  # at most one already running when removed


def test_failed_reload_keeps_the_current_jobs(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    answers: list[PolicyListing | Exception] = [listing("iris")]

    def list_policies() -> PolicyListing:
        answer = answers[-1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    passes = Passes()
    scheduler = make_scheduler(run_pass=passes, list_policies=list_policies)
    answers.append(OSError("git fetch failed"))
    time.sleep(0.3)
    assert set(scheduler.policies()) == {"iris"}
    assert wait_for(lambda: passes.count("iris") >= 3)


def test_only_this_replicas_shard_runs_and_only_while_its_lease_is_held(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    names = [f"model-{i}" for i in range(8)]
    mine = {n for n in names if shard_of(n, 2) == 1}
    assert mine and mine != set(names)

    class Gate:
        held = False

        def holds(self, shard: int) -> bool:
            assert shard == 1
            return self.held

    gate = Gate()
    passes = Passes()
    scheduler = make_scheduler(
        run_pass=passes,
        list_policies=lambda: listing(*names),
        shards=ShardAssignment(1, 2),
        gate=gate,
    )
    assert set(scheduler.policies()) == mine
    time.sleep(0.4)
    assert sum(passes.count(n) for n in names) == 0, "no pass without the lease"
    skipped = scheduler.metrics.passes.labels(outcome="skipped")._value.get()
    assert skipped >= len(mine)

    assert scheduler.metrics.shard_held.labels(shard="1")._value.get() == 0
    gate.held = True
    assert wait_for(lambda: all(passes.count(n) >= 1 for n in mine))
    assert scheduler.metrics.shard_held.labels(shard="1")._value.get() == 1
    assert all(passes.count(n) == 0 for n in set(names) - mine)


def test_stop_waits_for_the_running_pass_then_abandons_after_grace() -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck() -> Report:
        entered.set()
        release.wait(5)
        return Report()

    passes = Passes({"stuck": stuck})
    scheduler = Scheduler(
        run_pass=passes, list_policies=lambda: listing("stuck"), settings=SETTINGS
    )
    scheduler.start()
    try:
        assert entered.wait(5)
        started = time.monotonic()
        assert scheduler.stop(timedelta(seconds=0.2)) is False
        assert 0.15 < time.monotonic() - started < 2
        assert not scheduler.running()
    finally:
        release.set()
    count = passes.count("stuck")
    time.sleep(0.3)
    assert passes.count("stuck") == count, "no pass starts after stop"


def test_sigterm_finishes_the_running_pass_and_stops(caplog: pytest.LogCaptureFixture) -> None:
    entered = threading.Event()
    finished = threading.Event()

    def slow() -> Report:
        entered.set()
        time.sleep(0.3)
        finished.set()
        return Report(decisions=[Decision("iris", "prod-east", "hold", 'waiting for "sync"')])

    def terminate_once_a_pass_runs() -> None:
        if entered.wait(5):
            os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_once_a_pass_runs, daemon=True)
    killer.start()
    previous = signal.getsignal(signal.SIGTERM)
    caplog.set_level(logging.INFO)
    started = time.monotonic()

    fallback = threading.Event()  # bounds the test if the signal were lost
    timer = threading.Timer(10, fallback.set)
    timer.start()
    try:
        clean = run(
            run_pass=Passes({"iris": slow}),
            list_policies=lambda: listing("iris", interval=timedelta(seconds=30)),
            settings=SETTINGS,
            stop=fallback,
        )
    finally:
        timer.cancel()

    assert clean is True
    assert finished.is_set(), "the pass in flight was allowed to finish"
    assert time.monotonic() - started < 5
    assert signal.getsignal(signal.SIGTERM) is previous, "signal handler restored"
    assert any(
        r.getMessage() == "decision policy=iris cluster=prod-east action=hold "
        'reason="waiting for \\"sync\\""'
        for r in caplog.records
    )
    killer.join(1)


def test_run_stops_when_its_stop_event_is_set() -> None:
    stop = threading.Event()
    passes = Passes()
    result: list[bool] = []
    thread = threading.Thread(
        target=lambda: result.append(
            run(
                run_pass=passes,
                list_policies=lambda: listing("iris"),
                settings=SETTINGS,
                stop=stop,
                handle_signals=False,
            )
        )
    )
    thread.start()
    assert wait_for(lambda: passes.count("iris") >= 2)
    stop.set()
    thread.join(5)
    assert result == [True]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - 127.0.0.1 only
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_probes_and_metrics_reflect_passes(make_scheduler: Callable[..., Scheduler]) -> None:
    metrics, health = Metrics(), Health()
    server = ObservabilityServer("127.0.0.1:0", metrics=metrics, health=health)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(base + "/readyz")[0] == 503
        gate = threading.Event()

        def first_waits() -> Report:
            gate.wait(5)
            return Report(
                decisions=[
                    Decision("iris", "prod-east", "step", "ok"),
                    Decision("iris", "staging", "promote", "ok"),
                ],
                prs_opened=2,
                errors={"metrics": []},
            )

        passes = Passes({"iris": first_waits})
        make_scheduler(
            run_pass=passes,
            list_policies=lambda: listing("iris"),
            metrics=metrics,
            health=health,
        )
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/readyz")[0] == 503, "not ready before the first successful pass"
        gate.set()
        assert wait_for(lambda: passes.count("iris") >= 3)
        assert get(base + "/readyz") == (200, "ready\n")

        status, text = get(base + "/metrics")
        assert status == 200
        values = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
        assert values['gitops_rollout_passes_total{outcome="succeeded"}'] >= 2
        assert values['gitops_rollout_decisions_total{action="step"}'] >= 2
        assert values['gitops_rollout_decisions_total{action="promote"}'] >= 2
        assert values["gitops_rollout_pull_requests_opened_total"] >= 4
        assert values["gitops_rollout_pass_duration_seconds_count"] >= 2
        assert values["gitops_rollout_policies_scheduled"] == 1
        assert get(base + "/nothing")[0] == 404
    finally:
        server.stop()


def test_daemon_settings_from_the_cli_settings_group() -> None:
    group = ScheduleSettings(interval_s=30.0, jitter_s=2.0, listen="0.0.0.0:8080")
    daemon = DaemonSettings.from_settings(group, grace=timedelta(seconds=10))
    assert daemon.default_interval == timedelta(seconds=30)
    assert daemon.jitter == timedelta(seconds=2)
    assert daemon.listen == "0.0.0.0:8080"
    assert daemon.grace == timedelta(seconds=10)


def _services_fit(live: LiveInventory, leases: ShardLeases) -> Sequence[Service]:
    """Type check only (mypy): the live inventory and the leases plug into `run(services=)`."""
    return [live, leases]


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        ({"policy": "iris", "action": "step"}, "policy=iris action=step"),
        ({"reason": "p95 latency 120ms > 100ms"}, 'reason="p95 latency 120ms > 100ms"'),
        ({"reason": ""}, 'reason=""'),
        ({"cluster": "prod-east", "weight": 25}, "cluster=prod-east weight=25"),
    ],
    ids=["bare", "quoted", "empty", "number"],
)
def test_logfmt(fields: dict[str, object], line: str) -> None:
    assert logfmt(**fields) == line
