"""Pull requests of one pass that list different models in one kustomization.yaml merge cleanly.

Each pull request of a pass is rendered on the same main: one per model with a candidate, and an
adoption per cluster that lists many models at once. They all edit the namespace's
kustomization.yaml; when each appended its entry at the end, git saw insertions at the same spot
and every pull request but the first merged conflicted (a pass more to settle, each time). Each
entry now goes right after its own model's entries, so the insertions are apart. Here the renders
are committed on branches of a real repository and merged with ``git merge-tree``, as a host
merges a pull request after another one went in; the merged file must be what rendering both on
one tree gives.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from rollout_sim import MemTree

from gitops_rollout import render

CLUSTER, NAMESPACE = "prod", "ml"
KUSTOMIZATION = f"clusters/{CLUSTER}/{NAMESPACE}/kustomization.yaml"
MODELS = [f"model-{i:02}" for i in range(24)]

LAYOUTS = {
    "simple (fast path)": "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n",
    "non-ASCII comment (round-trip engine)": "# Modèles de ml\nkind: Kustomization\n",
}


def base(layout: str, *, unlisted: frozenset[str] = frozenset()) -> dict[str, bytes]:
    """A namespace listing each model's manifests (two files for every third model), except
    the `unlisted` models."""
    lines = []
    for i, model in enumerate(MODELS):
        if model not in unlisted:
            lines.append(f"  - {model}/{model}-v1.yaml\n")
            if i % 3 == 0:
                lines.append(f"  - ./{model}/service.yaml  # its Service\n")
    text = LAYOUTS[layout] + "resources:\n" + "".join(lines) + "namespace: ml\n"
    return {KUSTOMIZATION: text.encode()}


def listed(files: Mapping[str, bytes], models: list[str]) -> dict[str, bytes]:
    """`files` after the rollout folder of each of `models` was listed, each render on the
    previous one's result (how a pass stacks a cluster's adoptions into one pull request)."""
    tree = MemTree(files)
    for model in models:
        work = render._Workspace(tree)
        render._list_rollout(work, cluster=CLUSTER, namespace=NAMESPACE, model=model)
        tree = tree.apply(work.files())
    return tree.files


class Repository:
    """A throwaway Git repository: main holds the base, each pull request is a branch on it."""

    def __init__(self, root: Path, files: Mapping[str, bytes]) -> None:
        self.root = root
        self._git("init", "--quiet", "--initial-branch=main")
        self._commit(files, "base")

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["git", "-C", str(self.root), *args],
            env={
                **os.environ,
                "GIT_CONFIG_GLOBAL": os.devnull,
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_AUTHOR_NAME": "gitops-rollout",
                "GIT_AUTHOR_EMAIL": "bot@rollout.test",
                "GIT_COMMITTER_NAME": "gitops-rollout",
                "GIT_COMMITTER_EMAIL": "bot@rollout.test",
            },
            capture_output=True,
            text=True,
            check=False,
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def _commit(self, files: Mapping[str, bytes], message: str) -> None:
        for path, content in files.items():
            target = self.root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        self._git("add", "--all")
        self._git("commit", "--quiet", "--message", message)

    def pull_request(self, branch: str, files: Mapping[str, bytes]) -> None:
        self._git("checkout", "--quiet", "-B", branch, "main")
        self._commit(files, branch)

    def merge(self, ours: str, theirs: str) -> tuple[bool, bytes]:
        """Whether `theirs` merges into `ours` without conflict, and the merged kustomization."""
        done = self._git("merge-tree", "--write-tree", ours, theirs, check=False)
        assert done.returncode in (0, 1), done.stderr
        tree = done.stdout.split("\n", 1)[0]
        shown = self._git("cat-file", "blob", f"{tree}:{KUSTOMIZATION}")
        return done.returncode == 0, shown.stdout.encode()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(["model-04"], ["model-05"], id="two adjacent models"),
        pytest.param(["model-00"], ["model-23"], id="first and last model"),
        pytest.param(["model-03"], ["model-04"], id="after a model with two entries"),
        pytest.param(
            [m for m in MODELS if m != "model-10"], ["model-10"], id="adoption and one model"
        ),
        pytest.param(
            ["model-10"], [m for m in MODELS if m != "model-10"], id="one model, then adoption"
        ),
        pytest.param(MODELS[::2], MODELS[1::2], id="two adoptions, interleaved"),
    ],
)
def test_pull_requests_for_different_models_merge(
    tmp_path: Path, layout: str, first: list[str], second: list[str]
) -> None:
    files = base(layout)
    fast = render._add_resource_fast(files[KUSTOMIZATION], "x/rollout", folder="clusters/prod/ml")
    assert (fast is not None) == layout.startswith("simple")
    repo = Repository(tmp_path, files)
    repo.pull_request("first", listed(files, first))
    repo.pull_request("second", listed(files, second))
    clean, merged = repo.merge("first", "second")
    assert clean, merged.decode()
    assert merged == listed(files, first + second)[KUSTOMIZATION]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_models_without_entries_still_meet_at_the_end(tmp_path: Path, layout: str) -> None:
    """The limit of the rule, and a check that this harness sees conflicts: two models the
    list does not mention yet both append, and the second pull request conflicts."""
    files = base(layout, unlisted=frozenset({"model-04", "model-05"}))
    repo = Repository(tmp_path, files)
    repo.pull_request("first", listed(files, ["model-04"]))
    repo.pull_request("second", listed(files, ["model-05"]))
    clean, merged = repo.merge("first", "second")
    assert not clean
    assert b"<<<<<<<" in merged
