"""The daemon (`gitops-rollout run`): one APScheduler job per policy around an injected pass.

Each policy runs at its analysis interval with jitter; a job never overlaps itself
(``max_instances=1``) and missed runs coalesce into one. A failing pass backs that policy off
exponentially (capped) while every other policy keeps its rhythm. The policy set is reloaded
when the repository changes (`PolicyListing.version`): jobs are added, removed or re-timed.
With sharding, only this replica's policies get jobs, and each pass first checks that the
shard's Lease is held. SIGTERM stops new passes and waits a grace period for running ones; a
pass abandoned after that is safe to lose, because each pass is crash-safe (state is in Git).

What a pass does is not known here: `run_pass` is injected (reconcile.run_once in the CLI).
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Protocol

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from gitops_rollout.lease import ShardAssignment
from gitops_rollout.observability import (
    DEFAULT_LISTEN,
    Health,
    Metrics,
    ObservabilityServer,
    log_decision,
)
from gitops_rollout.settings import ScheduleSettings

log = logging.getLogger(__name__)

_RELOAD_JOB = "reload-policies"


class DecisionRecord(Protocol):
    """One decision of a pass, as far as logs and metrics need it."""

    @property
    def policy(self) -> str: ...
    @property
    def cluster(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def reason(self) -> str: ...


class PassReport(Protocol):
    """What `run_pass` returns; reconcile's own report type satisfies it structurally."""

    @property
    def decisions(self) -> Sequence[DecisionRecord]:
        """Every decision taken, one per (policy, cluster)."""
        ...

    @property
    def prs_opened(self) -> int:
        """Pull requests opened or updated by the pass."""
        ...

    @property
    def errors(self) -> Mapping[str, Sequence[str]]:
        """Messages by stage (``inventory``, ``metrics``, ``git``...); empty when it succeeded."""
        ...


RunPass = Callable[[list[str]], PassReport]
"""One crash-safe pass over the named policies; raising counts as a failed pass."""


@dataclass(frozen=True)
class PolicyListing:
    """The policy set as the repository holds it now."""

    version: str
    """Changes whenever a policy is added, removed or edited (e.g. the commit of policies/)."""
    intervals: Mapping[str, timedelta]
    """Policy name -> analysis interval."""


ListPolicies = Callable[[], PolicyListing]
"""Read (fetching first if needed) the policy set; raising keeps the current jobs."""


class ShardGate(Protocol):
    def holds(self, shard: int) -> bool:
        """True while this replica may act on the shard (its Lease is held)."""
        ...


class Service(Protocol):
    """Something started before the scheduler and stopped after it (watches, leases)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class DaemonSettings:
    """Timing of the daemon (`settings.ScheduleSettings` holds the part users set)."""

    default_interval: timedelta = timedelta(seconds=60)
    """Interval of a policy that names none (the policy schema's default too)."""
    jitter: timedelta = timedelta(seconds=5)
    """Largest random delay of a run (at most half the policy's interval), so policies and
    replicas do not hit Prometheus and the Git host in lockstep."""
    reload_interval: timedelta = timedelta(seconds=30)
    """How often `list_policies` is called to pick up added, removed or edited policies."""
    backoff_max: timedelta = timedelta(minutes=15)
    """Upper bound of the delay after repeated failures of one policy."""
    grace: timedelta = timedelta(seconds=30)
    """On SIGTERM, how long running passes may finish before they are abandoned; keep it
    below the pod's terminationGracePeriodSeconds."""
    workers: int = 4
    """Passes that may run at the same time (different policies)."""
    listen: str | None = DEFAULT_LISTEN
    """``host:port`` of /healthz, /readyz and /metrics; None serves nothing."""

    @classmethod
    def from_settings(cls, group: ScheduleSettings, **overrides: Any) -> DaemonSettings:
        """From the Settings group the CLI builds (seconds as floats), plus overrides."""
        values: dict[str, Any] = {
            "default_interval": timedelta(seconds=group.interval_s),
            "jitter": timedelta(seconds=group.jitter_s),
            "listen": group.listen or None,
        }
        return cls(**{**values, **overrides})


@dataclass
class _PolicyState:
    interval: timedelta
    failures: int = 0


@dataclass
class _Inflight:
    lock: threading.Condition = field(default_factory=threading.Condition)
    count: int = 0


class Scheduler:
    """Jobs per policy, reloads, backoff and the graceful stop; see the module docstring."""

    def __init__(
        self,
        *,
        run_pass: RunPass,
        list_policies: ListPolicies,
        settings: DaemonSettings | None = None,
        metrics: Metrics | None = None,
        health: Health | None = None,
        shards: ShardAssignment | None = None,
        gate: ShardGate | None = None,
    ) -> None:
        self._run_pass, self._list_policies = run_pass, list_policies
        self.settings = settings or DaemonSettings()
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self.health.alive = self.running
        self._shards, self._gate = shards, gate
        self._policies: dict[str, _PolicyState] = {}
        self._version: str | None = None
        self._lock = threading.Lock()
        self._inflight = _Inflight()
        self._stopping = threading.Event()
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=max(1, self.settings.workers))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load the policies, schedule them and the reload job, and start running."""
        self._scheduler.start()
        self.reload()
        self._scheduler.add_job(
            self.reload,
            IntervalTrigger(seconds=self.settings.reload_interval.total_seconds(), timezone=UTC),
            id=_RELOAD_JOB,
            replace_existing=True,
        )

    def running(self) -> bool:
        return bool(self._scheduler.running) and not self._stopping.is_set()

    def stop(self, grace: timedelta | None = None) -> bool:
        """Start no new pass; wait up to `grace` for running ones. True when none was abandoned."""
        grace = self.settings.grace if grace is None else grace
        self._stopping.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        deadline = time.monotonic() + grace.total_seconds()
        with self._inflight.lock:
            while self._inflight.count and time.monotonic() < deadline:
                self._inflight.lock.wait(max(0.0, deadline - time.monotonic()))
            abandoned = self._inflight.count
        if abandoned:
            log.warning(
                "stopping with %d pass(es) still running; they are abandoned (passes are "
                "crash-safe: the next start picks up from Git)",
                abandoned,
            )
        else:
            log.info("scheduler stopped cleanly")
        return abandoned == 0

    # -- policy set ------------------------------------------------------------------------

    def policies(self) -> dict[str, timedelta]:
        """The policies this replica runs, with their intervals."""
        with self._lock:
            return {name: state.interval for name, state in self._policies.items()}

    def reload(self) -> bool:
        """Re-read the policy set; adds, removes and re-times jobs. True if anything changed."""
        if self._stopping.is_set():
            return False
        try:
            listing = self._list_policies()
        except Exception:
            log.exception("reading the policy set failed; keeping the current jobs")
            self.metrics.errors.labels(stage="policies").inc()
            return False
        if listing.version == self._version:
            return False
        wanted = {
            name: interval if interval.total_seconds() > 0 else self.settings.default_interval
            for name, interval in listing.intervals.items()
            if self._shards is None or self._shards.owns(name)
        }
        with self._lock:
            current = dict(self._policies)
            for name in current.keys() - wanted.keys():
                self._remove_job(name)
                del self._policies[name]
                with contextlib.suppress(KeyError):
                    self.metrics.consecutive_failures.remove(name)
            for name, interval in wanted.items():
                state = current.get(name)
                if state is not None and state.interval == interval:
                    continue
                self._policies[name] = _PolicyState(interval, state.failures if state else 0)
                self._add_job(name, interval)
            self._version = listing.version
            count = len(self._policies)
        self.metrics.policies.set(count)
        log.info("policy set %s: %d policies on this replica", listing.version, count)
        if count == 0:
            # Nothing to run here (an empty shard): there is no pass to wait for.
            self.health.mark_ready()
        return True

    def _job_id(self, name: str) -> str:
        return f"policy:{name}"

    def _add_job(self, name: str, interval: timedelta) -> None:
        seconds = interval.total_seconds()
        jitter = min(self.settings.jitter.total_seconds(), seconds / 2)
        self._scheduler.add_job(
            self._run_policy,
            IntervalTrigger(seconds=seconds, jitter=jitter or None, timezone=UTC),
            args=[name],
            id=self._job_id(name),
            name=name,
            replace_existing=True,
            # Run soon after (re)loading, spread by the jitter.
            next_run_time=datetime.now(UTC) + timedelta(seconds=random.uniform(0, jitter)),  # noqa: S311
        )

    def _remove_job(self, name: str) -> None:
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(self._job_id(name))

    # -- one pass --------------------------------------------------------------------------

    def _run_policy(self, name: str) -> None:
        """The job body: gate, run, record, back off. Never raises (one policy, one job)."""
        if self._stopping.is_set():
            return
        shards, gate = self._shards, self._gate
        if gate is not None and shards is not None:
            held = gate.holds(shards.index)
            self.metrics.shard_held.labels(shard=str(shards.index)).set(1 if held else 0)
            if not held:
                log.info("policy %s: shard %d lease not held, skipping", name, shards.index)
                self.metrics.passes.labels(outcome="skipped").inc()
                return
        with self._inflight.lock:
            self._inflight.count += 1
        started = time.monotonic()
        try:
            ok = self._pass(name)
        finally:
            with self._inflight.lock:
                self._inflight.count -= 1
                self._inflight.lock.notify_all()
        self.metrics.pass_duration.observe(time.monotonic() - started)
        self._record_outcome(name, ok)

    def _pass(self, name: str) -> bool:
        try:
            report = self._run_pass([name])
        except Exception:
            log.exception("policy %s: pass failed", name)
            self.metrics.errors.labels(stage="pass").inc()
            return False
        for decision in report.decisions:
            self.metrics.decisions.labels(action=str(decision.action)).inc()
            log_decision(
                policy=decision.policy,
                cluster=decision.cluster,
                action=str(decision.action),
                reason=decision.reason,
            )
        if report.prs_opened:
            self.metrics.pull_requests.inc(report.prs_opened)
        failed = False
        for stage, messages in report.errors.items():
            if messages:
                failed = True
                self.metrics.errors.labels(stage=stage).inc(len(messages))
                for message in messages:
                    log.warning("policy %s: %s: %s", name, stage, message)
        return not failed

    def _record_outcome(self, name: str, ok: bool) -> None:
        self.metrics.passes.labels(outcome="succeeded" if ok else "failed").inc()
        with self._lock:
            state = self._policies.get(name)
            if state is None:  # removed by a reload while it ran
                return
            state.failures = 0 if ok else state.failures + 1
            failures, interval = state.failures, state.interval
        self.metrics.consecutive_failures.labels(policy=name).set(failures)
        if ok:
            self.metrics.last_success.set_to_current_time()
            self.health.mark_ready()
            return
        delay = min(interval * 2**failures, self.settings.backoff_max)
        delay = max(delay, interval)
        log.warning(
            "policy %s: failed %d time(s) in a row, next try in %ss",
            name,
            failures,
            round(delay.total_seconds(), 1),
        )
        if self._stopping.is_set():
            return
        with contextlib.suppress(JobLookupError):
            self._scheduler.modify_job(self._job_id(name), next_run_time=datetime.now(UTC) + delay)


def run(
    *,
    run_pass: RunPass,
    list_policies: ListPolicies,
    settings: DaemonSettings | None = None,
    shards: ShardAssignment | None = None,
    gate: ShardGate | None = None,
    services: Sequence[Service] = (),
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
    handle_signals: bool = True,
) -> bool:
    """Run the daemon until SIGTERM/SIGINT or `stop` is set; True when it stopped cleanly.

    `services` (the live inventory, the shard leases) are started first and stopped last.
    False means a pass was abandoned after the grace period; its worker thread still runs, so
    the caller should exit the process (``os._exit``) rather than wait for it.
    """
    settings = settings or DaemonSettings()
    stop = stop or threading.Event()
    metrics = metrics or Metrics()
    health = Health()
    scheduler = Scheduler(
        run_pass=run_pass,
        list_policies=list_policies,
        settings=settings,
        metrics=metrics,
        health=health,
        shards=shards,
        gate=gate,
    )
    server = (
        ObservabilityServer(settings.listen, metrics=metrics, health=health)
        if settings.listen
        else None
    )
    restore = _on_signals(stop) if handle_signals else {}
    started: list[Service] = []
    try:
        if server is not None:
            server.start()
        for service in services:
            service.start()
            started.append(service)
        scheduler.start()
        while not stop.wait(0.2):
            pass
        log.info(
            "stop requested; finishing running passes (grace %ss)", settings.grace.total_seconds()
        )
        return scheduler.stop()
    finally:
        if scheduler.running():
            scheduler.stop(timedelta(0))
        for service in reversed(started):
            try:
                service.stop()
            except Exception:
                log.exception("stopping %s failed", type(service).__name__)
        if server is not None:
            server.stop()
        for signum, handler in restore.items():
            signal.signal(signum, handler)


_Handler = Callable[[int, FrameType | None], object] | int | None


def _on_signals(stop: threading.Event) -> dict[signal.Signals, _Handler]:
    """SIGTERM and SIGINT set `stop`; returns the previous handlers (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    previous: dict[signal.Signals, _Handler] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)
    return previous
