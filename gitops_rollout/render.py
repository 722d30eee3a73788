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

import functools
import posixpath
import re
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import yaml

from gitops_rollout import yamlemit
from gitops_rollout.errors import Problem
from gitops_rollout.inventory.model import Kind, ModelVersion
from gitops_rollout.manifest_edits import (
    KUSTOMIZATION_FILES,
    EditError,
    YamlFile,
    add_resource,
    apply_edit,
    folder_namespace,
    reads_as_string,
    remove_resources,
    resource_group,
    resource_slot,
    scalar_text,
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
    return "---\n".join(yamlemit.dump(obj) for obj in objects)


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
    return f"{header}\n{_rollout_kustomization_body()}"


@functools.cache
def _rollout_kustomization_body() -> str:
    return dump_objects(
        [
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [ROUTING_FILE],
            }
        ]
    )


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
    generated = _generated(transition)
    if isinstance(generated, Problem):
        return Rendered(problems=[generated])

    work = _Workspace(tree)
    folder = rollout_dir(cluster=cluster, namespace=policy.routing_namespace, model=policy.model)
    routing_path = f"{folder}/{ROUTING_FILE}"
    is_new = not work.exists(routing_path)
    work.write(routing_path, generated[0])
    work.write(f"{folder}/{KUSTOMIZATION}", generated[1])
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


_GENERATED: dict[int, tuple[Transition, tuple[bytes, bytes] | Problem]] = {}
"""The bot-owned files of recent transitions, by identity: a pass renders an adopted model
twice (alone, then stacked on the cluster's other adoptions), and they depend on the
transition alone. The transition is kept with its entry, so its id is not reused meanwhile."""
_GENERATED_MAX = 16_384


def _generated(transition: Transition) -> tuple[bytes, bytes] | Problem:
    """routing.yaml and the rollout's kustomization.yaml for `transition`, or why not."""
    cached = _GENERATED.get(id(transition))
    if cached is not None and cached[0] is transition:
        return cached[1]
    plan = transition.plan
    assert plan is not None
    situation = transition.situation
    policy = situation.policy
    policy_file = situation.loaded.file
    result: tuple[bytes, bytes] | Problem
    try:
        objects = adapter_for(policy.spec.target.kind).render_routing(
            policy, plan, cluster=situation.cluster
        )
    except TargetError as err:
        where = (err.file, None) if err.file else (policy_file, situation.loaded.line)
        result = Problem(where[0], where[1], "", err.reason, err.fix)
    else:
        state = transition.state
        text = routing_text(objects, state, policy_file=state.policy or policy_file)
        result = (text.encode(), rollout_kustomization(policy_file=policy_file).encode())
    if len(_GENERATED) >= _GENERATED_MAX:
        _GENERATED.clear()
    _GENERATED[id(transition)] = (transition, result)
    return result


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
    """A new rollout folder joins the namespace's kustomization.yaml, when there is one, right
    after the model's own entries (`resource_slot`: the pull requests of one pass then merge
    without conflicts)."""
    folder = f"clusters/{cluster}/{namespace}"
    for name in KUSTOMIZATION_FILES:
        path = f"{folder}/{name}"
        if work.exists(path):
            entry = f"{model}/{ROLLOUT_DIR}"
            if path not in work.edited and path not in work.written:
                original = work.tree.read(path)
                added = _add_resource_fast(original, entry, folder=folder)
                if added is not None:
                    if added != original:
                        work.write(path, added)
                    return
            add_resource(work.yaml(path), entry, folder=folder)
            return


# ---------------------------------------------------------------------------------------------
# The common kustomization edit without the round-trip engine
#
# Adopting a 1,000-model namespace adds 1,000 entries to one kustomization.yaml; through
# `manifest_edits` each addition composes the growing file with pure-Python ruamel four times
# (minutes at 10,000 models). A plain block list of one-line entries, the layout nearly every
# kustomization has, gets the same bytes here from libyaml positions; anything else (flow lists,
# several documents, tabs, CR line ends, non-ASCII, multi-line entries) goes the general way.

_SAFE_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")
_ITEM_LINE = re.compile(r"( *)- +")
_UNUSUAL = (b"\r", b"\t", b"&", b"*", b"<<", b"!", b"%", b"|", b">")
"""Line ends, anchors, aliases, merge keys, tags, directives and block scalars."""
_FastLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass(frozen=True)
class _Listing:
    """Where new ``resources:`` entries of a simple kustomization go."""

    entries: frozenset[str | None]
    """What the entries resolve to (str entries only)."""
    slots: Mapping[str, int]
    """Each `resource_group` (a model's folder) listed: its position in `last`. Shared by the
    listings of one file as it grows, until an entry of a new group comes."""
    last: array[int]
    """Per group: the index just past the line of its last entry, where its next entry goes.
    Never changed: an addition makes a shifted copy (an adoption's 1,000 listings of one file
    stay a few kilobytes each)."""
    end: int
    """The index just past the line of the list's last entry: where other entries go."""
    indent: str
    checked: bool = False
    """An addition to this file was read back and found right (the next ones splice alike)."""


_LISTINGS: dict[tuple[str, bytes], _Listing] = {}
"""Listings by (folder, content): the files an adoption builds entry by entry are known."""
_LISTINGS_MAX = 4096


def _add_resource_fast(data: bytes, entry: str, *, folder: str) -> bytes | None:
    """`add_resource` for a simple kustomization: the new bytes (`data` itself when the entry
    is already listed), or None when the layout needs the round-trip engine."""
    wanted = _resolve(folder, entry)
    if wanted is None or "/" not in entry or not entry.isascii():
        return None
    listing = _LISTINGS.get((folder, data))
    if listing is None:
        listing = _listing(data, folder)
        if listing is None:
            return None
        _remember(folder, data, listing)
    if wanted in listing.entries:
        return data
    group = resource_group(folder, entry)
    slot = None if group is None else listing.slots.get(group)
    at = listing.end if slot is None else listing.last[slot]
    text = data.decode()
    lead = "\n" if at == len(text) and not text.endswith("\n") else ""
    body = entry if _SAFE_PLAIN.fullmatch(entry) else scalar_text(entry)
    line = f"{lead}{listing.indent}- {body}\n"
    new = f"{text[:at]}{line}{text[at:]}"
    if not listing.checked:
        # The layout was judged simple from libyaml's reading: confirm that the splice reads
        # back as the same document with the entry where `resource_slot` puts it (later
        # additions repeat this splice after another one-line entry of the same list).
        before = yaml.load(text, Loader=_FastLoader)  # noqa: S506 (libyaml's safe loader)
        listed = before["resources"]
        index = resource_slot(listed, entry, folder=folder)
        expected = {**before, "resources": [*listed[:index], entry, *listed[index:]]}
        if yaml.load(new, Loader=_FastLoader) != expected:  # noqa: S506
            return None
        _remember(folder, data, replace(listing, checked=True))
    shift = len(line)
    slots = listing.slots
    last = array("q", [end + shift if end > at else end for end in listing.last])
    if lead:
        # The file's last line had no line break: it now ends with the one `lead` wrote.
        last = array("q", [at + len(lead) if end == at else end for end in last])
    if slot is not None:
        last[slot] = at + shift
    elif group is not None:
        slots = {**slots, group: len(last)}
        last.append(at + shift)
    entries = listing.entries | {wanted}
    grown = _Listing(entries, slots, last, listing.end + shift, listing.indent, checked=True)
    out = new.encode()
    _remember(folder, out, grown)
    return out


def _remember(folder: str, data: bytes, listing: _Listing) -> None:
    if len(_LISTINGS) >= _LISTINGS_MAX:
        _LISTINGS.clear()
    _LISTINGS[(folder, data)] = listing


def _listing(data: bytes, folder: str) -> _Listing | None:
    """The listing of a kustomization in the layout `_add_resource_fast` handles, or None."""
    if not data.isascii() or any(c in data for c in _UNUSUAL):
        return None
    text = data.decode()
    try:
        nodes = list(yaml.compose_all(text, Loader=_FastLoader))
    except yaml.YAMLError:
        return None
    if len(nodes) != 1 or not isinstance(nodes[0], yaml.MappingNode) or not _plain_keys(nodes[0]):
        return None
    resources = next((v for k, v in nodes[0].value if k.value == "resources"), None)
    if not isinstance(resources, yaml.SequenceNode) or resources.flow_style:
        return None
    items = resources.value
    if not items or not all(
        isinstance(i, yaml.ScalarNode)
        and i.style in (None, "", "'", '"')
        and i.start_mark.line == i.end_mark.line
        for i in items
    ):
        return None
    indent = ""
    entries: set[str | None] = set()
    slots: dict[str, int] = {}
    last = array("q")
    end = 0
    for n, item in enumerate(items):
        start = item.start_mark.index
        dash = _ITEM_LINE.match(text, start - item.start_mark.column)
        if dash is None or dash.end() != start:
            return None
        if n == 0:
            indent = dash.group(1)  # a block list's dashes share one column
        end = text.find("\n", item.end_mark.index) + 1 or len(text)
        value: str = item.value
        is_str = item.tag == _STR_TAG
        if not item.style and "/" not in value and is_str != reads_as_string(value):
            # libyaml reads YAML 1.1 and the round-trip engine 1.2: where they disagree on
            # whether an entry is a path (``yes``, ``0o10``), only the engine knows its group.
            return None
        if not is_str:
            continue
        # An entry that resolves to a path with "/" reads as a string in YAML 1.1 and 1.2 alike,
        # so libyaml's tags decide presence and groups as the round-trip engine would.
        entries.add(_resolve(folder, value))
        group = resource_group(folder, value)
        if group is None:
            continue
        slot = slots.setdefault(group, len(last))
        if slot == len(last):
            last.append(end)
        else:
            last[slot] = end
    return _Listing(frozenset(entries), slots, last, end, indent)


def _plain_keys(node: yaml.Node) -> bool:
    """True when every mapping below `node` has distinct scalar keys (as the engine demands)."""
    if isinstance(node, yaml.MappingNode):
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        if len(keys) != len(node.value) or len(set(keys)) != len(keys):
            return False
        return all(_plain_keys(v) for _, v in node.value)
    if isinstance(node, yaml.SequenceNode):
        return all(_plain_keys(v) for v in node.value)
    return True


def _resolve(folder: str, entry: str) -> str | None:
    if "://" in entry or entry.startswith(("github.com/", "git@")):
        return None
    return posixpath.normpath(posixpath.join(folder, entry.rstrip("/")))
