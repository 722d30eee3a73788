"""Scale benchmark: one GitOps repository of 10,000 models over 10 clusters, four passes.

What: a generated repository (``policies/<model>.yaml`` and
``clusters/<cluster>/<namespace>/<model>/<model>-<version>.yaml`` with a kustomization.yaml per
cluster and per namespace; Deployment+Service, KServe, KServe ModelMesh and Seldon targets;
progressive, canary, mirror and blue-green strategies; most models Idle with one version, a few
with a candidate, some of those not Ready; a tenth of the policies span two clusters) and a
kubectl-style JSON inventory snapshot per cluster. It is pushed to a bare remote, then each
measurement runs in a fresh process (the real CLI, through a small runner that reports the
process's own peak RSS; the package's bytecode compiled first, as an install does):

  (a) cold ``gitops-rollout plan --output DIR`` (empty cache directory)
  (b) cold ``gitops-rollout reconcile`` on the local host: the first pass, which adopts every
      model (one PR per cluster) and opens one PR per Ready candidate
  then passes a minute apart until one changes no ref (listed as "settling"; the first should
      already change nothing: the PRs of one pass list their models next to each model's own
      entries in a namespace's kustomization.yaml, so merging one does not make the others
      conflict)
  (c) the same reconcile again, nothing changed: must commit nothing, and decide as the pass
      before
  (d) a human pushes a change to 1 % of the models (a new candidate, or a policy edit), then
      reconcile

and the floor for (b): the files (b) wrote, written and committed with plain
``git add -A && git commit`` in a checkout. Targets: (b) <= 3x the floor, (c) <= 1 s,
(d) <= 2 s, peak RSS <= 500 MB.

Each row also shows the process's CPU time, its children's CPU time (git, and the worker that
parses manifests during a cold read), and the wall time spent inside the local host's
pull-request API (listing, opening, merging), which this program does not control.

Why: DESIGN.md promises a pass over a 10,000-model repository re-parses only what changed;
this keeps that promise measured.

Run from the repository root:  python -m bench.scale [--models N] [--clusters N] [--seed N]
[--keep DIR] [--quick] [--json FILE]. ``--quick`` (500 models) checks correctness the same way
(tests/bench/test_scale_quick.py runs it); the speed targets are for the full run.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[1]

MODELS_PER_NAMESPACE = 50
CANDIDATE_SHARE = 0.02
"""Models that carry a candidate version in the generated repository."""
NOT_READY_SHARE = 0.3
"""Of those, how many the snapshot reports not Ready yet."""
MULTI_CLUSTER_SHARE = 0.1
"""Policies that roll out to two clusters (staging-like first, then the next)."""
CHANGE_SHARE = 0.01
"""Pass (d): models a human changes."""
MAX_SETTLE = 5
"""Passes after (b) at most until one changes nothing."""

TARGETS = (
    ("deployment", 0.40),
    ("kserve", 0.25),
    ("kserve-modelmesh", 0.20),
    ("seldon", 0.15),
)
STRATEGIES = (
    ("progressive", 0.5),
    ("canary", 0.2),
    ("mirror", 0.15),
    ("blue-green", 0.15),
)
WORDS = (
    "fraud",
    "churn",
    "ranker",
    "recsys",
    "ctr",
    "search",
    "embed",
    "ocr",
    "asr",
    "nlu",
    "vision",
    "pricing",
    "eta",
    "risk",
    "spam",
    "toxicity",
)

GOALS = {
    "b_over_floor": 3.0,
    "c_seconds": 1.0,
    "d_seconds": 2.0,
    "peak_mb": 500.0,
}


# ---------------------------------------------------------------------------------------------
# The generated world


@dataclass
class Model:
    name: str
    namespace: str
    clusters: tuple[str, ...]
    target: str
    strategy: str
    candidate: bool = False
    candidate_ready: bool = True
    review_steps: bool = False
    """Steps need a human review (the PR stays open), as production policies often say."""
    analysis: bool = False
    version: int = 1


@dataclass
class World:
    root: Path
    models: list[Model]
    clusters: list[str]
    rng: random.Random

    @property
    def human(self) -> Path:
        return self.root / "human"

    @property
    def remote(self) -> Path:
        return self.root / "remote.git"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory"

    def rollouts(self) -> Iterator[tuple[str, Model]]:
        for m in self.models:
            for c in m.clusters:
                yield c, m


def _pick(rng: random.Random, table: Sequence[tuple[str, float]]) -> str:
    return rng.choices([k for k, _ in table], weights=[w for _, w in table])[0]


def plan_models(count: int, clusters: int, rng: random.Random) -> tuple[list[Model], list[str]]:
    """`count` rollouts (model x cluster) over `clusters` clusters."""
    names = [f"prod-{i:02d}" for i in range(clusters)]
    models: list[Model] = []
    rollouts = 0
    per_cluster = [0] * clusters
    index = 0
    while rollouts < count:
        home = index % clusters
        spans = clusters > 1 and count - rollouts >= 2 and rng.random() < MULTI_CLUSTER_SHARE
        where = (home, (home + 1) % clusters) if spans else (home,)
        namespace = f"team-{per_cluster[home] // MODELS_PER_NAMESPACE:02d}"
        for c in where:
            per_cluster[c] += 1
        target = _pick(rng, TARGETS)
        strategy = _pick(rng, STRATEGIES)
        candidate = rng.random() < CANDIDATE_SHARE
        models.append(
            Model(
                name=f"{rng.choice(WORDS)}-{index:05d}",
                namespace=namespace,
                clusters=tuple(names[c] for c in where),
                target=target,
                strategy=strategy,
                candidate=candidate,
                candidate_ready=not (candidate and rng.random() < NOT_READY_SHARE),
                review_steps=rng.random() < 0.3,
                analysis=rng.random() < 0.5,
            )
        )
        rollouts += len(where)
        index += 1
    return models, names


def policy_text(m: Model) -> str:
    strategy = {
        "progressive": (
            "    type: progressive\n"
            "    steps:\n"
            "      - {weight: 10, minDuration: 10m}\n"
            "      - {weight: 50, minDuration: 20m}\n"
        ),
        "canary": (
            "    type: canary\n"
            "    minDuration: 15m\n"
            "    match:\n"
            "      - headers:\n"
            "          x-canary:\n"
            "            exact: 'true'\n"
        ),
        "mirror": "    type: mirror\n    mirrorPercent: 25\n    minDuration: 30m\n",
        "blue-green": "    type: blue-green\n",
    }[m.strategy]
    lines = [
        "apiVersion: gitops-rollout.dev/v1alpha1",
        "kind: RolloutPolicy",
        "metadata:",
        f"  name: {m.name}",
        "spec:",
        f"  namespace: {m.namespace}",
        "  target:",
        f"    kind: {m.target}",
        "  strategy:",
        strategy.rstrip("\n"),
    ]
    if m.target == "deployment":
        lines += ["  routing:", f"    hosts: [{m.name}.{m.namespace}.svc.cluster.local]"]
    elif m.target == "seldon":
        lines += [
            "  routing:",
            f"    hosts: [{m.name}.models.example.com]",
            "    gateways: [istio-system/seldon-gateway]",
        ]
    lines += ["  clusters:", *(f"    - name: {c}" for c in m.clusters)]
    if m.analysis:
        lines += [
            "  analysis:",
            "    interval: 1m",
            "    objectives:",
            "      - metric: error-rate",
            "      - metric: mean-latency",
            "        upperLimit: 250   # milliseconds",
        ]
    if m.review_steps:
        lines += ["  gitops:", "    autoMerge: [adopt, cleanup, rollback]", "    labels: [ml]"]
    return "# Owned by " + m.namespace + "\n" + "\n".join(lines) + "\n"


def manifest_text(m: Model, version: int, *, role: str) -> str:
    name = f"{m.name}-v{version}"
    labels = (
        "  labels:\n"
        f"    app.kubernetes.io/name: {m.name}\n"
        f'    app.kubernetes.io/version: "{version}.0"\n'
        '    gitops-rollout.dev/watch: "true"\n'
        f"    gitops-rollout.dev/role: {role}\n"
    )
    head = f"metadata:\n  name: {name}\n  namespace: {m.namespace}\n{labels}"
    if m.target == "deployment":
        return (
            f"apiVersion: apps/v1\nkind: Deployment\n{head}"
            "spec:\n"
            "  replicas: 2\n"
            "  selector:\n"
            "    matchLabels:\n"
            f"      app.kubernetes.io/name: {m.name}\n"
            f'      app.kubernetes.io/version: "{version}.0"\n'
            "  template:\n"
            "    metadata:\n"
            "      labels:\n"
            f"        app.kubernetes.io/name: {m.name}\n"
            f'        app.kubernetes.io/version: "{version}.0"\n'
            "    spec:\n"
            "      containers:\n"
            "        - name: server\n"
            f"          image: registry.example.com/{m.namespace}/{m.name}:{version}.0\n"
            "          ports:\n"
            "            - containerPort: 8080\n"
            "              name: http\n"
            "---\n"
            "apiVersion: v1\n"
            "kind: Service\n"
            f"metadata:\n  name: {name}\n  namespace: {m.namespace}\n"
            "spec:\n"
            "  selector:\n"
            f"    app.kubernetes.io/name: {m.name}\n"
            f'    app.kubernetes.io/version: "{version}.0"\n'
            "  ports:\n"
            "    - name: http\n"
            "      port: 8080\n"
            "      targetPort: 8080\n"
        )
    if m.target in ("kserve", "kserve-modelmesh"):
        annotations = (
            "  annotations:\n    serving.kserve.io/deploymentMode: ModelMesh\n"
            if m.target == "kserve-modelmesh"
            else ""
        )
        return (
            f"apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n{head}{annotations}"
            "spec:\n"
            "  predictor:\n"
            "    model:\n"
            "      modelFormat:\n"
            "        name: sklearn\n"
            f"      storageUri: s3://models/{m.namespace}/{m.name}/{version}.0\n"
        )
    return (
        f"apiVersion: machinelearning.seldon.io/v1\nkind: SeldonDeployment\n{head}"
        "spec:\n"
        "  predictors:\n"
        "    - name: default\n"
        "      replicas: 1\n"
        "      graph:\n"
        "        name: classifier\n"
        "        implementation: SKLEARN_SERVER\n"
        f"        modelUri: gs://models/{m.namespace}/{m.name}/{version}.0\n"
    )


def _kind(m: Model) -> str:
    return {
        "deployment": "Deployment",
        "kserve": "InferenceService",
        "kserve-modelmesh": "InferenceService",
        "seldon": "SeldonDeployment",
    }[m.target]


def _versions(m: Model) -> list[tuple[int, str]]:
    out = [(m.version, "primary")]
    if m.candidate:
        out.append((m.version + 1, "candidate"))
    return out


def write_repository(world: World) -> None:
    """policies/, clusters/ with kustomizations, written below world.human."""
    human = world.human
    (human / "policies").mkdir(parents=True)
    listing: dict[tuple[str, str], list[str]] = {}
    for m in world.models:
        (human / "policies" / f"{m.name}.yaml").write_text(policy_text(m))
    for cluster, m in world.rollouts():
        folder = human / "clusters" / cluster / m.namespace / m.name
        folder.mkdir(parents=True, exist_ok=True)
        for version, role in _versions(m):
            file = f"{m.name}-v{version}.yaml"
            (folder / file).write_text(manifest_text(m, version, role=role))
            listing.setdefault((cluster, m.namespace), []).append(f"{m.name}/{file}")
    for cluster in world.clusters:
        namespaces = sorted(ns for c, ns in listing if c == cluster)
        _kustomization(human / "clusters" / cluster / "kustomization.yaml", namespaces)
    for (cluster, namespace), entries in listing.items():
        path = human / "clusters" / cluster / namespace / "kustomization.yaml"
        _kustomization(path, entries, namespace=namespace)


def _kustomization(path: Path, entries: Sequence[str], *, namespace: str | None = None) -> None:
    head = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
    if namespace:
        head = f"# Models of {namespace}; one folder per model.\n" + head
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "resources:\n" + "".join(f"  - {e}\n" for e in entries))


def _live(m: Model, version: int, *, ready: bool) -> dict[str, Any]:
    kind = _kind(m)
    meta = {
        "name": f"{m.name}-v{version}",
        "namespace": m.namespace,
        "generation": 1,
        "labels": {"app.kubernetes.io/name": m.name, "app.kubernetes.io/version": f"{version}.0"},
    }
    status: dict[str, Any]
    if kind == "SeldonDeployment":
        status = {"state": "Available" if ready else "Creating", "observedGeneration": 1}
    else:
        status = {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Available" if kind == "Deployment" else "Ready",
                    "status": "True" if ready else "False",
                    "message": "" if ready else "pulling image",
                }
            ],
        }
    api = {
        "InferenceService": "serving.kserve.io/v1beta1",
        "SeldonDeployment": "machinelearning.seldon.io/v1",
    }.get(kind, "apps/v1")
    return {"apiVersion": api, "kind": kind, "metadata": meta, "status": status}


def write_inventory(world: World) -> None:
    """``kubectl get isvc,sdep,deploy -A -o json`` per cluster, every object with status."""
    world.inventory.mkdir(parents=True, exist_ok=True)
    items: dict[str, list[dict[str, Any]]] = {c: [] for c in world.clusters}
    for cluster, m in world.rollouts():
        for version, role in _versions(m):
            ready = role == "primary" or m.candidate_ready
            items[cluster].append(_live(m, version, ready=ready))
    for cluster, objs in items.items():
        doc = {"apiVersion": "v1", "kind": "List", "items": objs}
        (world.inventory / f"{cluster}.json").write_text(json.dumps(doc))


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return done.stdout


def _human_env(when: datetime) -> dict[str, str]:
    stamp = f"{int(when.timestamp())} +0000"
    return {
        "GIT_AUTHOR_NAME": "ml-engineer",
        "GIT_AUTHOR_EMAIL": "ml-engineer@example.com",
        "GIT_COMMITTER_NAME": "ml-engineer",
        "GIT_COMMITTER_EMAIL": "ml-engineer@example.com",
        "GIT_AUTHOR_DATE": stamp,
        "GIT_COMMITTER_DATE": stamp,
    }


def seed(world: World) -> None:
    """The repository and snapshot on disk, committed and pushed to a bare remote."""
    write_repository(world)
    write_inventory(world)
    git("init", "--bare", "--quiet", "--initial-branch=main", str(world.remote))
    git("init", "--quiet", "--initial-branch=main", cwd=world.human)
    git("add", "-A", cwd=world.human)
    git(
        "commit",
        "--quiet",
        "-m",
        f"{len(world.models)} models",
        cwd=world.human,
        env=_human_env(T0 - timedelta(days=1)),
    )
    git("remote", "add", "origin", str(world.remote), cwd=world.human)
    git("push", "--quiet", "origin", "main", cwd=world.human)


def human_change(world: World, share: float, when: datetime) -> list[tuple[str, Model, str]]:
    """1 %: new candidates for two thirds of the picked models, policy edits for the rest.

    Edits go to models that are Idle with one version, as most are. Returns
    (cluster, model, what) for every changed rollout.
    """
    rng = world.rng
    idle = [m for m in world.models if not m.candidate]
    picked = rng.sample(idle, max(1, round(len(world.models) * share)))
    changed: list[tuple[str, Model, str]] = []
    git("pull", "--quiet", "--ff-only", "origin", "main", cwd=world.human)
    for i, m in enumerate(picked):
        if i % 3 != 2:
            m.candidate, m.candidate_ready = True, True
            version = m.version + 1
            for cluster in m.clusters:
                folder = world.human / "clusters" / cluster / m.namespace
                (folder / m.name / f"{m.name}-v{version}.yaml").write_text(
                    manifest_text(m, version, role="candidate")
                )
                kust = folder / "kustomization.yaml"
                kust.write_text(kust.read_text() + f"  - {m.name}/{m.name}-v{version}.yaml\n")
                changed.append((cluster, m, "candidate"))
        else:
            # A routing change: a second host for the model (re-rendered for Idle models too).
            path = world.human / "policies" / f"{m.name}.yaml"
            text = path.read_text()
            host = f"{m.name}.example.com"
            if "  routing:\n    hosts: [" in text:
                text = text.replace("    hosts: [", f"    hosts: [{host}, ", 1)
            else:
                text = text.replace(
                    "  clusters:\n", f"  routing:\n    hosts: [{host}]\n  clusters:\n"
                )
            path.write_text(text)
            changed.extend((c, m, "policy") for c in m.clusters)
    git("add", "-A", cwd=world.human)
    git(
        "commit",
        "--quiet",
        "-m",
        f"{len(picked)} models: new candidates and routing changes",
        cwd=world.human,
        env=_human_env(when),
    )
    git("push", "--quiet", "origin", "main", cwd=world.human)
    write_inventory(world)
    return changed


# ---------------------------------------------------------------------------------------------
# Measuring one process

RUNNER = """
import atexit, functools, json, resource, sys, time
out = sys.argv[1]
sys.argv = ["gitops-rollout", *sys.argv[2:]]
host = [0.0]
depth = [0]
def report():
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out, "w") as f:
        json.dump({"maxrss_kb": me.ru_maxrss, "children_maxrss_kb": kids.ru_maxrss,
                   "cpu_s": me.ru_utime + me.ru_stime,
                   "children_cpu_s": kids.ru_utime + kids.ru_stime, "host_s": host[0]}, f)
atexit.register(report)
def timed(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        depth[0] += 1
        try:
            return method(*args, **kwargs)
        finally:
            depth[0] -= 1
            if not depth[0]:  # the outermost call only: open_or_update calls open_many
                host[0] += time.perf_counter() - started
    return wrapper
if sys.argv[1] != "plan":
    # Time spent inside the local host's API (its own git calls and records included).
    from gitops_rollout.gitops.hosts.local import LocalHost
    for name in ("pulls_for_prefix", "open_or_update", "open_many", "merge", "merge_many",
                 "mergeable", "mergeable_many", "close", "comment", "comments"):
        if hasattr(LocalHost, name):
            setattr(LocalHost, name, timed(getattr(LocalHost, name)))
from gitops_rollout.cli import run
run()
"""


@dataclass
class Measurement:
    name: str
    seconds: float
    peak_mb: float
    cpu_s: float = 0.0
    git_cpu_s: float = 0.0
    git_peak_mb: float = 0.0
    host_s: float = 0.0
    """Wall time inside the local host's API (pull requests: listing, opening, merging)."""
    exit_code: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


def measure(
    name: str, args: Sequence[str], *, cwd: Path, env: dict[str, str], stdout: Path
) -> Measurement:
    """Run ``gitops-rollout ARGS`` in a fresh interpreter; wall time and its own peak RSS."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        usage_file = Path(handle.name)
    try:
        with stdout.open("wb") as out:
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", RUNNER, str(usage_file), *args],
                cwd=cwd,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.PIPE,
                check=False,
            )
            seconds = time.perf_counter() - started
        usage = json.loads(usage_file.read_text())
    finally:
        usage_file.unlink(missing_ok=True)
    if done.returncode not in (0, 1):
        sys.stderr.write(done.stderr.decode(errors="replace"))
        raise SystemExit(f"{name}: gitops-rollout exited {done.returncode}")
    return Measurement(
        name,
        seconds,
        usage["maxrss_kb"] / 1024,
        cpu_s=usage["cpu_s"],
        git_cpu_s=usage["children_cpu_s"],
        git_peak_mb=usage["children_maxrss_kb"] / 1024,
        host_s=usage["host_s"],
        exit_code=done.returncode,
    )


FLOOR_RUNS = 3
"""The floor is measured this many times (fresh checkouts) and the median taken: one run of
``git add -A`` over 20,000 new files varies by 2x with the page cache and the load."""


def floor(world: World, before: str, refs: Sequence[str], scratch: Path) -> Measurement:
    """The files the first pass wrote (main's merges and the open PR branches), written into a
    checkout of the old main and committed with ``git add -A && git commit``: the median of
    `FLOOR_RUNS` runs, every run's seconds in the detail."""
    files = _written(world, before, refs)
    runs = [_floor_once(world, before, files, scratch / f"floor{n}") for n in range(FLOOR_RUNS)]
    runs.sort(key=lambda m: m.seconds)
    middle = runs[len(runs) // 2]
    middle.detail["runs_s"] = [round(m.seconds, 3) for m in runs]
    return middle


def _written(world: World, before: str, refs: Sequence[str]) -> dict[str, bytes | None]:
    """{path: content, or None when deleted} between `before` and each of `refs`."""
    wanted: dict[str, str | None] = {}  # path -> "ref:path" to read, or None (deleted)
    for ref in refs:
        out = git("diff", "--name-status", "--no-renames", "-z", before, ref, cwd=world.remote)
        tokens = [t for t in out.split("\0") if t]
        for status, path in zip(tokens[::2], tokens[1::2], strict=True):
            wanted[path] = None if status == "D" else f"{ref}:{path}"
    names = [name for name in wanted.values() if name is not None]
    out_bytes = subprocess.run(
        ["git", "--git-dir", str(world.remote), "cat-file", "--batch"],
        input="".join(f"{name}\n" for name in names).encode(),
        check=True,
        capture_output=True,
    ).stdout
    blobs: dict[str, bytes] = {}
    at = 0
    for name in names:  # "<sha> blob <size>\n<content>\n" per object, in order
        header_end = out_bytes.index(b"\n", at)
        size = int(out_bytes[at:header_end].split()[2])
        blobs[name] = out_bytes[header_end + 1 : header_end + 1 + size]
        at = header_end + 1 + size + 1
    return {path: (blobs[name] if name is not None else None) for path, name in wanted.items()}


def _floor_once(
    world: World, before: str, files: dict[str, bytes | None], checkout: Path
) -> Measurement:
    git("clone", "--quiet", str(world.remote), str(checkout))
    git("checkout", "--quiet", "-B", "floor", before, cwd=checkout)
    env = {**os.environ, **_human_env(T0)}
    started = time.perf_counter()
    for path, data in files.items():
        target = checkout / path
        if data is None:
            target.unlink(missing_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    subprocess.run(["git", "add", "-A"], cwd=checkout, check=True, env=env)
    subprocess.run(["git", "commit", "--quiet", "-m", "floor"], cwd=checkout, check=True, env=env)
    seconds = time.perf_counter() - started
    return Measurement("floor", seconds, 0.0, detail={"files": len(files)})


# ---------------------------------------------------------------------------------------------
# Checks


def remote_refs(world: World) -> dict[str, str]:
    out = git("for-each-ref", "--format=%(objectname) %(refname)", cwd=world.remote)
    return {ref: sha for sha, ref in (line.split(" ", 1) for line in out.splitlines())}


def pull_requests(world: World) -> int:
    """How many pull requests the local host holds."""
    from gitops_rollout.gitops.hosts.local import LocalHost

    host = LocalHost(world.remote)
    try:
        return len(host.list_pulls())
    finally:
        host.disconnect()


def routed(world: World) -> list[str]:
    """Rollouts with no routing.yaml on main nor on their own or their cluster's PR branch."""
    missing = []
    listing: dict[str, set[str]] = {}

    def files(ref: str) -> set[str]:
        if ref not in listing:
            out = git("ls-tree", "-r", "--name-only", "-z", ref, "--", "clusters", cwd=world.remote)
            listing[ref] = set(out.split("\0"))
        return listing[ref]

    heads = set(remote_refs(world))
    for cluster, m in world.rollouts():
        path = f"clusters/{cluster}/{m.namespace}/{m.name}/rollout/routing.yaml"
        own = f"refs/heads/gitops-rollout/{cluster}/{m.namespace}/{m.name}"
        adopt = f"refs/heads/gitops-rollout/_adopt/{cluster}"
        if path in files("refs/heads/main"):
            continue
        if any(ref in heads and path in files(ref) for ref in (own, adopt)):
            continue
        missing.append(f"{cluster}/{m.namespace}/{m.name}")
    return missing


def decisions(stdout: Path) -> list[dict[str, Any]]:
    data = json.loads(stdout.read_text())
    out: list[dict[str, Any]] = data["decisions"]
    return out


# ---------------------------------------------------------------------------------------------
# The run


def compile_package() -> None:
    """Compile the package's bytecode, as installing it does (pip compiles at install time).
    Otherwise, where PYTHONDONTWRITEBYTECODE is set (or the checkout is read-only), every
    measured process would compile each edited module again, and the figures would include
    Python compiling our source rather than our program running."""
    if not compileall.compile_dir(ROOT / "gitops_rollout", quiet=1):
        raise SystemExit("compiling gitops_rollout failed")


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    models, clusters = plan_models(args.models, args.clusters, rng)
    if args.keep:
        root = Path(args.keep).resolve()
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="gitops-rollout-scale-"))
    world = World(root, models, clusters, rng)
    try:
        return _run(world, args)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _run(world: World, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    compile_package()
    seed(world)
    rollouts = sum(len(m.clusters) for m in world.models)
    print(
        f"seeded {len(world.models)} policies, {rollouts} rollouts over {len(world.clusters)} "
        f"clusters ({sum(m.candidate for m in world.models)} with a candidate) in "
        f"{time.perf_counter() - started:.1f} s: {world.root}",
        flush=True,
    )
    env = {"GITOPS_ROLLOUT_CACHE": str(world.root / "cache-plan")}
    common = ["--inventory", str(world.inventory), "--json"]
    reconcile = [
        "reconcile",
        "--repo",
        str(world.human),
        "--remote",
        str(world.remote),
        "--host",
        "local",
        "--cache-dir",
        str(world.root / "cache"),
        *common,
    ]
    out = world.root / "out"
    out.mkdir()

    def reconcile_at(name: str, when: datetime, output: str) -> Measurement:
        """One reconcile pass at `when`, its JSON report in out/`output`."""
        return measure(
            name,
            [*reconcile, "--now", when.isoformat()],
            cwd=world.root,
            env=env,
            stdout=out / output,
        )

    results: list[Measurement] = []
    checks: dict[str, Any] = {}

    plan_dir = world.root / "plan-output"
    a = measure(
        "(a) cold plan --output",
        [
            "plan",
            "--repo",
            str(world.human),
            "--output",
            str(plan_dir),
            "--now",
            T0.isoformat(),
            *common,
        ],
        cwd=world.root,
        env=env,
        stdout=out / "a.json",
    )
    results.append(a)
    checks["plan_routing_files"] = sum(1 for _ in plan_dir.rglob("routing.yaml"))

    before_main = remote_refs(world)["refs/heads/main"]
    b = reconcile_at("(b) cold reconcile", T0, "b.json")
    results.append(b)
    after_b = remote_refs(world)
    bot_refs = [r for r in after_b if r.startswith("refs/heads/gitops-rollout/")]
    b_decisions = decisions(out / "b.json")
    checks["b_outcomes"] = _count(d["outcome"] for d in b_decisions)
    checks["b_missing_routing"] = routed(world)
    checks["b_pulls"] = pull_requests(world)
    b.detail["commits"] = len(bot_refs)

    flo = floor(world, before_main, ["refs/heads/main", *sorted(bot_refs)], world.root / "scratch")

    # Passes run (a minute apart) until one changes nothing: that one is the first no-op pass,
    # (c) the one after it. More than one settling pass means PRs of (b) conflicted with each
    # other or were left half done.
    clock = T0
    before = after_b
    settle: list[Measurement] = []
    for n in range(1, MAX_SETTLE + 1):
        clock += timedelta(minutes=1)
        step = reconcile_at(f"    settling pass {n}", clock, f"settle{n}.json")
        settle.append(step)
        now_refs = remote_refs(world)
        if now_refs == before:
            break
        before = now_refs
    checks["settling_passes"] = len(settle)
    checks["settled"] = remote_refs(world) == before

    clock += timedelta(minutes=1)
    c = reconcile_at("(c) no-op reconcile", clock, "c.json")
    results.append(c)
    after_c = remote_refs(world)
    checks["c_changed_refs"] = sorted(
        r for r in set(before) | set(after_c) if before.get(r) != after_c.get(r)
    )
    checks["c_outcomes"] = _count(d["outcome"] for d in decisions(out / "c.json"))
    checks["c_same_decisions_as_previous"] = _comparable(out / "c.json") == _comparable(
        out / f"settle{len(settle)}.json"
    )

    clock += timedelta(minutes=1)
    changed = human_change(world, CHANGE_SHARE, clock)
    after_human = remote_refs(world)
    clock += timedelta(minutes=1)
    d = reconcile_at(
        f"(d) reconcile, {len({m.name for _, m, _ in changed})} models changed", clock, "d.json"
    )
    results.append(d)
    after_d = remote_refs(world)
    moved = {r for r in after_d if after_human.get(r) != after_d[r]}
    d_decisions = {(x["cluster"], x["model"]): x for x in decisions(out / "d.json")}
    checks["d_changed_rollouts"] = len(changed)
    checks["d_outcomes"] = _count(x["outcome"] for x in d_decisions.values())
    checks["d_candidates_without_pr"] = sorted(
        f"{c}/{m.name}"
        for c, m, what in changed
        if what == "candidate"
        and not (d_decisions.get((c, m.name), {}).get("pr"))
        and d_decisions.get((c, m.name), {}).get("outcome") != "none"
    )
    checks["d_moved_refs"] = len(moved)
    checks["d_missing_routing"] = routed(world)

    ok = {
        "every rollout routed after (b)": not checks["b_missing_routing"],
        "passes settle": checks["settled"],
        "the pass after (b) changes nothing": checks["settled"] and checks["settling_passes"] == 1,
        "no-op pass changed no ref": not checks["c_changed_refs"],
        "no-op pass decided as the pass before": checks["c_same_decisions_as_previous"],
        "every rollout routed after (d)": not checks["d_missing_routing"],
        "(d) moved refs": checks["d_moved_refs"] > 0,
    }
    goals = {
        f"(b) <= {GOALS['b_over_floor']:g}x floor": (
            b.seconds <= GOALS["b_over_floor"] * flo.seconds
        ),
        f"(c) <= {GOALS['c_seconds']:g} s": c.seconds <= GOALS["c_seconds"],
        f"(d) <= {GOALS['d_seconds']:g} s": d.seconds <= GOALS["d_seconds"],
        f"peak <= {GOALS['peak_mb']:g} MB": max(m.peak_mb for m in results) <= GOALS["peak_mb"],
    }
    report = {
        "models": len(world.models),
        "rollouts": rollouts,
        "clusters": len(world.clusters),
        "seed": args.seed,
        "measurements": [asdict(m) for m in [*results, flo]],
        "floor_seconds": flo.seconds,
        "checks": checks,
        "correct": ok,
        "goals": goals,
    }
    report["settling"] = [asdict(m) for m in settle]
    _print([results[0], results[1], *settle, *results[2:]], flo, ok, goals, checks)
    return report


def _comparable(path: Path) -> list[tuple[Any, ...]]:
    """A pass's decisions without the clock in them (a progressing step's time to go)."""
    return [
        (
            d["cluster"],
            d["namespace"],
            d["model"],
            d["action"],
            d["phase"],
            d["outcome"],
            d["pr"],
            d["reason"] if d["phase"].split()[0] in ("Idle", "RolledBack", "Paused") else "",
        )
        for d in decisions(path)
    ]


def _count(values: Iterator[str] | Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _print(
    results: Sequence[Measurement],
    flo: Measurement,
    ok: dict[str, bool],
    goals: dict[str, bool],
    checks: dict[str, Any],
) -> None:
    print()
    print(
        f"{'measurement':34} {'wall s':>7} {'x floor':>7} {'peak MB':>7} {'cpu s':>6} "
        f"{'sub cpu':>7} {'host s':>6}"
    )
    for m in results:
        print(
            f"{m.name:34} {m.seconds:7.2f} {m.seconds / flo.seconds:7.2f} {m.peak_mb:7.1f} "
            f"{m.cpu_s:6.2f} {m.git_cpu_s:7.2f} {m.host_s:6.2f}"
        )
    runs = ", ".join(f"{s:.2f}" for s in flo.detail.get("runs_s", []))
    print(
        f"{'floor: git add -A && git commit':34} {flo.seconds:7.2f} {1.0:7.2f}"
        f" {'':>7} ({flo.detail['files']} files; median of {runs} s)"
    )
    print(
        "(wall: the whole process, interpreter start included; cpu: its own; sub cpu: its "
        "children's (git, the manifest-parsing worker); host s: wall time inside the local "
        "host's pull request API)"
    )
    print()
    print("outcomes (b):", checks["b_outcomes"])
    print("outcomes (c):", checks["c_outcomes"])
    print("outcomes (d):", checks["d_outcomes"])
    for label, passed in {**ok, **goals}.items():
        print(f"  [{'ok' if passed else 'MISSED'}] {label}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--models", type=int, default=10_000, help="rollouts (model x cluster)")
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", default=None, help="build the world in DIR and keep it")
    parser.add_argument("--quick", action="store_true", help="500 models: a correctness run")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = min(args.models, 500)
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0 if all(report["correct"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
