"""From a decided transition to the desired content of every file it touches; pure, deterministic.

The bot-owned ``clusters/<cluster>/<ns>/<model>/rollout/`` folder is rewritten whole: a
``routing.yaml`` (generated header naming the policy, the target's objects as a multi-document
stream, the first carrying the rollout state and the content hash) and a ``kustomization.yaml``
listing it. Human-owned files are touched only for the transition's `ManifestEdit`s and the
kustomization entries those imply, through `manifest_edits` (round-trip, byte-identical outside
the edited fields). A transition whose objects or edits cannot be produced renders nothing and
reports why: a partial change would record a state the manifests do not match.

The change set (old/new per file), commits and pull requests are the next stage's business.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from gitops_rollout.errors import Problem
from gitops_rollout.inventory.model import Kind, ModelVersion
from gitops_rollout.manifest_edits import (
    KUSTOMIZATION_FILES,
    EditError,
    YamlFile,
    add_resource,
    apply_edit,
    folder_namespace,
    remove_resources,
)
from gitops_rollout.state import (
    GENERATED_HEADER,
    HASH_KEY,
    HASH_PLACEHOLDER,
    ROLLOUT_DIR,
    ROUTING_FILE,
    RolloutState,
    rollout_dir,
    seal,
)
from gitops_rollout.targets import Manifest, TargetError, adapter_for
from gitops_rollout.transitions import EditKind, ManifestEdit, Transition

if TYPE_CHECKING:
    # Only the protocol: tree.py also holds GitTree, which runs git (render stays pure).
    from gitops_rollout.tree import Tree

KUSTOMIZATION = "kustomization.yaml"


@dataclass
class Rendered:
    """Desired content per repository path (None: delete the file), or why there is none."""

    files: dict[str, bytes | None] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Serialising


def dump_objects(objects: Iterable[Manifest]) -> str:
    """Objects as a multi-document YAML stream, keys in the order they were built."""
    return "---\n".join(
        yaml.safe_dump(
            obj, sort_keys=False, default_flow_style=False, width=1_000_000, allow_unicode=True
        )
        for obj in objects
    )


def routing_text(objects: list[Manifest], state: RolloutState, *, policy_file: str) -> str:
    """The sealed routing.yaml: header, objects, state and content hash on the first object."""
    if not objects:
        raise ValueError("a routing file needs at least one object")
    first = dict(objects[0])
    meta: dict[str, Any] = dict(first["metadata"])
    meta["annotations"] = {
        **meta.get("annotations", {}),
        **state.annotations(),
        HASH_KEY: HASH_PLACEHOLDER,
    }
    first["metadata"] = meta
    header = GENERATED_HEADER.format(policy=policy_file)
    return seal(f"{header}\n{dump_objects([first, *objects[1:]])}")


def rollout_kustomization(*, policy_file: str) -> str:
    header = GENERATED_HEADER.format(policy=policy_file)
    body = dump_objects(
        [
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [ROUTING_FILE],
            }
        ]
    )
    return f"{header}\n{body}"


# ---------------------------------------------------------------------------------------------
# A tree with pending changes


class _Workspace:
    """`tree` plus the changes this render makes, and the human-owned files it edits."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.written: dict[str, bytes | None] = {}
        self.edited: dict[str, YamlFile] = {}
        self._originals: dict[str, bytes] = {}

    def exists(self, path: str) -> bool:
        if path in self.edited:
            return not self.edited[path].is_empty()
        if path in self.written:
            return self.written[path] is not None
        return self._in_tree(path)

    def paths(self, prefix: str) -> list[str]:
        head = prefix.rstrip("/") + "/"
        known = set(self.tree.paths(prefix)) | {p for p in self.written if p.startswith(head)}
        return sorted(p for p in known if self.exists(p))

    def gone(self, path: str) -> bool:
        """True when `path` (a file or a folder) no longer exists after this change."""
        was_file = path in self.written or path in self.edited or self._in_tree(path)
        if was_file:
            return not self.exists(path)
        had_files = bool(self.tree.paths(path))
        return had_files and not self.paths(path)

    def _in_tree(self, path: str) -> bool:
        try:
            self.tree.blob_id(path)
        except FileNotFoundError:
            return False
        return True

    def write(self, path: str, content: bytes | None) -> None:
        self.written[path] = content

    def yaml(self, path: str) -> YamlFile:
        """The file at `path` for round-trip editing (one instance per path)."""
        if path not in self.edited:
            data = self.tree.read(path)
            try:
                text = data.decode()
            except UnicodeDecodeError as err:
                raise EditError(
                    f"{path} is not UTF-8 text", fix="save it as UTF-8", file=path
                ) from err
            self._originals[path] = data
            self.edited[path] = YamlFile(text, file=path)
        return self.edited[path]

    def files(self) -> dict[str, bytes | None]:
        out = dict(self.written)
        for path, doc in self.edited.items():
            if doc.is_empty():
                out[path] = None
            elif doc.text.encode() != self._originals[path]:
                out[path] = doc.text.encode()
        return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# Rendering


def render(transition: Transition, *, tree: Tree) -> Rendered:
    """The files `transition` changes: the rollout folder, and edits of human-owned files."""
    plan = transition.plan
    if plan is None:
        return Rendered()
    situation = transition.situation
    policy = situation.policy
    policy_file = situation.loaded.file
    cluster = situation.cluster
    try:
        objects = adapter_for(policy.spec.target.kind).render_routing(policy, plan, cluster=cluster)
    except TargetError as err:
        where = (err.file, None) if err.file else (policy_file, situation.loaded.line)
        return Rendered(problems=[Problem(where[0], where[1], "", err.reason, err.fix)])

    work = _Workspace(tree)
    folder = rollout_dir(cluster=cluster, namespace=policy.routing_namespace, model=policy.model)
    routing_path = f"{folder}/{ROUTING_FILE}"
    is_new = not work.exists(routing_path)
    state = transition.state
    text = routing_text(objects, state, policy_file=state.policy or policy_file)
    work.write(routing_path, text.encode())
    work.write(f"{folder}/{KUSTOMIZATION}", rollout_kustomization(policy_file=policy_file).encode())
    for stale in tree.paths(folder):
        if stale not in work.written:
            work.write(stale, None)
    try:
        removed: list[str] = []
        for edit in transition.edits:
            removed.extend(_apply(work, edit, cluster=cluster))
        _drop_resources(work, removed, cluster=cluster)
        if is_new:
            _list_rollout(
                work, cluster=cluster, namespace=policy.routing_namespace, model=policy.model
            )
    except EditError as err:
        return Rendered(problems=[Problem(err.file or policy_file, None, "", err.reason, err.fix)])
    return Rendered(files=work.files())


def remove_rollout(model: str, *, cluster: str, namespace: str, tree: Tree) -> Rendered:
    """Delete a rollout's bot-owned folder and its kustomization entry (its policy is gone)."""
    work = _Workspace(tree)
    folder = rollout_dir(cluster=cluster, namespace=namespace, model=model)
    paths = tree.paths(folder)
    for path in paths:
        work.write(path, None)
    try:
        _drop_resources(work, paths, cluster=cluster)
    except EditError as err:
        return Rendered(problems=[Problem(err.file or folder, None, "", err.reason, err.fix)])
    return Rendered(files=work.files())


def _apply(work: _Workspace, edit: ManifestEdit, *, cluster: str) -> list[str]:
    """Apply one edit; returns the files it deleted."""
    version = edit.version
    try:
        target = work.yaml(version.file)
        source = work.yaml(edit.source.file) if edit.source is not None else None
        apply_edit(target, edit, source=source)
    except FileNotFoundError:
        raise EditError(
            f"{version.file} does not exist",
            fix="the inventory is stale; run again on the current commit",
            file=version.file,
        ) from None
    except EditError as err:
        err.file = err.file or version.file
        raise
    deleted = [version.file] if target.is_empty() else []
    if (
        edit.kind is EditKind.REMOVE
        and version.ref.kind == Kind.DEPLOYMENT
        and version.service_name
    ):
        deleted.extend(_remove_service(work, version, cluster=cluster))
    return deleted


def _remove_service(work: _Workspace, version: ModelVersion, *, cluster: str) -> list[str]:
    """Remove the Service that routed only to a removed Deployment version (it lives in the
    namespace's folder, like every manifest of that namespace)."""
    name = version.service_name
    assert name is not None
    for path in work.paths(f"clusters/{cluster}/{version.ref.namespace}"):
        if f"/{ROLLOUT_DIR}/" in path or not path.endswith((".yaml", ".yml")):
            continue
        if posixpath.basename(path) in KUSTOMIZATION_FILES:
            continue
        if path not in work.edited and name.encode() not in work.tree.read(path):
            continue  # cheap filter: the file does not even mention the name
        doc_file = work.yaml(path)
        doc = doc_file.find(
            kind=Kind.SERVICE,
            name=name,
            namespace=version.ref.namespace,
            default_namespace=folder_namespace(path),
        )
        if doc is not None:
            doc_file.remove_document(doc)
            return [path] if doc_file.is_empty() else []
    return []


def _kustomizations_above(work: _Workspace, path: str, *, cluster: str) -> list[tuple[str, str]]:
    """(folder, kustomization file) from `path`'s folder up to ``clusters/<cluster>``."""
    top = f"clusters/{cluster}"
    out = []
    folder = posixpath.dirname(path)
    while folder == top or folder.startswith(top + "/"):
        for name in KUSTOMIZATION_FILES:
            candidate = f"{folder}/{name}"
            if work.exists(candidate):
                out.append((folder, candidate))
                break
        folder = posixpath.dirname(folder)
    return out


def _drop_resources(work: _Workspace, deleted: list[str], *, cluster: str) -> None:
    """Remove kustomization entries that point at deleted files or emptied folders."""
    seen: set[str] = set()
    for path in deleted:
        for folder, kustomization in _kustomizations_above(work, path, cluster=cluster):
            if kustomization in seen or kustomization in deleted:
                continue
            seen.add(kustomization)
            remove_resources(work.yaml(kustomization), folder=folder, gone=work.gone)


def _list_rollout(work: _Workspace, *, cluster: str, namespace: str, model: str) -> None:
    """A new rollout folder joins the namespace's kustomization.yaml, when there is one."""
    folder = f"clusters/{cluster}/{namespace}"
    for name in KUSTOMIZATION_FILES:
        path = f"{folder}/{name}"
        if work.exists(path):
            add_resource(work.yaml(path), f"{model}/{ROLLOUT_DIR}", folder=folder)
            return
