"""``gitops-rollout demo``: the example repository's scenarios end to end, offline, in a minute.

It seeds a bare Git remote from the example (policies/ and clusters/), then runs reconcile
passes on a simulated clock. Between passes it plays the rest of the world:

- the clusters: a kubectl-style inventory snapshot is written from the main branch (every
  watched object Ready with the version Git gives it, as if Argo CD synced at once; an object
  added by a human is not Ready on its first pass);
- the traffic: per-interval counters of requests, errors, latency and rewards, split by the
  weights on the main branch, written as a metrics recording the ``file`` provider reads;
- the humans: a reviewer merges the pull requests the policies leave to a person, and an ML
  engineer switches ``wisdom`` to mirroring with a new candidate, then lowers the mirror share.

It stops when every rollout is back to Idle with its final primary, and fails if that takes
more passes than it should. Nothing leaves the machine.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from gitops_rollout import reconcile, repository
from gitops_rollout.composition import snapshot_source
from gitops_rollout.gitops.hosts.base import PullState
from gitops_rollout.gitops.hosts.local import LocalHost
from gitops_rollout.gitops.repo import Workspace
from gitops_rollout.inventory.model import Inventory, Kind
from gitops_rollout.judging import Judge
from gitops_rollout.metrics import ProviderConfig, create_provider
from gitops_rollout.state import Phase, read_stored
from gitops_rollout.tree import GitTree

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
PASS_EVERY = timedelta(minutes=2)
MAX_PASSES = 400
BUCKETS_MS = (25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)


@dataclass
class Traffic:
    """How a version behaves in the simulated data plane."""

    rps: float = 20.0
    error_rate: float = 0.002
    latency_ms: float = 60.0
    reward_rate: float = 0.0


@dataclass
class _Counters:
    requests: float = 0.0
    errors: float = 0.0
    latency_sum: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(BUCKETS_MS) + 1))
    reward: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)


# Behaviour of the candidates the example ships: fashionmnist v2 is a little faster, iris v2
# earns more feedback; the rest are neutral.
BEHAVIOUR: dict[tuple[str, str], Traffic] = {
    ("fashionmnist", "v1"): Traffic(rps=300, error_rate=0.01, latency_ms=80),
    ("fashionmnist", "v2"): Traffic(rps=300, error_rate=0.008, latency_ms=72),
    ("iris", "iris-v1"): Traffic(rps=150, error_rate=0.005, latency_ms=40, reward_rate=0.05),
    ("iris", "iris-v2"): Traffic(rps=150, error_rate=0.004, latency_ms=38, reward_rate=0.08),
}


class World:
    """The simulated clusters, traffic and people around one bare remote."""

    def __init__(self, workdir: Path, *, console: Console, seed: int = 7) -> None:
        self.workdir = workdir
        self.remote = workdir / "remote.git"
        self.human = workdir / "human"
        self.inventory_file = workdir / "inventory.yaml"
        self.metrics_file = workdir / "metrics.json"
        self.console = console
        self.rng = random.Random(seed)  # noqa: S311 - simulated traffic, not secrets
        self.now = T0
        self.counters: dict[tuple[str, str, str], _Counters] = {}
        self.fresh: set[tuple[str, str, str]] = set()
        """(cluster, namespace, name) added by a human this pass: not Ready yet."""
        self.seen_prs: dict[int, str] = {}
        self.caches = repository.Caches()

    # -- set-up ----------------------------------------------------------------------------

    def seed(self, example: Path) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        self._git("init", "--bare", "--quiet", "--initial-branch=main", str(self.remote))
        self._git("init", "--quiet", "--initial-branch=main", str(self.human))
        for folder in ("policies", "clusters"):
            shutil.copytree(example / folder, self.human / folder)
        self._commit("Example GitOps repository: five rollout scenarios", author="platform-team")
        self._git("-C", str(self.human), "remote", "add", "origin", str(self.remote))
        self._git("-C", str(self.human), "push", "--quiet", "origin", "main")

    def _git(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        import os

        full_env = {**os.environ, **(env or {})}
        done = subprocess.run(
            ["git", *args], check=True, capture_output=True, text=True, env=full_env
        )
        return done.stdout

    def _commit(self, message: str, *, author: str) -> None:
        stamp = f"{int(self.now.timestamp())} +0000"
        env = {
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": f"{author}@example.com",
            "GIT_COMMITTER_NAME": author,
            "GIT_COMMITTER_EMAIL": f"{author}@example.com",
            "GIT_AUTHOR_DATE": stamp,
            "GIT_COMMITTER_DATE": stamp,
        }
        self._git("-C", str(self.human), "add", "-A")
        self._git("-C", str(self.human), "commit", "--quiet", "-m", message, env=env)

    def human_change(
        self, message: str, edit: Callable[[Path], None], *, author: str = "ml-engineer"
    ) -> None:
        """A person edits the repository and pushes to main."""
        self._git("-C", str(self.human), "pull", "--quiet", "--ff-only", "origin", "main")
        edit(self.human)
        self._commit(message, author=author)
        self._git("-C", str(self.human), "push", "--quiet", "origin", "main")
        self.console.print(f"[magenta]{self.now:%H:%M}[/] human ({author}): {message}")

    # -- the clusters ----------------------------------------------------------------------

    def main_view(self) -> repository.RepositoryView:
        sha = self._git("--git-dir", str(self.remote), "rev-parse", "main").strip()
        return repository.load(GitTree(self.remote, sha), caches=self.caches)

    def write_inventory(self, inventory: Inventory) -> None:
        """A kubectl-style snapshot per cluster: what Argo CD would have applied by now."""
        for cluster, models in inventory.clusters.items():
            items = []
            for versions in models.models.values():
                for v in versions:
                    fresh = (cluster, v.ref.namespace, v.ref.name) in self.fresh
                    items.append(
                        _live_object(
                            v.ref.kind, v.ref.namespace, v.ref.name, v.version, ready=not fresh
                        )
                    )
            doc = {"apiVersion": "v1", "kind": "List", "items": items}
            (self.workdir / "inventory").mkdir(exist_ok=True)
            (self.workdir / "inventory" / f"{cluster}.json").write_text(json.dumps(doc, indent=1))
        self.fresh.clear()

    # -- the traffic -----------------------------------------------------------------------

    def advance_traffic(
        self, view: repository.RepositoryView, until: datetime, *, step: timedelta
    ) -> None:
        """Counters grow with each version's share of requests on the main branch's routing."""
        shares = self._shares(view)
        t = self.now
        while t < until:
            t += step
            seconds = step.total_seconds()
            for (cluster, namespace, model, version), share in shares.items():
                if cluster != "prod-east":
                    continue
                behaviour = BEHAVIOUR.get((model, version), Traffic())
                key = (namespace, model, version)
                c = self.counters.setdefault(key, _Counters())
                n = behaviour.rps * seconds * share
                n = max(0.0, n + self.rng.gauss(0, math.sqrt(n))) if n > 0 else 0.0
                n = float(round(n))
                c.requests += n
                c.errors += float(
                    round(
                        n * behaviour.error_rate
                        + self.rng.gauss(0, math.sqrt(n * behaviour.error_rate + 1e-9))
                    )
                    if n
                    else 0
                )
                c.errors = max(0.0, min(c.errors, c.requests))
                c.latency_sum += n * behaviour.latency_ms * (1 + self.rng.gauss(0, 0.02))
                for i, edge in enumerate(BUCKETS_MS):
                    c.buckets[i] += round(n * _lognormal_cdf(edge, behaviour.latency_ms))
                c.buckets[-1] += n
                c.reward += float(round(n * behaviour.reward_rate))
                c.samples.append(
                    {
                        "at": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "requests": c.requests,
                        "errors": c.errors,
                        "latencySumMs": round(c.latency_sum, 1),
                        "buckets": [_cumulative(c.buckets, i) for i in range(len(c.buckets))],
                        "custom": {"user-engagement": c.reward, "feedback": c.reward},
                    }
                )
                del c.samples[:-400]  # a bounded recording: the tests look back minutes, not days
        versions = [
            {
                "namespace": ns,
                "model": model,
                "version": version,
                "bucketsMs": list(BUCKETS_MS),
                "samples": c.samples,
            }
            for (ns, model, version), c in sorted(self.counters.items())
            if c.samples
        ]
        recording = {
            "apiVersion": "gitops-rollout.dev/v1alpha1",
            "kind": "MetricsRecording",
            "versions": versions,
        }
        self.metrics_file.write_text(json.dumps(recording))

    def _shares(self, view: repository.RepositoryView) -> dict[tuple[str, str, str, str], float]:
        out: dict[tuple[str, str, str, str], float] = {}
        for cluster, models in view.inventory.clusters.items():
            for model, versions in models.models.items():
                weights = self._weights(view, cluster, model)
                for v in versions:
                    share = weights.get(v.key)
                    if share is None:
                        share = 1.0 if not weights and v.role.value == "primary" else 0.0
                    out[(cluster, v.ref.namespace, model, v.version)] = share
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


def _cumulative(buckets: list[float], i: int) -> float:
    return buckets[i] if i < len(buckets) - 1 else buckets[-1]


def _lognormal_cdf(edge: float, median: float, sigma: float = 0.5) -> float:
    return 0.5 * (1 + math.erf(math.log(edge / median) / (sigma * math.sqrt(2))))


def _live_object(
    kind: str, namespace: str, name: str, version: str, *, ready: bool
) -> dict[str, Any]:
    meta = {
        "name": name,
        "namespace": namespace,
        "generation": 1,
        "labels": {"app.kubernetes.io/version": version},
    }
    if kind == Kind.SELDON_DEPLOYMENT:
        status: dict[str, Any] = {
            "state": "Available" if ready else "Creating",
            "observedGeneration": 1,
        }
    else:
        cond = "Available" if kind == Kind.DEPLOYMENT else "Ready"
        status = {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": cond,
                    "status": "True" if ready else "False",
                    "message": "" if ready else "pulling image",
                }
            ],
        }
    api = {
        "InferenceService": "serving.kserve.io/v1beta1",
        "SeldonDeployment": "machinelearning.seldon.io/v1",
    }
    return {
        "apiVersion": api.get(kind, "apps/v1"),
        "kind": kind,
        "metadata": meta,
        "status": status,
    }


# -- the people --------------------------------------------------------------------------------


def _switch_wisdom_to_mirror(root: Path) -> None:
    policy = root / "policies" / "wisdom.yaml"
    text = policy.read_text()
    start = text.index("  strategy:")
    end = text.index("  clusters:")
    mirror = (
        "  strategy:\n"
        "    type: mirror          # a copy of requests goes to the candidate\n"
        "    minDuration: 10m\n"
    )
    policy.write_text(text[:start] + mirror + text[end:])
    for cluster in ("staging", "prod-east"):
        folder = root / "clusters" / cluster / "modelmesh-serving"
        source = (folder / "wisdom" / "wisdom-0.yaml").read_text()
        candidate = (
            source.replace("name: wisdom-0", "name: wisdom-1")
            .replace("app.kubernetes.io/version: v1", "app.kubernetes.io/version: v2")
            .replace("gitops-rollout.dev/role: primary", "gitops-rollout.dev/role: candidate")
            .replace("mnist-svm-v1.joblib", "mnist-svm-v2.joblib")
        )
        (folder / "wisdom" / "wisdom-1.yaml").write_text(candidate)
        kustomization = folder / "kustomization.yaml"
        text = kustomization.read_text()
        if "wisdom/wisdom-1.yaml" not in text:
            kustomization.write_text(text.rstrip("\n") + "\n  - wisdom/wisdom-1.yaml\n")


def _mirror_twenty_percent(root: Path) -> None:
    policy = root / "policies" / "wisdom.yaml"
    policy.write_text(
        policy.read_text().replace("    type: mirror", "    type: mirror\n    mirrorPercent: 20", 1)
    )


EXPECTED = {
    ("staging", "wisdom"): "v2",
    ("prod-east", "wisdom"): "v2",
    ("prod-east", "fashionmnist"): "v2",
    ("prod-east", "iris"): "iris-v2",
    ("prod-east", "scoring"): "1.1.0",
}
"""Where every rollout ends: (cluster, model) -> the primary's version, alone and Idle."""


def _states(view: repository.RepositoryView) -> dict[tuple[str, str], tuple[Phase, str, int]]:
    """(cluster, model) -> (phase, primary version, number of versions) on the main branch."""
    out = {}
    for loaded in view.policies.policies + view.held:
        pol = loaded.policy
        for c in pol.spec.clusters:
            path = f"clusters/{c.name}/{pol.routing_namespace}/{pol.model}/rollout/routing.yaml"
            try:
                state = read_stored(view.tree.read(path)).state
            except FileNotFoundError:
                continue
            count = len(view.inventory.versions(c.name, pol.model))
            out[(c.name, pol.model)] = (
                state.phase,
                state.primary.version if state.primary else "",
                count,
            )
    return out


def _finished(view: repository.RepositoryView) -> bool:
    states = _states(view)
    return all(states.get(key) == (Phase.IDLE, version, 1) for key, version in EXPECTED.items())


@dataclass
class _Script:
    """The ML engineer's part: scenario 2 follows scenario 1 on the same model."""

    world: World
    mirrored: bool = False
    lowered: bool = False

    def act(self, view: repository.RepositoryView) -> bool:
        """Make the next human change if its moment has come; True when main changed."""
        states = _states(view)
        wisdom = [states.get((c, "wisdom")) for c in ("staging", "prod-east")]
        if not self.mirrored and all(s == (Phase.IDLE, "v1", 1) for s in wisdom):
            self.world.human_change(
                "wisdom: mirror traffic to a new candidate v2 (scenario 2)",
                _switch_wisdom_to_mirror,
            )
            self.world.fresh.update(
                {
                    ("staging", "modelmesh-serving", "wisdom-1"),
                    ("prod-east", "modelmesh-serving", "wisdom-1"),
                }
            )
            self.mirrored = True
            return True
        if self.mirrored and not self.lowered and wisdom[0] and wisdom[0][0] is Phase.PROGRESSING:
            self.world.human_change("wisdom: mirror only 20 % of requests", _mirror_twenty_percent)
            self.lowered = True
            return True
        return False


def run(example: Path, workdir: Path, *, console: Console, max_passes: int = MAX_PASSES) -> bool:
    """Drive every scenario to its final state; True when all of them got there."""
    world = World(workdir, console=console)
    world.seed(example)
    console.print(
        f"[bold]Example repository pushed to {world.remote}[/bold] "
        f"(simulated clock starts {T0:%Y-%m-%d %H:%M} UTC)"
    )
    bot = LocalHost(world.remote, clock=lambda: world.now, user="gitops-rollout")
    reviewer = LocalHost(world.remote, clock=lambda: world.now, user="reviewer")
    script = _Script(world)
    waiting_since: dict[int, datetime] = {}
    view = world.main_view()
    with Workspace.open(str(world.remote), cache_dir=workdir / "cache") as workspace:
        for number in range(1, max_passes + 1):
            world.write_inventory(view.inventory)
            judge: reconcile.Judge = reconcile.no_verdicts
            if world.metrics_file.exists():
                judge = Judge(create_provider("file", ProviderConfig(str(world.metrics_file))))
            report = reconcile.run_once(
                workspace=workspace,
                host=bot,
                options=reconcile.PassOptions(now=world.now),
                inventory=snapshot_source([str(workdir / "inventory")]),
                judge=judge,
                caches=world.caches,
            )
            _print_report(console, world, report)
            for pull in bot.list_pulls(state=PullState.OPEN):
                first = waiting_since.setdefault(pull.number, world.now)
                if world.now > first:
                    result = reviewer.merge(pull.number, message=f"{pull.title} (#{pull.number})")
                    if result.merged:
                        console.print(
                            f"[magenta]{world.now:%H:%M}[/] reviewer approved and merged "
                            f"#{pull.number}"
                        )
            view = world.main_view()
            if _finished(view):
                console.print(
                    f"\n[bold green]All five scenarios reached their final state after {number} "
                    f"passes ({world.now - T0} simulated).[/]"
                )
                _print_final(console, view)
                return True
            if script.act(view):
                view = world.main_view()
            world.advance_traffic(view, until=world.now + PASS_EVERY, step=timedelta(seconds=10))
            world.now += PASS_EVERY
    console.print("[bold red]The scenarios did not finish within the pass budget.[/]")
    _print_final(console, world.main_view())
    return False


def _print_report(console: Console, world: World, report: reconcile.PassReport) -> None:
    for problem in report.problems:
        console.print(f"[red]problem[/]: {problem}", highlight=False)
    for stage, messages in report.errors.items():
        for message in messages:
            console.print(f"[red]error ({stage})[/]: {message}", highlight=False)
    for d in report.decisions:
        if d.pr is None or d.outcome in ("unchanged", "none"):
            continue
        label = {
            "opened": "opened",
            "updated": "updated",
            "merged": "opened+merged",
            "closed": "closed",
            "vetoed": "vetoed",
        }.get(d.outcome, d.outcome)
        key = f"{d.pr}:{d.outcome}:{d.title}"
        if world.seen_prs.get(d.pr) == key:
            continue
        world.seen_prs[d.pr] = key
        console.print(
            f"[cyan]{world.now:%H:%M}[/] PR #{d.pr} {label}: rollout({d.model}): {d.cluster} "
            f"{d.title}  [dim]({d.kind}; {d.weights})[/]",
            highlight=False,
        )
        if d.reason and d.outcome in ("opened", "merged"):
            console.print(f"        why: {d.reason}", highlight=False, markup=False)


def _print_final(console: Console, view: repository.RepositoryView) -> None:
    from rich.table import Table

    table = Table("cluster", "model", "phase", "primary", "versions", "expected")
    for key, (phase, version, count) in sorted(_states(view).items()):
        table.add_row(key[0], key[1], phase.value, version, str(count), EXPECTED.get(key, "-"))
    console.print(table)
