"""Helpers for the write-stage tests: a bare remote, a human who pushes to it, a clock."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from gitops_rollout.gitops.repo import Identity
from gitops_rollout.inventory.model import ModelVersion, ObjectRef, Readiness, Role, Status
from gitops_rollout.policy import LoadedPolicy, load_policy_text
from gitops_rollout.state import Phase, RolloutState, StoredState, VersionMark
from gitops_rollout.transitions import Command, Transition, advance, assess

BOT = Identity("gitops-rollout", "bot@rollout.test")
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    out = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=True,
        capture_output=True,
    )
    return out.stdout.decode()


def identity_env(
    when: datetime,
    author: tuple[str, str] = ("A", "a@x"),
    committer: tuple[str, str] | None = None,
) -> dict[str, str]:
    """The environment git reads a commit's author, committer and their date from."""
    (name, email), (cname, cemail) = author, committer or author
    date = f"{int(when.timestamp())} +0000"
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_NAME": cname,
        "GIT_COMMITTER_EMAIL": cemail,
        "GIT_COMMITTER_DATE": date,
    }


class Clock:
    """A settable clock, like the demo's simulated one."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 60) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class Remote:
    """A bare GitOps repository, and a human with a work tree who pushes to it."""

    def __init__(self, root: Path) -> None:
        self.path = root / "remote.git"
        self.work = root / "human"
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.path))
        git("init", "--quiet", "--initial-branch=main", str(self.work))
        git("remote", "add", "origin", str(self.path), cwd=self.work)

    def commit(
        self,
        files: Mapping[str, bytes | str | None],
        *,
        branch: str = "main",
        message: str = "human change",
        author: tuple[str, str] = ("Alice", "alice@example.com"),
        committer: tuple[str, str] | None = None,
        when: datetime = T0,
        amend: bool = False,
    ) -> str:
        """Commit `files` on top of the remote `branch` (created from main) and push it."""
        git("fetch", "--quiet", "origin", cwd=self.work)
        remote_branches = git("branch", "-r", cwd=self.work).split()
        start = f"origin/{branch}" if f"origin/{branch}" in remote_branches else "origin/main"
        if "origin/main" not in remote_branches:
            git("checkout", "--quiet", "--orphan", branch, cwd=self.work)
        else:
            git("checkout", "--quiet", "-B", branch, start, cwd=self.work)
        for path, content in files.items():
            full = self.work / path
            if content is None:
                full.unlink()
                continue
            full.parent.mkdir(parents=True, exist_ok=True)
            full.write_bytes(content.encode() if isinstance(content, str) else content)
        git("add", "-A", cwd=self.work)
        env = identity_env(when, author, committer)
        extra = ["--amend", "--no-edit"] if amend else ["-m", message]
        git("commit", "--quiet", "--allow-empty", *extra, cwd=self.work, env=env)
        git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return self.head(branch) or ""

    def head(self, branch: str) -> str | None:
        try:
            ref = f"refs/heads/{branch}"
            return git("--git-dir", str(self.path), "rev-parse", "--verify", ref).strip()
        except subprocess.CalledProcessError:
            return None

    def sha(self, rev: str) -> str:
        return git("--git-dir", str(self.path), "rev-parse", rev).strip()

    def refs(self) -> dict[str, str]:
        out = git("--git-dir", str(self.path), "for-each-ref", "--format=%(refname) %(objectname)")
        return dict(line.split(" ") for line in out.splitlines())

    def show(self, rev: str, path: str) -> bytes:
        return subprocess.run(
            ["git", "--git-dir", str(self.path), "show", f"{rev}:{path}"],
            check=True,
            capture_output=True,
        ).stdout

    def log(self, rev: str, fmt: str = "%H", *extra: str) -> list[str]:
        out = git("--git-dir", str(self.path), "log", f"--format={fmt}", *extra, rev)
        return [line for line in out.splitlines() if line]


SEED = {
    "policies/wisdom.yaml": "kind: RolloutPolicy\nmetadata: {name: wisdom}\n",
    "clusters/prod/ml/wisdom/v1.yaml": "kind: InferenceService\nmetadata: {name: wisdom-0}\n",
    "clusters/prod/ml/wisdom/rollout/routing.yaml": "kind: VirtualService\nspec: {w: 0}\n",
    "clusters/prod/ml/iris/v1.yaml": "kind: Deployment\nmetadata: {name: iris-0}\n",
}


# -- transitions, built by the real state machine ----------------------------------------------

POLICY_FILE = "policies/fashionmnist.yaml"


POLICY = """\
apiVersion: gitops-rollout.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: fashionmnist
spec:
  namespace: default
  target: {kind: deployment}
  strategy:
    type: progressive
    steps:
      - {weight: 5, minDuration: 2m}
      - {weight: 10, minDuration: 2m}
      - {weight: 20, minDuration: 2m}
      - {weight: 30, minDuration: 2m}
      - {weight: 40, minDuration: 2m}
      - {weight: 60, minDuration: 2m}
      - {weight: 80, minDuration: 2m}
      - {weight: 100, minDuration: 2m}
  promotion: {mode: route-only}
  clusters: [{name: prod-east}]
  analysis:
    objectives: [{metric: mean-latency, upperLimit: 250}, {metric: error-rate}]
  gitops:
    labels: [ml-platform]
"""


def loaded_policy() -> LoadedPolicy:
    loaded, problems = load_policy_text(POLICY, file=POLICY_FILE)
    assert not problems
    return loaded[0]


def version(n: int, role: Role) -> ModelVersion:
    return ModelVersion(
        ObjectRef("Deployment", "default", f"fashionmnist-{n}"),
        "fashionmnist",
        f"v{n + 1}",
        role,
        f"clusters/prod-east/default/fashionmnist/v{n + 1}.yaml",
        0,
        Status(Readiness.READY),
        f"digest{n}",
    )


class Action(StrEnum):
    ADVANCE = "advance"


@dataclass(frozen=True)
class Check:
    metric: str
    baseline: float | None
    candidate: float | None
    bound: float
    passed: bool


@dataclass(frozen=True)
class Verdict:
    action: Action = Action.ADVANCE
    reasons: tuple[str, ...] = ("mean-latency and error-rate within bounds",)
    suggested_weights: None = None
    winner: None = None
    checks: tuple[Check, ...] = (
        Check("mean-latency", 120.0, 131.25, 250.0, True),
        Check("error-rate", 0.001, None, 0.0011, True),
    )


def transition(
    *,
    step: int = 1,
    stored: bool = True,
    verdict: object | None = None,
    command: Command | None = None,
) -> Transition:
    """A progressive rollout of fashionmnist v2 on prod-east, at `step` (weights 5, 10, 20...)."""
    loaded = loaded_policy()
    primary, candidate = version(0, Role.PRIMARY), version(1, Role.CANDIDATE)
    weights = (5, 10, 20, 30, 40, 60, 80, 100)[step - 1]
    state = RolloutState(
        Phase.PROGRESSING,
        step,
        VersionMark(primary.key, "v1", "digest0"),
        (VersionMark(candidate.key, "v2", "digest1"),),
        ((primary.key, 100 - weights), (candidate.key, weights)),
        policy=POLICY_FILE,
    )
    situation = assess(
        loaded,
        cluster="prod-east",
        versions=[primary, candidate],
        stored=StoredState(state) if stored else None,
        step_started=T0 - timedelta(minutes=10),
    )
    return advance(
        situation,
        now=T0,
        verdict=verdict if verdict is not None else Verdict(),  # type: ignore[arg-type]
        command=command,
    )
