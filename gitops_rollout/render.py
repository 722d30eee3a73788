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
import io
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

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
    return "---\n".join(_dump(obj) for obj in objects)


_DUMP_OPTIONS: dict[str, Any] = {
    "sort_keys": False,
    "default_flow_style": False,
    "width": 1_000_000,
    "allow_unicode": True,
}


def _dump(obj: Any) -> str:
    """`yaml.safe_dump` with our settings; through libyaml when that gives the same bytes.

    libyaml's emitter writes what PyYAML's (a port of it) writes, several times faster, except
    for some control and non-ASCII characters and empty keys; objects holding those, and
    objects that share a dict or list (PyYAML writes an anchor), take the pure-Python way
    (tests/bench/test_render_fast.py compares the two).
    """
    if _FastDumper is not None:
        node = _node(obj, set())
        if node is not None:
            stream = io.StringIO()
            dumper = _FastDumper(stream, **_DUMP_OPTIONS)
            try:
                dumper.open()
                dumper.serialize(node)
                dumper.close()
            finally:
                dumper.dispose()
            return stream.getvalue()
    text: str = yaml.safe_dump(obj, **_DUMP_OPTIONS)
    return text


_STR, _INT, _FLOAT, _BOOL, _NULL, _MAP, _SEQ = (
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")
)


def _node(value: Any, seen: set[int]) -> yaml.Node | None:
    """The node `SafeRepresenter` builds for `value` (no styles, no flow), without its per-node
    bookkeeping; None when libyaml might write it differently (text that is not printable
    ASCII, an empty key) or a dict or list occurs twice (PyYAML writes an anchor), and for
    anything but dicts, lists, str, int, float, bool and None."""
    kind = type(value)
    if kind is str:
        return yaml.ScalarNode(_STR, value) if value.isascii() and value.isprintable() else None
    if kind is dict or kind is list:
        if id(value) in seen:
            return None
        seen.add(id(value))
        if kind is dict:
            pairs = []
            for key, child in value.items():
                if not key:
                    return None
                key_node, child_node = _node(key, seen), _node(child, seen)
                if key_node is None or child_node is None or type(key) is not str:
                    return None
                pairs.append((key_node, child_node))
            return yaml.MappingNode(_MAP, pairs, flow_style=False)
        items = []
        for child in value:
            child_node = _node(child, seen)
            if child_node is None:
                return None
            items.append(child_node)
        return yaml.SequenceNode(_SEQ, items, flow_style=False)
    if kind is bool:
        return yaml.ScalarNode(_BOOL, "true" if value else "false")
    if kind is int:
        return yaml.ScalarNode(_INT, str(value))
    if value is None:
        return yaml.ScalarNode(_NULL, "null")
    if kind is float:
        return yaml.ScalarNode(_FLOAT, _float_text(value))
    return None


def _float_text(value: float) -> str:
    """`SafeRepresenter.represent_float`'s text."""
    if value != value or (value == 0.0 and value == 1.0):
        return ".nan"
    if value == float("inf"):
        return ".inf"
    if value == float("-inf"):
        return "-.inf"
    text = repr(value).lower()
    if "." not in text and "e" in text:
        text = text.replace("e", ".0e", 1)
    return text


_FastDumper: Any = None
if hasattr(yaml, "CSafeDumper"):

    class _CachedDumper(yaml.CSafeDumper):
        """libyaml's emitter; implicit-tag resolution of scalars remembered (a pure function
        of the text here: no path resolvers), since keys repeat in every object."""

        _resolved: ClassVar[dict[tuple[str, Any], Any]] = {}

        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            if kind is not yaml.ScalarNode:
                return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
            key = (value, implicit)
            found = self._resolved.get(key)
            if found is None:
                if len(self._resolved) > 200_000:
                    self._resolved.clear()
                found = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
                self._resolved[key] = found
            return found

    _FastDumper = _CachedDumper


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
    """A new rollout folder joins the namespace's kustomization.yaml, when there is one."""
    folder = f"clusters/{cluster}/{namespace}"
    for name in KUSTOMIZATION_FILES:
        path = f"{folder}/{name}"
        if work.exists(path):
            entry = f"{model}/{ROLLOUT_DIR}"
            if path not in work.edited and path not in work.written:
                original = work.tree.read(path)
                appended = _append_resource_fast(original, entry, folder=folder)
                if appended is not None:
                    if appended != original:
                        work.write(path, appended)
                    return
            add_resource(work.yaml(path), entry, folder=folder)
            return


# ---------------------------------------------------------------------------------------------
# The common kustomization edit without the round-trip engine
#
# Adopting a 1,000-model namespace appends 1,000 entries to one kustomization.yaml; through
# `manifest_edits` each append composes the growing file with pure-Python ruamel four times
# (minutes at 10,000 models). A plain block list of one-line entries, the layout nearly every
# kustomization has, gets the same bytes here from libyaml positions; anything else (flow lists,
# several documents, tabs, CR line ends, non-ASCII, multi-line entries) goes the general way.

_SAFE_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")
_ITEM_LINE = re.compile(r"( *)- +")
_UNUSUAL = (b"\r", b"\t", b"&", b"*", b"<<", b"!", b"%", b"|", b">")
"""Line ends, anchors, aliases, merge keys, tags, directives and block scalars."""
_FastLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class _Listing:
    """Where the next ``resources:`` entry of a simple kustomization goes."""

    entries: frozenset[str | None]
    """What the entries resolve to (str entries only)."""
    at: int
    """Index the next entry's line is inserted at."""
    lead: str
    """A line break to write first (the file does not end with one)."""
    indent: str
    checked: bool = False
    """An append to this file was read back and found right (the next ones splice alike)."""


_LISTINGS: dict[tuple[str, bytes], _Listing] = {}
"""Listings by (folder, content): the files an adoption builds entry by entry are known."""
_LISTINGS_MAX = 4096


def _append_resource_fast(data: bytes, entry: str, *, folder: str) -> bytes | None:
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
    body = entry if _SAFE_PLAIN.fullmatch(entry) else scalar_text(entry)
    line = f"{listing.lead}{listing.indent}- {body}\n"
    text = data.decode()
    new = f"{text[: listing.at]}{line}{text[listing.at :]}"
    if not listing.checked:
        # The layout was judged simple from libyaml's reading: confirm that an append reads
        # back as the same document plus one entry (later ones repeat exactly this splice).
        before = yaml.load(text, Loader=_FastLoader)  # noqa: S506 (libyaml's safe loader)
        if yaml.load(new, Loader=_FastLoader) != {  # noqa: S506
            **before,
            "resources": [*before["resources"], entry],
        }:
            return None
        _remember(folder, data, replace(listing, checked=True))
    out = new.encode()
    _remember(
        folder,
        out,
        _Listing(listing.entries | {wanted}, listing.at + len(line), "", listing.indent, True),
    )
    return out


def _remember(folder: str, data: bytes, listing: _Listing) -> None:
    if len(_LISTINGS) >= _LISTINGS_MAX:
        _LISTINGS.clear()
    _LISTINGS[(folder, data)] = listing


def _listing(data: bytes, folder: str) -> _Listing | None:
    """The listing of a kustomization in the layout `_append_resource_fast` handles, or None."""
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
    lines = text.split("\n")
    last = items[-1]
    row = last.start_mark.line
    dash = _ITEM_LINE.match(lines[row])
    if dash is None or dash.end() != last.start_mark.column:
        return None
    at = sum(len(line) + 1 for line in lines[: row + 1])
    lead = ""
    if at > len(text):
        at, lead = len(text), "\n"
    # An entry that resolves to a path with "/" reads as a string in YAML 1.1 and 1.2 alike,
    # so libyaml's tags decide presence as the round-trip engine would.
    entries = frozenset(
        _resolve(folder, i.value) for i in items if i.tag == "tag:yaml.org,2002:str"
    )
    return _Listing(entries, at, lead, dash.group(1))


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
