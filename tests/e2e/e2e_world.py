"""The world around the reconciler in the end-to-end tests.

A bare remote seeded from the project's example repository (policies/ and clusters/), a human
clone that pushes to it, kubectl-style readiness snapshots written from the main branch (every
watched object Ready unless a test says otherwise), a simulated clock, the local host, and the
real command line. It builds on the demo's `World` (seeding, human pushes, simulated traffic),
so the scenarios run exactly as ``gitops-rollout demo`` runs them, with assertions added.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from schema_check import schemas

import gitops_rollout
from gitops_rollout import demo, reconcile
from gitops_rollout.composition import snapshot_source
from gitops_rollout.gitops.hosts.base import GitHost, PullState
from gitops_rollout.gitops.hosts.local import DATABASE, LocalHost, PullRecord
from gitops_rollout.gitops.repo import Workspace
from gitops_rollout.inventory.model import Kind
from gitops_rollout.state import PREFIX, RolloutState, read_stored
from gitops_rollout.transitions import Command

EXAMPLE = Path(gitops_rollout.__file__).resolve().parents[1]
"""The project repository: its policies/ and clusters/ are the example GitOps repository."""

CLI = Path(sys.executable).with_name("gitops-rollout")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PASS_EVERY = timedelta(minutes=2)
PHASE = PREFIX + "phase"


def git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def kind_of(pull: PullRecord) -> str:
    """The transition kind a pull request carries (its ``rollout:<kind>`` label)."""
    kinds = [label.split(":", 1)[1] for label in pull.labels if label.startswith("rollout:")]
    assert len(kinds) == 1, f"#{pull.number} has labels {pull.labels}"
    return kinds[0]


def live_object(
    kind: str, namespace: str, name: str, version: str, *, ready: bool, reason: str
) -> dict[str, Any]:
    """One object as ``kubectl get -o yaml`` prints it, with a status."""
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
            **({} if ready else {"description": reason}),
        }
    else:
        condition = "Available" if kind == Kind.DEPLOYMENT else "Ready"
        status = {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": condition,
                    "status": "True" if ready else "False",
                    "message": "" if ready else reason,
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


@dataclass(frozen=True)
class Snapshot:
    """Everything on the remote a pass could change: refs and pull request records."""

    refs: dict[str, str]
    pulls: dict[int, dict[str, Any]]


class World(demo.World):
    """One bare remote seeded from the example, with its clusters, people and clock."""

    def __init__(
        self,
        root: Path,
        *,
        policies: Collection[str] | None = None,
        edit: Callable[[Path], None] | None = None,
    ) -> None:
        """`policies`: keep only these policy files (by name); `edit` changes the example
        before it is pushed."""
        super().__init__(root / "world", console=Console(file=io.StringIO()))
        self.now = T0
        self.cache = root / "cache"
        self.inventory_dir = self.workdir / "inventory"
        self.not_ready: dict[tuple[str, str], str] = {}
        """(cluster, object name) -> why the cluster reports it not Ready."""
        example = root / "example"
        for folder in ("policies", "clusters"):
            shutil.copytree(EXAMPLE / folder, example / folder)
        if policies is not None:
            for path in (example / "policies").glob("*.yaml"):
                if path.stem not in policies:
                    path.unlink()
        if edit is not None:
            edit(example)
        self.seed(example)
        self.bot = LocalHost(self.remote, clock=self.clock, user="gitops-rollout")
        self.reviewer = LocalHost(self.remote, clock=self.clock, user="reviewer")

    def clock(self) -> datetime:
        return self.now

    def tick(self, delta: timedelta = PASS_EVERY) -> datetime:
        self.now += delta
        return self.now

    # -- the clusters ----------------------------------------------------------------------

    def snapshot_inventory(self) -> None:
        """Readiness per cluster, as Argo CD would have applied the main branch by now."""
        inventory = self.main_view().inventory
        shutil.rmtree(self.inventory_dir, ignore_errors=True)
        self.inventory_dir.mkdir(parents=True)
        for cluster, models in inventory.clusters.items():
            items = []
            for versions in models.models.values():
                for v in versions:
                    reason = self.not_ready.get((cluster, v.ref.name))
                    if (cluster, v.ref.namespace, v.ref.name) in self.fresh:
                        reason = reason or "pulling image"
                    items.append(
                        live_object(
                            v.ref.kind,
                            v.ref.namespace,
                            v.ref.name,
                            v.version,
                            ready=reason is None,
                            reason=reason or "",
                        )
                    )
            doc = {"apiVersion": "v1", "kind": "List", "items": items}
            (self.inventory_dir / f"{cluster}.json").write_text(json.dumps(doc, indent=1))
        self.fresh.clear()

    # -- the reconciler --------------------------------------------------------------------

    def reconcile(
        self,
        *,
        host: GitHost | None = None,
        commands: Mapping[tuple[str, str], Command] | None = None,
        judge: reconcile.Judge = reconcile.no_verdicts,
    ) -> reconcile.PassReport:
        """One in-process pass, as ``gitops-rollout reconcile`` runs it."""
        self.snapshot_inventory()
        with Workspace.open(str(self.remote), cache_dir=self.cache) as workspace:
            return reconcile.run_once(
                workspace=workspace,
                host=host or self.bot,
                options=reconcile.PassOptions(now=self.now, commands=commands or {}),
                inventory=snapshot_source([str(self.inventory_dir)]),
                judge=judge,
                caches=self.caches,
            )

    def cli(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """The real command line, as a user runs it (by default from the human's clone)."""
        env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
        env["GITOPS_ROLLOUT_CACHE"] = str(self.cache)
        return subprocess.run(
            [str(CLI), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd or self.human,
            timeout=120,
            check=False,
        )

    def pass_flags(self) -> list[str]:
        """Flags of a writing pass on this world (inventory written first)."""
        self.snapshot_inventory()
        return [
            "--remote",
            str(self.remote),
            "--inventory",
            str(self.inventory_dir),
            "--now",
            iso(self.now),
            "--cache-dir",
            str(self.cache),
        ]

    # -- the people ------------------------------------------------------------------------

    def push_files(
        self,
        message: str,
        files: Mapping[str, str | bytes | None],
        *,
        author: str = "ml-engineer",
    ) -> None:
        """A person changes files on main (None deletes) and pushes."""

        def edit(root: Path) -> None:
            for path, content in files.items():
                target = root / path
                if content is None:
                    target.unlink()
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content.encode() if isinstance(content, str) else content)

        self.human_change(message, edit, author=author)

    def push_to_branch(
        self, branch: str, message: str, files: Mapping[str, str], *, author: str = "reviewer"
    ) -> str:
        """A person commits to a branch of the remote (a bot branch, say) and pushes; its sha."""
        work = self.human
        git(
            "-C", str(work), "fetch", "--quiet", "origin", f"+{branch}:refs/remotes/origin/{branch}"
        )
        git("-C", str(work), "checkout", "--quiet", "-B", "side", f"origin/{branch}")
        try:
            for path, content in files.items():
                target = work / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
            self._commit(message, author=author)
            git("-C", str(work), "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
            return git("-C", str(work), "rev-parse", "HEAD").strip()
        finally:
            git("-C", str(work), "checkout", "--quiet", "main")

    def pull_human(self) -> Path:
        """The human's clone, up to date with main (for commands that read a checkout)."""
        git("-C", str(self.human), "pull", "--quiet", "--ff-only", "origin", "main")
        return self.human

    # -- reading the remote ----------------------------------------------------------------

    def rev(self, rev: str) -> str:
        return git("--git-dir", str(self.remote), "rev-parse", rev).strip()

    def show(self, path: str, rev: str = "main") -> bytes | None:
        done = subprocess.run(
            ["git", "--git-dir", str(self.remote), "show", f"{rev}:{path}"],
            capture_output=True,
            check=False,
        )
        return done.stdout if done.returncode == 0 else None

    def files(self, rev: str = "main", under: str = "clusters") -> set[str]:
        out = git("--git-dir", str(self.remote), "ls-tree", "-r", "--name-only", rev, under)
        return set(out.split())

    def routing_path(self, cluster: str, model: str, rev: str = "main") -> str | None:
        found = [
            p
            for p in self.files(rev, f"clusters/{cluster}")
            if p.endswith(f"/{model}/rollout/routing.yaml")
        ]
        assert len(found) <= 1, found
        return found[0] if found else None

    def state(self, cluster: str, model: str, rev: str = "main") -> RolloutState | None:
        """The rollout state recorded on `rev` (None: no routing file)."""
        path = self.routing_path(cluster, model, rev)
        if path is None:
            return None
        text = self.show(path, rev)
        assert text is not None
        return read_stored(text).state

    def routing_docs(self, cluster: str, model: str, rev: str = "main") -> list[dict[str, Any]]:
        path = self.routing_path(cluster, model, rev)
        assert path is not None, f"no routing for {model} in {cluster} on {rev}"
        text = self.show(path, rev)
        assert text is not None
        return [d for d in yaml.safe_load_all(text) if d]

    def pulls(self, state: PullState | None = None) -> list[PullRecord]:
        """Pull requests, oldest first."""
        return sorted(self.bot.list_pulls(state=state), key=lambda p: p.number)

    def snapshot(self) -> Snapshot:
        out = git(
            "--git-dir", str(self.remote), "for-each-ref", "--format=%(refname) %(objectname)"
        )
        refs = dict(line.split(" ") for line in out.splitlines())
        # The records as stored: a host would bring them up to date as it read them.
        pulls: dict[int, dict[str, Any]] = {}
        database = self.remote / DATABASE
        if database.exists():
            with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
                rows = db.execute("SELECT number, record FROM pulls WHERE record IS NOT NULL")
                pulls = {number: json.loads(text) for number, text in rows.fetchall()}
        return Snapshot(refs, pulls)

    def first_parents(self, rev: str = "main") -> list[str]:
        """Commits of `rev`'s first-parent chain, oldest first."""
        out = git("--git-dir", str(self.remote), "rev-list", "--first-parent", "--reverse", rev)
        return out.split()

    def changed(self, sha: str) -> list[str]:
        """Paths a first-parent commit changed on main."""
        parents = git("--git-dir", str(self.remote), "rev-list", "--parents", "-n1", sha).split()
        if len(parents) == 1:
            out = git("--git-dir", str(self.remote), "ls-tree", "-r", "--name-only", sha)
        else:
            out = git(
                "--git-dir",
                str(self.remote),
                "diff",
                "--name-only",
                "--no-renames",
                parents[1],
                sha,
            )
        return out.split()

    def pr_diff(self, number: int) -> str:
        """What a pull request changes: its head against the base it was built on."""
        record = self.bot.show(number)
        head = record.head_sha
        base = git("--git-dir", str(self.remote), "rev-parse", f"{head}^").strip()
        return git("--git-dir", str(self.remote), "diff", "-U0", base, head)


# -- checks on the main branch ---------------------------------------------------------------


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is not installed")
        pytest.skip("kubectl is not installed")
    return found


def check_main_history(world: World, commits: Iterable[str]) -> tuple[int, list[str]]:
    """Validate every commit of main: its generated files against the upstream schemas and
    ``kubectl kustomize clusters/<c>`` for every cluster it touched. (builds, problems)"""
    checker = schemas()
    tool = kubectl()
    problems: list[str] = []
    builds = 0
    validated: set[bytes] = set()
    for sha in commits:
        changed = world.changed(sha)
        subject = git("--git-dir", str(world.remote), "log", "-1", "--format=%s", sha).strip()
        label = f"{sha[:10]} {subject!r}"
        for path in changed:
            if "/rollout/" not in path or not path.endswith((".yaml", ".yml")):
                continue
            content = world.show(path, sha)
            if content is None or content in validated:
                continue  # deleted by this commit, or checked already
            validated.add(content)
            problems += [f"{label}: {path}: {e}" for e in checker.validate_text(content)]
        clusters = sorted({p.split("/")[1] for p in changed if p.startswith("clusters/")})
        for cluster in clusters:
            archive = subprocess.run(
                ["git", "--git-dir", str(world.remote), "archive", sha, f"clusters/{cluster}"],
                capture_output=True,
                check=True,
            ).stdout
            with tempfile.TemporaryDirectory() as tmp:
                with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                    tar.extractall(tmp, filter="data")
                built = subprocess.run(
                    [tool, "kustomize", str(Path(tmp) / "clusters" / cluster)],
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=60,
                )
            builds += 1
            if built.returncode != 0:
                problems.append(f"{label}: kubectl kustomize clusters/{cluster}: {built.stderr}")
                continue
            routed = {
                p
                for p in world.files(sha, f"clusters/{cluster}")
                if p.endswith("/rollout/routing.yaml")
            }
            objects = [d for d in yaml.safe_load_all(built.stdout) if d]
            managed = [o for o in objects if _state_bearing(o)]
            if len(managed) != len(routed):
                problems.append(
                    f"{label}: clusters/{cluster} builds {len(managed)} generated VirtualServices "
                    f"for {len(routed)} routing files"
                )
    return builds, problems


def destination(route: Mapping[str, Any]) -> str:
    """Who a route sends requests to: the ModelMesh model id, else the destination host."""
    headers = ((route.get("headers") or {}).get("request") or {}).get("set") or {}
    return str(headers.get("mm-vmodel-id") or route["destination"]["host"])


def _state_bearing(obj: Mapping[str, Any]) -> bool:
    """The routing object that carries a rollout's state (a mirror adds a second one)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return obj.get("kind") == "VirtualService" and PHASE in annotations


def http_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rules of the rollout's own VirtualService."""
    services = [d for d in docs if _state_bearing(d)]
    assert len(services) == 1, f"{len(services)} state-bearing VirtualServices"
    return list(services[0]["spec"]["http"])


def default_split(docs: list[dict[str, Any]]) -> dict[str, int]:
    """{destination: weight} of the rule without a match (the last one)."""
    rule = http_rules(docs)[-1]
    return {destination(r): int(r.get("weight", 100)) for r in rule["route"]}


def primary_only(docs: list[dict[str, Any]], primary: str) -> list[str]:
    """Why a routing file does not send every request to `primary` alone (empty: it does)."""
    problems = []
    for rule in http_rules(docs):
        name = rule.get("name")
        if "mirror" in rule or "mirrorPercentage" in rule:
            problems.append(f"rule {name} mirrors to {rule.get('mirror')}")
        targets = [destination(r) for r in rule["route"]]
        if targets != [primary]:
            problems.append(f"rule {name} routes to {targets}")
    return problems
