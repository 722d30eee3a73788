"""A simulated world around a real Prometheus, for decision-level tests through `run_once`.

The world owns a bare Git remote (the GitOps repository), a simulated clock, the clusters (an
inventory snapshot in which every watched object is Ready) and the data plane: per version, the
raw counters its server exports (Istio's for Deployments, Seldon's executor for
SeldonDeployments), drawn from a seeded generator and split by the weights merged on the main
branch at each moment. Before a pass needs evidence, the whole counter history up to the
simulated now is backfilled with promtool into a fresh data directory and Prometheus is
restarted on it (about half a second), behind a `RecordingProxy` whose URL stays the same, so
every query of a pass can be counted. A reviewer merges the pull requests the policy leaves to
a human, one pass after they open, as a person would.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_harness import (
    Binaries,
    OpenMetrics,
    PrometheusServer,
    RecordingProxy,
    backfill,
    free_port,
)

from gitops_rollout import reconcile, repository
from gitops_rollout.analysis import Verdict
from gitops_rollout.composition import snapshot_source
from gitops_rollout.gitops.hosts.base import PullState
from gitops_rollout.gitops.hosts.local import LocalHost, PullRecord
from gitops_rollout.gitops.repo import Workspace
from gitops_rollout.inventory.model import Kind
from gitops_rollout.judging import Judge
from gitops_rollout.metrics import PrometheusOptions, ProviderConfig, create_provider
from gitops_rollout.planning import RolloutKey
from gitops_rollout.state import Phase, RolloutState, read_stored
from gitops_rollout.transitions import Situation, VerdictLike
from gitops_rollout.tree import GitTree

REAL_NOW = datetime.now(UTC)
T0 = (REAL_NOW - timedelta(hours=6)).replace(minute=0, second=0, microsecond=0)
"""The simulated clock starts on a whole hour six hours ago: every analysis interval boundary
is then a multiple of the interval from T0, and Prometheus keeps the history (30 d retention)."""

PASS_EVERY = timedelta(minutes=2)
HISTORY = timedelta(minutes=10)
"""Pre-rollout traffic of the primaries before T0 (the baseline window)."""
ISTIO_EDGES_MS = (25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)
SELDON_EDGES_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIGMA = 0.5
"""Spread of the lognormal request latency."""

FAST = PrometheusOptions(retries=0, backoff=0.01, connect_timeout=1.0, read_timeout=10.0)


@dataclass(frozen=True)
class Behaviour:
    """How one version serves: its share of the model's traffic is set by the routing."""

    error_rate: float = 0.005
    latency_ms: float = 60.0
    """Mean request latency."""
    reward_rate: float = 0.0
    """Feedback requests per prediction (Seldon only)."""
    silent: bool = False
    """Its exporter is never scraped: no series at all."""


@dataclass
class _Counters:
    ok: float = 0.0
    errors: float = 0.0
    latency_sum: float = 0.0
    buckets: list[float] = field(default_factory=list)
    feedback: float = 0.0
    started: bool = False


@dataclass
class Truth:
    """What a version really served, per sample instant (Unix seconds -> increments)."""

    requests: dict[float, float] = field(default_factory=dict)
    lost: float = 0.0
    """Requests its counters never showed: counted by a process after the last boundary it was
    read at, then lost when that process restarted."""


@dataclass
class Verdicts:
    """Every verdict the judge returned, by pass number and rollout."""

    by_pass: list[dict[RolloutKey, VerdictLike]] = field(default_factory=list)

    def of(self, model: str) -> list[Verdict]:
        """The analysis verdicts of `model`'s rollout, oldest first."""
        return [
            v
            for found in self.by_pass
            for k, v in found.items()
            if k.model == model and isinstance(v, Verdict)
        ]

    def last(self, model: str) -> Verdict:
        return self.of(model)[-1]


class World:
    """One bare remote, a clock, the clusters, the data plane and a real Prometheus."""

    def __init__(
        self,
        workdir: Path,
        *,
        binaries: Binaries,
        files: Mapping[str, str],
        behaviour: Mapping[tuple[str, str], Behaviour] = {},
        rps: Mapping[str, float] = {},
        scrape: int = 15,
        seed: int = 11,
    ) -> None:
        self.workdir = workdir
        self.binaries = binaries
        self.proxy = RecordingProxy(f"http://127.0.0.1:{free_port()}")
        self.proxy.__enter__()
        self.proxy_url = self.proxy.url
        self.remote = workdir / "remote.git"
        self.behaviour = behaviour
        self.rps = rps
        self.scrape = scrape
        self.rng = np.random.default_rng(seed)
        self.now = T0
        self.history = OpenMetrics()
        self.counters: dict[tuple[str, str, str], _Counters] = {}
        self.truth: dict[tuple[str, str], Truth] = {}
        self.restarts: dict[tuple[str, str], float] = {}
        self._kinds: dict[tuple[str, str], str] = {}
        self.down = False
        self._judge = Judge(create_provider("prometheus", ProviderConfig(self.proxy_url, FAST)))
        self.verdicts = Verdicts()
        self.reports: list[reconcile.PassReport] = []
        self.caches = repository.Caches()
        self._server: PrometheusServer | None = None
        self._served_until: datetime | None = None
        self._refreshes = 0
        self._seed(files)
        self.bot = LocalHost(self.remote, clock=lambda: self.now, user="gitops-rollout")
        self.reviewer = LocalHost(self.remote, clock=lambda: self.now, user="reviewer")
        self._waiting: dict[int, datetime] = {}
        self.workspace = Workspace.open(str(self.remote), cache_dir=workdir / "cache")
        self._traffic(self.now - HISTORY, self.now)

    # -- set-up and tear-down -------------------------------------------------------------

    def _seed(self, files: Mapping[str, str]) -> None:
        human = self.workdir / "human"
        _git("init", "--bare", "--quiet", "--initial-branch=main", str(self.remote))
        _git("init", "--quiet", "--initial-branch=main", str(human))
        for path, text in files.items():
            target = human / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        stamp = f"{int((self.now - HISTORY).timestamp())} +0000"
        env = {
            "GIT_AUTHOR_NAME": "platform-team",
            "GIT_AUTHOR_EMAIL": "platform@example.com",
            "GIT_COMMITTER_NAME": "platform-team",
            "GIT_COMMITTER_EMAIL": "platform@example.com",
            "GIT_AUTHOR_DATE": stamp,
            "GIT_COMMITTER_DATE": stamp,
        }
        _git("-C", str(human), "add", "-A")
        _git("-C", str(human), "commit", "--quiet", "-m", "GitOps repository", env=env)
        _git("-C", str(human), "push", "--quiet", str(self.remote), "main")

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self.proxy.__exit__(None, None, None)
        self.workspace.close()

    # -- the main branch ------------------------------------------------------------------

    def main_view(self) -> repository.RepositoryView:
        sha = _git("--git-dir", str(self.remote), "rev-parse", "main").strip()
        return repository.load(GitTree(self.remote, sha), caches=self.caches)

    def state(self, model: str, cluster: str = "prod-east") -> RolloutState:
        """The rollout state recorded on the main branch (Idle with no routing file yet)."""
        view = self.main_view()
        for path in view.tree.paths(f"clusters/{cluster}"):
            if path.endswith(f"/{model}/rollout/routing.yaml"):
                return read_stored(view.tree.read(path)).state
        return RolloutState(phase=Phase.IDLE)

    def versions(self, model: str, cluster: str = "prod-east") -> list[str]:
        return sorted(v.version for v in self.main_view().inventory.versions(cluster, model))

    def pulls(self) -> list[PullRecord]:
        """Every pull request, oldest first."""
        return sorted(self.bot.list_pulls(), key=lambda p: p.number)

    def pulls_of(self, model: str) -> list[PullRecord]:
        return [p for p in self.pulls() if p.title.startswith(f"rollout({model}):")]

    # -- a pass ---------------------------------------------------------------------------

    def judge(self) -> reconcile.Judge:
        """The world's one Prometheus judge (a daemon keeps one), through the proxy, or at a
        port nobody listens on while the world's Prometheus is down; it records every verdict."""
        url = f"http://127.0.0.1:{free_port()}" if self.down else self.proxy_url
        inner = self._judge
        inner.provider = create_provider("prometheus", ProviderConfig(url, FAST))
        found: dict[RolloutKey, VerdictLike] = {}
        self.verdicts.by_pass.append(found)

        def judge(
            situations: Sequence[Situation], *, now: datetime
        ) -> Mapping[RolloutKey, VerdictLike]:
            if situations and not self.down:
                self.refresh_prometheus()
                self.proxy.reset()
            out = inner(situations, now=now)
            found.update(out)
            return out

        return judge

    def run_pass(self) -> reconcile.PassReport:
        """One reconcile pass at the simulated now."""
        self._write_inventory()
        report = reconcile.run_once(
            workspace=self.workspace,
            host=self.bot,
            options=reconcile.PassOptions(now=self.now),
            inventory=snapshot_source([str(self.workdir / "inventory")]),
            judge=self.judge(),
            caches=self.caches,
        )
        assert not report.errors, report.errors
        self.reports.append(report)
        return report

    def review(self) -> None:
        """A reviewer merges what waits for a human, one pass after it opened."""
        for pull in self.bot.list_pulls(state=PullState.OPEN):
            first = self._waiting.setdefault(pull.number, self.now)
            if self.now > first:
                self.reviewer.merge(pull.number, message=f"{pull.title} (#{pull.number})")

    def tick(self, span: timedelta = PASS_EVERY) -> None:
        """Time passes: the data plane serves with the weights now on the main branch."""
        self._traffic(self.now, self.now + span)
        self.now += span

    def step(self) -> reconcile.PassReport:
        """A pass, the reviewer, then the time until the next pass."""
        report = self.run_pass()
        self.review()
        self.tick()
        return report

    def run_until(self, done: Any, *, passes: int) -> int:
        """Passes until ``done()`` holds; the number of passes it took."""
        for number in range(1, passes + 1):
            self.step()
            if done():
                return number
        raise AssertionError(f"not done after {passes} passes; last: {self.reports[-1]}")

    # -- Prometheus -----------------------------------------------------------------------

    def refresh_prometheus(self) -> None:
        """Serve the history up to now from a fresh Prometheus behind the proxy."""
        if self._served_until == self.now and self._server is not None:
            return
        if self._server is not None:
            self._server.stop()
        self._refreshes += 1
        workdir = self.workdir / f"prometheus-{self._refreshes}"
        backfill(self.history, workdir / "data", binaries=self.binaries)
        server = PrometheusServer(workdir, binaries=self.binaries)
        server.start()
        previous = self.workdir / f"prometheus-{self._refreshes - 1}"
        if previous.exists():
            shutil.rmtree(previous, ignore_errors=True)
        self._server = server
        self.proxy.upstream_port = server.port
        self._served_until = self.now

    @property
    def prometheus_url(self) -> str:
        """Prometheus (through the proxy), serving everything up to now."""
        self.refresh_prometheus()
        return self.proxy.url

    # -- the clusters ---------------------------------------------------------------------

    def _write_inventory(self) -> None:
        view = self.main_view()
        folder = self.workdir / "inventory"
        folder.mkdir(exist_ok=True)
        for cluster, models in view.inventory.clusters.items():
            items = [
                _live_object(v.ref.kind, v.ref.namespace, v.ref.name, v.version)
                for versions in models.models.values()
                for v in versions
            ]
            doc = {"apiVersion": "v1", "kind": "List", "items": items}
            (folder / f"{cluster}.json").write_text(json.dumps(doc))

    # -- the data plane -------------------------------------------------------------------

    def restart(self, model: str, version: str, *, at: datetime) -> None:
        """The version's server restarts at `at`: from its next scrape its counters start from
        zero again."""
        self.restarts[(model, version)] = at.timestamp()

    def _shares(self) -> dict[tuple[str, str, str, str], float]:
        """(namespace, name, model, version) -> share of the model's requests, from main."""
        view = self.main_view()
        out: dict[tuple[str, str, str, str], float] = {}
        for cluster, models in view.inventory.clusters.items():
            for model, versions in models.models.items():
                weights = self._weights(view, cluster, model)
                for v in versions:
                    share = weights.get(v.key)
                    if share is None:
                        share = 1.0 if not weights and v.role.value == "primary" else 0.0
                    kind = "seldon" if v.ref.kind == Kind.SELDON_DEPLOYMENT else "istio"
                    out[(v.ref.namespace, v.ref.name, model, v.version)] = share
                    self._kinds[(v.ref.namespace, v.ref.name)] = kind
        return out

    @staticmethod
    def _weights(view: repository.RepositoryView, cluster: str, model: str) -> dict[str, float]:
        for path in view.tree.paths(f"clusters/{cluster}"):
            if path.endswith(f"/{model}/rollout/routing.yaml"):
                state = read_stored(view.tree.read(path)).state
                if state.weights:
                    return {k: w / 100 for k, w in state.weights}
                if state.primary:
                    return {state.primary.key: 1.0}
        return {}

    def _traffic(self, start: datetime, end: datetime) -> None:
        shares = self._shares()
        first = int(start.timestamp()) // self.scrape * self.scrape + self.scrape
        for ts in range(first, int(end.timestamp()) + 1, self.scrape):
            for (namespace, name, model, version), share in sorted(shares.items()):
                behaviour = self.behaviour.get((model, version), Behaviour())
                if behaviour.silent:
                    continue
                kind = self._kinds[(namespace, name)]
                self._sample(float(ts), namespace, name, model, version, kind, share, behaviour)

    def _sample(
        self,
        ts: float,
        namespace: str,
        name: str,
        model: str,
        version: str,
        kind: str,
        share: float,
        behaviour: Behaviour,
    ) -> None:
        key = (namespace, name, version)
        edges = ISTIO_EDGES_MS if kind == "istio" else SELDON_EDGES_S
        c = self.counters.setdefault(key, _Counters(buckets=[0.0] * (len(edges) + 1)))
        truth = self.truth.setdefault((model, version), Truth())
        if self.restarts.get((model, version), math.inf) <= ts:
            del self.restarts[(model, version)]
            truth.lost += self._since_boundary(model, version, ts)
            self.counters[key] = c = _Counters(buckets=[0.0] * (len(edges) + 1), started=True)
        rate = self.rps.get(model, 100.0) * self.scrape * share
        n = int(self.rng.poisson(rate)) if rate > 0 else 0
        errors = int(self.rng.binomial(n, behaviour.error_rate)) if n else 0
        median = behaviour.latency_ms / math.exp(SIGMA**2 / 2)
        latencies = self.rng.lognormal(math.log(median), SIGMA, n)
        unit = 1.0 if kind == "istio" else 1000.0
        counts = np.histogram(latencies, bins=[0.0, *(e * unit for e in edges), math.inf])[0]
        c.ok += n - errors
        c.errors += errors
        c.latency_sum += float(latencies.sum()) / unit
        for i, count in enumerate(counts):
            c.buckets[i] += float(count)
        if behaviour.reward_rate and n:
            c.feedback += float(self.rng.poisson(n * behaviour.reward_rate))
        truth.requests[ts] = float(n)
        if not c.started and n == 0 and share == 0:
            return  # a server that never served a request exports no series yet
        c.started = True
        if kind == "istio":
            self._istio(ts, namespace, name, c)
        else:
            self._seldon(ts, namespace, name, c)

    def _since_boundary(self, model: str, version: str, ts: float) -> float:
        """Requests counted after the last 60 s boundary before `ts` (lost by a restart)."""
        truth = self.truth[(model, version)]
        boundary = (ts - self.scrape) // 60 * 60
        return sum(n for t, n in truth.requests.items() if boundary < t < ts)

    def _istio(self, ts: float, namespace: str, name: str, c: _Counters) -> None:
        base = {
            "destination_workload_namespace": namespace,
            "destination_workload": name,
            "reporter": "destination",
            "pod": f"{name}-0",
        }
        self.history.add("istio_requests_total", {**base, "response_code": "200"}, [(ts, c.ok)])
        self.history.add("istio_requests_total", {**base, "response_code": "503"}, [(ts, c.errors)])
        running = 0.0
        for edge, count in zip((*ISTIO_EDGES_MS, math.inf), c.buckets, strict=True):
            running += count
            le = "+Inf" if edge == math.inf else f"{edge:g}"
            self.history.add(
                "istio_request_duration_milliseconds_bucket", {**base, "le": le}, [(ts, running)]
            )
        self.history.add("istio_request_duration_milliseconds_sum", base, [(ts, c.latency_sum)])

    def _seldon(self, ts: float, namespace: str, name: str, c: _Counters) -> None:
        base = {
            "kubernetes_namespace": namespace,
            "seldon_deployment_id": name,
            "predictor_name": "default",
            "pod": f"{name}-default-0",
            "service": "predictions",
        }
        for code, value in (("200", c.ok), ("500", c.errors)):
            self.history.add(
                "seldon_api_executor_client_requests_seconds_count",
                {**base, "code": code},
                [(ts, value)],
            )
        running = 0.0
        for edge, count in zip((*SELDON_EDGES_S, math.inf), c.buckets, strict=True):
            running += count
            le = "+Inf" if edge == math.inf else f"{edge:g}"
            self.history.add(
                "seldon_api_executor_client_requests_seconds_bucket",
                {**base, "code": "200", "le": le},
                [(ts, running)],
            )
        self.history.add(
            "seldon_api_executor_client_requests_seconds_sum",
            {**base, "code": "200"},
            [(ts, c.latency_sum)],
        )
        self.history.add(
            "seldon_api_executor_server_requests_seconds_count",
            {**base, "service": "feedback", "code": "200"},
            [(ts, c.feedback)],
        )


def _git(*args: str, env: Mapping[str, str] | None = None) -> str:
    import os

    done = subprocess.run(
        ["git", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return done.stdout


def _live_object(kind: str, namespace: str, name: str, version: str) -> dict[str, Any]:
    meta = {
        "name": name,
        "namespace": namespace,
        "generation": 1,
        "labels": {"app.kubernetes.io/version": version},
    }
    if kind == Kind.SELDON_DEPLOYMENT:
        status: dict[str, Any] = {"state": "Available", "observedGeneration": 1}
        api = "machinelearning.seldon.io/v1"
    else:
        condition = "Available" if kind == Kind.DEPLOYMENT else "Ready"
        status = {"observedGeneration": 1, "conditions": [{"type": condition, "status": "True"}]}
        api = "apps/v1" if kind == Kind.DEPLOYMENT else "serving.kserve.io/v1beta1"
    return {"apiVersion": api, "kind": kind, "metadata": meta, "status": status}


MakeWorld = Callable[..., World]
"""The ``make_world`` fixture: ``make_world(files, behaviour=..., rps=...)``."""
