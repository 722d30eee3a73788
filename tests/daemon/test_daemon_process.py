"""``gitops-rollout run`` as a process: passes, SIGTERM mid-pass, restart, same end state.

Two worlds run side by side, each a bare remote seeded with the fixture repository and a fake
Kubernetes API server serving cluster ``prod-east`` (the models' readiness, the Argo CD
Application that syncs the cluster, the shard Lease); cluster ``staging`` points at a port
nobody listens on. A test thread plays Argo CD: once allowed, it reports every new main commit
applied. World A is stopped with SIGTERM while a pass waits on the API server, and restarted;
world B runs uninterrupted. Both must end in the same repository state and pull requests: the
rollout at its last step with one open promotion PR (a human merges promotions), staging never
touched, no PR opened twice.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest
import yaml
from live import fake_apiserver
from live.fake_apiserver import FakeApiServer
from live.objects import isvc, model_labels

from gitops_rollout.gitops.hosts.base import PullState
from gitops_rollout.gitops.hosts.local import LocalHost, PullRecord

from .fixture_repo import ROUTING, git, main_sha, seed

INTERVAL = "2"
APP = {"namespace": "argocd", "name": "clusters-prod-east"}
STEP_1, PROMOTE = "step 1/3 -> 20%", "promote v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str, predicate: Callable[[], bool], timeout: float, log: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}\n--- log ---\n{log()[-6000:]}"
    )


def model(name: str, version: str, *, ready: bool) -> dict[str, Any]:
    obj = isvc(
        name,
        namespace="modelmesh-serving",
        ready=ready,
        labels=model_labels("wisdom", version),
        message="" if ready else "loading the model",
    )
    obj["metadata"]["annotations"] = {"serving.kserve.io/deploymentMode": "ModelMesh"}
    return obj


class World:
    """One remote, one fake API server, one Argo CD stand-in, one daemon process at a time."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name
        self.dir.mkdir()
        self.name = name
        self.remote = seed(self.dir)
        self.host = LocalHost(self.remote, user="observer")
        self.api = FakeApiServer().start()
        self.api.put(model("wisdom-0", "v0", ready=True))
        self.api.put(model("wisdom-1", "v1", ready=False))
        self.api.put(
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Application",
                "metadata": dict(APP),
                "spec": {"project": "default"},
                "status": {},
            }
        )
        nobody = free_port()
        self.kubeconfig = self.api.write_kubeconfig(
            self.dir / "kubeconfig",
            contexts={"prod-east": self.api.url, "staging": f"http://127.0.0.1:{nobody}"},
        )
        self.port = free_port()
        self.before_get: Callable[[str], None] | None = None
        self.api.before_get = self._before_get  # type: ignore[attr-defined]
        self.syncing = threading.Event()
        self._stop = threading.Event()
        self._history: list[dict[str, Any]] = []
        self._syncer = threading.Thread(target=self._sync_loop, name=f"argocd-{name}", daemon=True)
        self._syncer.start()
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self._log_file: IO[bytes] | None = None

    def _before_get(self, path: str) -> None:
        hook = self.before_get
        if hook is not None:
            hook(path)

    # -- Argo CD -------------------------------------------------------------------------

    def _sync_loop(self) -> None:
        """While `syncing` is set, report each new main commit applied (as Argo CD would)."""
        applied = ""
        while not self._stop.wait(0.2):
            if not self.syncing.is_set():
                continue
            sha = main_sha(self.remote)
            if sha == applied:
                continue
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._history.append({"id": len(self._history), "revision": sha, "deployedAt": now})
            self.api.put(
                {
                    "apiVersion": "argoproj.io/v1alpha1",
                    "kind": "Application",
                    "metadata": dict(APP),
                    "spec": {"project": "default"},
                    "status": {
                        "sync": {"status": "Synced", "revision": sha},
                        "reconciledAt": now,
                        "history": self._history[-10:],
                    },
                }
            )
            applied = sha

    # -- the daemon ----------------------------------------------------------------------

    def start(self) -> None:
        log = self.dir / f"daemon-{len(self.logs) + 1}.log"
        self.logs.append(log)
        self._log_file = log.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GITOPS_ROLLOUT_", "KUBE"))}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitops_rollout",
                "run",
                "--remote",
                str(self.remote),
                "--cache-dir",
                str(self.dir / "cache"),
                "--kubeconfig",
                str(self.kubeconfig),
                "--argocd-app",
                f"prod-east={APP['namespace']}/{APP['name']}",
                "--lease-context",
                "prod-east",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--interval",
                INTERVAL,
                "--jitter",
                "0",
                "--reload-interval",
                "5",
                "--grace",
                "20",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def terminate(self, timeout: float = 25.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self._log_file is not None:
                self._log_file.close()

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def current_log(self) -> str:
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            return {}
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def passes(self) -> float:
        return sum(
            v
            for k, v in self.metrics().items()
            if k.startswith("gitops_rollout_passes_total{") and "skipped" not in k
        )

    def wait_passes(self, count: int, timeout: float) -> None:
        wait_for(f"{self.name}: {count} passes", lambda: self.passes() >= count, timeout, self.log)

    def pulls(self) -> list[PullRecord]:
        return sorted(self.host.list_pulls(), key=lambda p: p.number)

    def pull(self, title: str) -> PullRecord | None:
        return next((p for p in self.pulls() if title in p.title), None)

    def close(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._log_file is not None:
            self._log_file.close()
        self.api.stop()


@pytest.fixture
def worlds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[World, World]]:
    # The fake API server calls `api.before_get(path)` before answering a GET, so the test can
    # hold a pass on its Argo CD read and send SIGTERM while it is in flight.
    original = fake_apiserver._Handler.do_GET

    def do_get(handler: Any) -> None:
        hook = getattr(handler.api, "before_get", None)
        if hook is not None:
            hook(handler.path)
        original(handler)

    monkeypatch.setattr(fake_apiserver._Handler, "do_GET", do_get)
    a, b = World(tmp_path, "interrupted"), World(tmp_path, "uninterrupted")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _state_of(world: World, title: str) -> PullState | None:
    pull = world.pull(title)
    return pull.state if pull is not None else None


def _final(world: World) -> bool:
    """The promotion PR is open (a human merges it) and the passes after it changed nothing."""
    promote = world.pull(PROMOTE)
    return (
        promote is not None
        and promote.state is PullState.OPEN
        and len(re.findall(r"outcome=unchanged pr=" + str(promote.number), world.current_log()))
        >= 2
    )


def _state(world: World) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """Pull requests (head, title, state) in order, and every file of main below clusters/."""
    pulls = [(p.head, p.title, p.state.value) for p in world.pulls()]
    listing = git("--git-dir", str(world.remote), "ls-tree", "-r", "main", "clusters/")
    files = {}
    for line in listing.splitlines():
        meta, path = line.split("\t", 1)
        files[path] = meta.split()[2]
    return pulls, files


def test_daemon_survives_sigterm_mid_pass_and_ends_like_an_uninterrupted_run(
    worlds: tuple[World, World],
) -> None:
    a, b = worlds
    started = time.monotonic()
    b.syncing.set()  # B's Argo CD applies every merge at once
    a.start()
    b.start()

    # Several passes with the candidate not Ready: the model is adopted, nothing rolls out,
    # and staging (unreachable) is held, never touched.
    for world in (a, b):
        world.wait_passes(3, timeout=30)
        titles = [(p.title, p.state) for p in world.pulls()]
        assert titles == [("rollout: prod-east adopt 1 model(s)", PullState.MERGED)], titles
        log = world.log()
        assert "candidate v1 (modelmesh-serving/wisdom-1) is not Ready" in log
        assert "cluster 'staging' cannot be reached" in log and "holding its rollouts" in log
        heads = git("--git-dir", str(world.remote), "for-each-ref", "--format=%(refname)")
        assert "staging" not in heads, heads

    # Readiness flips on the API server: the canary's first step follows within a few passes.
    for world in (a, b):
        world.api.put(model("wisdom-1", "v1", ready=True))
    for world in (a, b):
        # The bot opens the step's pull request, then merges it (the policy lets it): another
        # process can see it open in between, so wait for the merge.
        wait_for(
            f"{world.name}: {STEP_1} merged",
            lambda w=world: _state_of(w, STEP_1) is PullState.MERGED,
            12,
            world.log,
        )

    # A's Argo CD has not applied step 1 yet: the step's clock has not started, A holds.
    a_passes = a.passes()
    a.wait_passes(a_passes + 2, timeout=10)
    assert a.pull("step 2/3") is None
    assert "waiting for prod-east to apply" in a.current_log()
    pending = a.metrics()
    key = 'gitops_rollout_sync_pending_seconds{rollout="prod-east/modelmesh-serving/wisdom"}'
    assert pending.get(key, 0) > 0, pending

    # Argo CD applies; the next pass is held on its read of the Application, and SIGTERM lands.
    in_flight = threading.Event()

    def slow_application_read(path: str) -> None:
        if "/applications/" in path and not in_flight.is_set():
            in_flight.set()
            time.sleep(1.5)

    a.before_get = slow_application_read
    a.syncing.set()
    wait_for("a pass reading the Application", in_flight.is_set, 10, a.log)
    code = a.terminate()
    a.before_get = None
    first = a.current_log()
    assert code == 0, first[-4000:]
    signalled = first.index("received SIGTERM")
    assert "pass finished: wisdom" in first[signalled:], "the pass in flight finished"
    assert "scheduler stopped cleanly" in first[signalled:]
    assert "lease gitops-system/gitops-rollout-shard-0" in first

    # Restart A: it picks up from Git (and takes the Lease at once: the old one released it).
    restarted = datetime.now(UTC)
    a.start()
    for world in (a, b):
        wait_for(f"{world.name}: final state", lambda w=world: _final(w), 45, world.log)
    metrics_a = a.metrics()
    assert a.terminate() == 0 and b.terminate() == 0

    # Same end state, whether interrupted or not; no PR opened twice.
    state_a, state_b = _state(a), _state(b)
    assert state_a == state_b
    pulls, files = state_a
    assert [title.split(": ", 1)[-1] for _, title, _ in pulls] == [
        "prod-east adopt 1 model(s)",
        "prod-east step 1/3 -> 20%",
        "prod-east step 2/3 -> 60%",
        "prod-east step 3/3 -> 100%",
        "prod-east promote v1: wisdom-0 takes its spec",
    ]
    assert [s for _, _, s in pulls] == ["merged"] * 4 + ["open"]
    assert max(Counter((h, t) for h, t, _ in pulls).values()) == 1
    assert not [p for p in files if p.startswith("clusters/staging/") and "/rollout/" in p]
    routing = git("--git-dir", str(a.remote), "show", f"main:{ROUTING.format(cluster='prod-east')}")
    annotations = next(yaml.safe_load_all(routing))["metadata"]["annotations"]
    assert annotations["gitops-rollout.dev/phase"] == "Progressing"
    assert annotations["gitops-rollout.dev/step"] == "3"

    # /metrics of the restarted process accounts for its passes and the PRs it wrote.
    since = [p for p in a.pulls() if p.created_at >= restarted]
    merged = [p for p in a.pulls() if p.merged_at is not None and p.merged_at >= restarted]
    assert metrics_a['gitops_rollout_passes_total{outcome="succeeded"}'] >= 3
    assert metrics_a["gitops_rollout_pull_requests_opened_total"] == len(since), since
    assert metrics_a.get("gitops_rollout_pull_requests_merged_total", 0) == len(merged)
    assert metrics_a['gitops_rollout_decisions_total{action="promote"}'] >= 1
    assert time.monotonic() - started < 90
