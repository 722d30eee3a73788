"""Round-trip edits of human-owned manifests: change what a promotion needs and nothing else.

A promotion must touch files people wrote (the primary's spec and version label, a removed
candidate, its kustomization entry). Dumping a parsed document again loses what people care
about: indentation styles, quoting, trailing spaces, comments in odd places. So ruamel.yaml is
used to *compose* the file into nodes with exact positions, and every edit splices only the text
of the node it changes: new scalars are written in the quoting style of the value they replace,
adopted subtrees are copied as text from the source manifest (with their comments) and
re-indented, removed entries take the comment block directly above them along. Everything else
stays byte-identical. After each edit the text is parsed again and compared with the intended
data; a mismatch raises `EditError` rather than writing a subtly wrong file.

`YamlFile` is the generic engine; `apply_edit` maps each `EditKind` onto it per manifest kind
(InferenceService, SeldonDeployment, Deployment); `add_resource` and `remove_resources` keep
kustomization.yaml in step. Which files to edit, and deleting emptied files, is `render`'s job.
"""

from __future__ import annotations

import copy
import functools
import json
import posixpath
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.resolver import VersionedResolver

from gitops_rollout.inventory.model import ROLE_LABEL, VERSION_LABEL, Kind, ModelVersion
from gitops_rollout.transitions import EditKind, ManifestEdit

Path = tuple[str | int, ...]

_MISSING = object()


class EditError(Exception):
    """An edit cannot be made as asked (object or field not found, unsupported layout)."""

    def __init__(self, reason: str, *, fix: str = "", file: str = "") -> None:
        self.reason = reason
        self.fix = fix
        self.file = file
        """Repository path of the file that could not be edited, when known."""
        super().__init__(reason)


def _composer() -> YAML:
    return YAML(typ="rt")


def _loader() -> YAML:
    return YAML(typ="safe", pure=True)


# ---------------------------------------------------------------------------------------------
# Scalars


_INDICATORS = set("-?:,[]{}#&*!|>'\"%@`")


def _resolves_to_itself(text: str) -> bool:
    """True when `text` written plain reads back as the same string in YAML 1.2 and 1.1
    (ruamel and the Kubernetes tools disagree on ``yes``, ``0o10`` and friends)."""
    try:
        as_12 = _loader().load(text)
        as_11 = yaml.safe_load(text)
    except (YAMLError, yaml.YAMLError):
        return False
    return bool(as_12 == text and as_11 == text)


def _plain_ok(text: str) -> bool:
    return (
        bool(text)
        and text == text.strip()
        and "\n" not in text
        and text[0] not in _INDICATORS
        and ": " not in text
        and " #" not in text
        and not text.endswith(":")
        and _resolves_to_itself(text)
    )


def reads_as_string(plain: str) -> bool:
    """True when the plain scalar `plain` is a string in YAML 1.2, as `YamlFile.data` reads it
    (``yes`` is one, ``0o10`` and ``null`` are not)."""
    return bool(_resolver().resolve(ScalarNode, plain, (True, False)) == "tag:yaml.org,2002:str")


@functools.cache
def _resolver() -> VersionedResolver:
    return VersionedResolver(version=(1, 2))


def scalar_text(value: object, *, style: str | None = None) -> str:
    """`value` as a YAML scalar, in the quoting `style` of the scalar it replaces if it can."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if style == "'" and "\n" not in text and text.isprintable():
        return "'" + text.replace("'", "''") + "'"
    if style == '"' or not _plain_ok(text):
        # JSON strings are valid YAML double-quoted scalars.
        return json.dumps(text, ensure_ascii=False)
    return text


def _block_text(value: object, indent: int) -> str:
    """A collection as block YAML lines indented by `indent` (sequences as ``- `` items)."""
    out = yaml.safe_dump(
        value, default_flow_style=False, sort_keys=False, width=1_000_000, allow_unicode=True
    )
    pad = " " * indent
    return "".join(pad + line if line.strip() else line for line in out.splitlines(True))


# ---------------------------------------------------------------------------------------------
# The engine


class YamlFile:
    """The text of one YAML stream and its composed nodes; edits splice the text."""

    def __init__(self, text: str, *, file: str = "") -> None:
        self.file = file
        self.text = text
        self._crlf = "\r\n" in text
        """Windows line endings: inserted lines get them too."""
        self._parse()
        self._expected: list[Any] = [copy.deepcopy(d) for d in self.data]

    def _parse(self) -> None:
        try:
            self.roots: list[Node] = list(_composer().compose_all(self.text))
            self.data: list[Any] = list(_loader().load_all(self.text))
        except YAMLError as err:
            raise EditError(
                f"{self.file or 'file'} is not valid YAML: {err}", fix="fix its syntax"
            ) from err

    # -- reading ------------------------------------------------------------------------------

    def documents(self) -> list[int]:
        """Indexes of the non-empty documents."""
        return [i for i, d in enumerate(self.data) if d is not None]

    def is_empty(self) -> bool:
        return not self.documents()

    def get(self, doc: int, path: Path, default: Any = None) -> Any:
        node: Any = self.data[doc]
        for part in path:
            if isinstance(part, int):
                if not isinstance(node, list) or not -len(node) <= part < len(node):
                    return default
                node = node[part]
            else:
                if not isinstance(node, dict) or part not in node:
                    return default
                node = node[part]
        return node

    def find(self, *, kind: str, name: str, namespace: str, default_namespace: str) -> int | None:
        """The document holding object kind/namespace/name (namespace defaulted by folder)."""
        for i in self.documents():
            obj = self.data[i]
            if not isinstance(obj, dict) or obj.get("kind") != kind:
                continue
            meta = obj.get("metadata") or {}
            if not isinstance(meta, dict) or meta.get("name") != name:
                continue
            if (meta.get("namespace") or default_namespace) == namespace:
                return i
        return None

    # -- positions ----------------------------------------------------------------------------

    def _line_start(self, index: int) -> int:
        return self.text.rfind("\n", 0, index) + 1

    def _line_end(self, index: int) -> int:
        """Index just past the line break of the line holding `index` (or the end of text)."""
        if index > 0 and self.text[index - 1] == "\n":
            return index
        found = self.text.find("\n", index)
        return len(self.text) if found < 0 else found + 1

    def _comment_block_start(self, line_start: int) -> int:
        """Extend a line start upwards over full-line comments directly above it (no blank line
        between) that are indented like the line itself: they describe that entry."""
        newline = self.text.find("\n", line_start)
        line = self.text[line_start : len(self.text) if newline < 0 else newline]
        indent = len(line) - len(line.lstrip(" "))
        start = line_start
        while start > 0:
            prev = self._line_start(start - 1)
            line = self.text[prev : start - 1]
            stripped = line.lstrip(" ")
            if not stripped.startswith("#") or len(line) - len(stripped) != indent:
                break
            start = prev
        return start

    def _content_end(self, node: Node) -> int:
        """Index just past the last character of `node`'s own text (not of what follows)."""
        if isinstance(node, ScalarNode):
            end = int(node.end_mark.index)
            if node.style in ("|", ">"):
                while end > node.start_mark.index and self.text[end - 1] in " \n":
                    end -= 1
            return end
        if getattr(node, "flow_style", False) or not node.value:
            return int(node.end_mark.index)
        last = node.value[-1]
        return self._content_end(last[1] if isinstance(node, MappingNode) else last)

    def _is_block(self, node: Node) -> bool:
        if isinstance(node, ScalarNode):
            return node.style in ("|", ">")
        return not getattr(node, "flow_style", False) and bool(node.value)

    def _indent_of(self, node: Node) -> int:
        """Column where a block collection's entries start (a sequence: its dashes)."""
        if isinstance(node, SequenceNode):
            dash = self._dash_of(node.value[0])
            return dash - self._line_start(dash)
        return int(node.start_mark.column)

    def _dash_of(self, item: Node) -> int:
        """Index of the ``-`` that introduces a block sequence item."""
        index = int(item.start_mark.index) - 1
        while index >= 0 and self.text[index] in " \n":
            index -= 1
        if index < 0 or self.text[index] != "-":
            raise EditError(
                f"cannot find the '-' of a list item near line {item.start_mark.line + 1}",
                fix="write the list item's first field on the '-' line",
            )
        return index

    def _at_line_start(self, index: int) -> bool:
        return not self.text[self._line_start(index) : index].strip()

    # -- navigation ---------------------------------------------------------------------------

    def _node(self, doc: int, path: Path) -> Node:
        node = self.roots[doc]
        for part in path:
            child = self._child(node, part)
            if child is None:
                raise KeyError(path)
            node = child[1]
        return node

    def _child(self, node: Node, part: str | int) -> tuple[Node | None, Node] | None:
        if isinstance(node, MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.value == part:
                    return key, value
            return None
        if (
            isinstance(node, SequenceNode)
            and isinstance(part, int)
            and -len(node.value) <= part < len(node.value)
        ):
            return None, node.value[part]
        return None

    # -- splicing -----------------------------------------------------------------------------

    def _splice(self, start: int, end: int, new: str) -> None:
        if self._crlf:
            new = new.replace("\r\n", "\n").replace("\n", "\r\n")
        self.text = self.text[:start] + new + self.text[end:]
        self._parse()

    def _verify(self, what: str) -> None:
        if self.data != self._expected:
            raise EditError(
                f"editing {self.file or 'the file'} ({what}) would change more than intended",
                fix="simplify the YAML layout around that field, or make the change by hand",
            )

    def _expect(self, doc: int, path: Path, change: Callable[[Any, str | int], None]) -> None:
        parent: Any = self._expected[doc]
        for part in path[:-1]:
            parent = parent[part]
        change(parent, path[-1])

    # -- edits --------------------------------------------------------------------------------

    def set_value(self, doc: int, path: Path, value: Any) -> None:
        """Set a scalar or collection at `path`, creating missing mappings on the way."""
        if self.get(doc, path, _MISSING) == value:
            return
        existing = len(path)
        while existing > 0 and self.get(doc, path[:existing], _MISSING) is _MISSING:
            existing -= 1
        if existing < len(path):
            nested: Any = value
            for part in reversed(path[existing + 1 :]):
                nested = {part: nested}
            key = path[existing]
            if not isinstance(key, str):
                raise EditError(f"list index {key} does not exist at {_fmt(path[:existing])}")
            self._insert_key(doc, path[:existing], key, nested)
            new_path = path[: existing + 1]

            def insert(parent: Any, part: str | int) -> None:
                parent[part] = copy.deepcopy(nested)

            self._expect(doc, new_path, insert)
        else:
            self._replace(doc, path, value)

            def put(parent: Any, part: str | int) -> None:
                parent[part] = copy.deepcopy(value)

            self._expect(doc, path, put)
        self._verify(f"set {_fmt(path)}")

    def delete(self, doc: int, path: Path) -> None:
        """Remove a mapping key or list item; nothing happens when it is absent."""
        if self.get(doc, path, _MISSING) is _MISSING:
            return
        parent = self._node(doc, path[:-1])
        part = path[-1]
        if len(parent.value) == 1:
            self._replace(doc, path[:-1], {} if isinstance(parent, MappingNode) else [])
        elif getattr(parent, "flow_style", False):
            self._rebuild_flow(parent, drop=part)
        elif isinstance(parent, MappingNode):
            self._delete_block_key(parent, str(part))
        else:
            assert isinstance(part, int) and isinstance(parent, SequenceNode)
            self._delete_block_item(parent, part)

        def drop(container: Any, key: str | int) -> None:
            del container[key]

        self._expect(doc, path, drop)
        self._verify(f"delete {_fmt(path)}")

    def append_item(self, doc: int, path: Path, value: Any) -> None:
        """Append `value` to the list at `path` (created when missing)."""
        current = self.get(doc, path, _MISSING)
        size = len(current) if isinstance(current, list) else 0
        self.insert_item(doc, path, size, value)

    def insert_item(self, doc: int, path: Path, index: int, value: Any) -> None:
        """Insert `value` into the list at `path` so that it becomes item `index` (the length
        of the list appends; a missing list is created when `index` is 0).

        In a block list the new line goes right after item ``index - 1`` (before the comments
        above the next item, which describe that one), indented like its neighbours.
        """
        current = self.get(doc, path, _MISSING)
        if current is _MISSING or current is None:
            if index != 0:
                raise EditError(f"list index {index} does not exist at {_fmt(path)}")
            self.set_value(doc, path, [value])
            return
        node = self._node(doc, path)
        if not isinstance(node, SequenceNode):
            raise EditError(f"{_fmt(path)} is not a list")
        items = node.value
        if not 0 <= index <= len(items):
            raise EditError(f"list index {index} does not exist at {_fmt(path)}")
        if getattr(node, "flow_style", False) or not items:
            self._rebuild_flow(node, add=_flow_text(value), add_at=index)
        else:
            neighbour = items[index - 1] if index > 0 else items[0]
            dash = self._dash_of(neighbour)
            column = dash - self._line_start(dash)
            if index > 0:
                at = self._line_end(self._content_end(neighbour))
            elif self._at_line_start(dash):
                at = self._comment_block_start(self._line_start(dash))
            else:
                raise EditError("cannot insert before a list item that starts on its key's line")
            lead = "" if at == 0 or self.text[at - 1] == "\n" else "\n"
            body = (
                scalar_text(value)
                if _is_scalar(value)
                else _block_text(value, column + 2).lstrip(" ")
            )
            self._splice(
                at, at, f"{lead}{' ' * column}- {body}" + ("\n" if _is_scalar(value) else "")
            )

        def add(parent: Any, part: str | int) -> None:
            parent[part].insert(index, copy.deepcopy(value))

        self._expect(doc, path, add)
        self._verify(f"insert into {_fmt(path)}")

    def copy_from(
        self, doc: int, path: Path, source: YamlFile, source_doc: int, source_path: Path
    ) -> None:
        """Make `path` hold the value at `source_path` of `source`, copied as text (comments
        included) and re-indented; inserted when `path` is missing."""
        value = source.get(source_doc, source_path, _MISSING)
        if value is _MISSING:
            raise EditError(f"the source has no {_fmt(source_path)}")
        src = source._node(source_doc, source_path)
        if not source._is_block(src) or isinstance(src, ScalarNode):
            self.set_value(doc, path, value)
            return
        if self.get(doc, path, _MISSING) is _MISSING:
            self.set_value(doc, path, value)
            return
        dst = self._node(doc, path)
        start = source._comment_block_start(source._line_start(int(src.start_mark.index)))
        lines = source.text[start : source._line_end(source._content_end(src))]
        src_indent = source._indent_of(src)
        if self._is_block(dst) and type(dst) is type(src):
            dst_start = self._comment_block_start(self._line_start(int(dst.start_mark.index)))
            dst_end = self._line_end(self._content_end(dst))
            dst_indent = self._indent_of(dst)
        else:
            key_start = self._key_node(doc, path).start_mark
            dst_indent = int(key_start.column) + 2
            colon = self.text.index(":", int(key_start.index))
            dst_start = colon + 1
            dst_end = self._line_end(self._content_end(dst))
            lines = "\n" + lines
        self._splice(dst_start, dst_end, _reindent(lines, src_indent, dst_indent))

        def put(parent: Any, part: str | int) -> None:
            parent[part] = copy.deepcopy(value)

        self._expect(doc, path, put)
        self._verify(f"copy {_fmt(source_path)} to {_fmt(path)}")

    def remove_document(self, doc: int) -> None:
        """Remove one document with its ``---`` line (leading comments of the file stay)."""
        start, end = self._document_regions()[doc]
        self._splice(start, end, "")
        self._expected.pop(doc)
        # Empty documents may appear or vanish with the separators; compare the real ones.
        if [d for d in self.data if d is not None] != [d for d in self._expected if d is not None]:
            raise EditError(
                f"removing a document from {self.file or 'the file'} would change others",
                fix="separate the documents with '---' lines",
            )
        self._expected = copy.deepcopy(self.data)

    # -- helpers ------------------------------------------------------------------------------

    def _key_node(self, doc: int, path: Path) -> Node:
        parent = self._node(doc, path[:-1])
        found = self._child(parent, path[-1])
        if found is None or found[0] is None:
            raise EditError(f"{_fmt(path)} is not a mapping key")
        return found[0]

    def _replace(self, doc: int, path: Path, value: Any) -> None:
        if not path:
            raise EditError("cannot replace a whole document")
        node = self._node(doc, path)
        if _is_scalar(value) and not self._is_block(node):
            start, end = int(node.start_mark.index), int(node.end_mark.index)
            style = node.style if isinstance(node, ScalarNode) else None
            text = scalar_text(value, style=style)
            if start == end and path and isinstance(path[-1], str):
                # An empty value ("key:") is placed at the next token; write after the colon.
                key = self._key_node(doc, path)
                start = end = self.text.index(":", int(key.end_mark.index)) + 1
                text = " " + text
            self._splice(start, end, text)
            return
        parent = self._node(doc, path[:-1])
        if isinstance(parent, SequenceNode):
            raise EditError(f"replacing the list item {_fmt(path)} with a collection")
        key = self._key_node(doc, path)
        colon = self.text.index(":", int(key.end_mark.index))
        end = self._line_end(self._content_end(node))
        if _is_scalar(value) or not value:
            text = " " + _flow_text(value) + "\n"
        else:
            text = "\n" + _block_text(value, int(key.start_mark.column) + 2)
        self._splice(colon + 1, end, text)

    def _insert_key(self, doc: int, path: Path, key: str, value: Any) -> None:
        node = self._node(doc, path)
        if not isinstance(node, MappingNode):
            raise EditError(f"{_fmt(path)} is not a mapping")
        if getattr(node, "flow_style", False) or not node.value:
            self._rebuild_flow(node, add=f"{scalar_text(key)}: {_flow_text(value)}")
            return
        column = int(node.start_mark.column)
        at = self._line_end(self._content_end(node))
        lead = "" if at == 0 or self.text[at - 1] == "\n" else "\n"
        head = " " * column + scalar_text(key) + ":"
        if _is_scalar(value):
            text = f"{lead}{head} {scalar_text(value)}\n"
        else:
            text = f"{lead}{head}\n" + _block_text(value, column + 2)
        self._splice(at, at, text)

    def _delete_block_key(self, mapping: MappingNode, key: str) -> None:
        entries = mapping.value
        index = next(i for i, (k, _) in enumerate(entries) if k.value == key)
        key_node, value = entries[index]
        start_index = int(key_node.start_mark.index)
        if not self._at_line_start(start_index):
            # The first key of a list item ("- name: x"): the next key moves up after "- ".
            next_key = entries[index + 1][0]
            self._splice(start_index, int(next_key.start_mark.index), "")
            return
        start = self._comment_block_start(self._line_start(start_index))
        if index + 1 < len(entries):
            nxt = int(entries[index + 1][0].start_mark.index)
            end = self._comment_block_start(self._line_start(nxt))
        else:
            end = self._line_end(self._content_end(value))
        self._splice(start, end, "")

    def _delete_block_item(self, sequence: SequenceNode, index: int) -> None:
        items = sequence.value
        dash = self._dash_of(items[index])
        if not self._at_line_start(dash):
            raise EditError("cannot remove an item of a list that starts on its key's line")
        start = self._comment_block_start(self._line_start(dash))
        if index + 1 < len(items):
            end = self._comment_block_start(self._line_start(self._dash_of(items[index + 1])))
        else:
            end = self._line_end(self._content_end(items[index]))
        self._splice(start, end, "")

    def _rebuild_flow(
        self,
        node: Node,
        *,
        drop: str | int | None = None,
        add: str | None = None,
        add_at: int | None = None,
    ) -> None:
        """Rewrite a flow (or empty) collection from its entries' own text; `add` goes at
        position `add_at` (default: the end)."""
        parts = []
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if key.value != drop:
                    parts.append(self.text[key.start_mark.index : value.end_mark.index])
            left, right = "{", "}"
        else:
            for i, item in enumerate(node.value):
                if i != drop:
                    parts.append(self.text[item.start_mark.index : item.end_mark.index])
            left, right = "[", "]"
        if add is not None:
            parts.insert(len(parts) if add_at is None else add_at, add)
        self._splice(
            int(node.start_mark.index), int(node.end_mark.index), left + ", ".join(parts) + right
        )

    def _document_regions(self) -> list[tuple[int, int]]:
        """(start, end) of each document's text: from its ``---`` line (or, for a first document
        without one, its first line: the file's leading comments stay) to the next ``---``."""
        markers = []
        pos = 0
        for line in self.text.splitlines(True):
            if line.startswith("---") and (len(line) == 3 or line[3] in " \t\r\n"):
                markers.append(pos)
            pos += len(line)
        regions = []
        for root in self.roots:
            root_start = int(root.start_mark.index)
            before = [m for m in markers if m <= root_start]
            after = [m for m in markers if m > root_start]
            start = before[-1] if before else self._line_start(root_start)
            regions.append((start, after[0] if after else len(self.text)))
        return regions


def _flow_text(value: Any) -> str:
    """`value` as inline YAML (JSON is valid flow YAML)."""
    return scalar_text(value) if _is_scalar(value) else json.dumps(value, ensure_ascii=False)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, dict | list)


def _fmt(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(document)"


def _reindent(block: str, old: int, new: int) -> str:
    """Shift every non-blank line of `block` by ``new - old`` columns."""
    if old == new:
        return block
    out = []
    for line in block.splitlines(True):
        if not line.strip():
            out.append(line)
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent < old and not line.lstrip(" ").startswith("#"):
            raise EditError("the copied block is indented unevenly")
        out.append(" " * max(0, indent - old + new) + line.lstrip(" "))
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# What each edit means per manifest kind

KEEP_IN_PREDICTOR = ("name", "traffic", "shadow")
"""Seldon predictor fields that stay the primary's when it adopts the candidate's predictor."""


def folder_namespace(path: str) -> str:
    """The namespace a manifest without ``metadata.namespace`` lands in: its folder's."""
    parts = path.split("/")
    return parts[2] if len(parts) > 3 and parts[0] == "clusters" else "default"


def locate(target: YamlFile, version: ModelVersion) -> int:
    """The document of `version`'s object in `target`; raises EditError when absent."""
    ref = version.ref
    doc = target.find(
        kind=ref.kind,
        name=ref.name,
        namespace=ref.namespace,
        default_namespace=folder_namespace(target.file),
    )
    if doc is None:
        raise EditError(
            f"{ref} is not in {target.file or 'the file'}",
            fix="the inventory is stale; run again after the change is merged",
        )
    return doc


def _predictor_index(target: YamlFile, doc: int, version: ModelVersion) -> int:
    predictors = target.get(doc, ("spec", "predictors")) or []
    for i, predictor in enumerate(predictors):
        if isinstance(predictor, dict) and predictor.get("name") == version.predictor:
            return i
    raise EditError(f"{version.ref} has no predictor {version.predictor!r}")


def _predictor_count(target: YamlFile, doc: int) -> int:
    return len(target.get(doc, ("spec", "predictors")) or [])


def apply_edit(target: YamlFile, edit: ManifestEdit, *, source: YamlFile | None = None) -> None:
    """Apply one promotion edit to the file holding `edit.version`.

    `source` is the file holding `edit.source` (ADOPT_SPEC only; it may be `target` itself).
    REMOVE may leave `target` without documents: the caller deletes the file then.
    """
    version = edit.version
    doc = locate(target, version)
    kind = version.ref.kind
    if edit.kind is EditKind.REMOVE:
        if kind == Kind.SELDON_DEPLOYMENT and _predictor_count(target, doc) > 1:
            target.delete(doc, ("spec", "predictors", _predictor_index(target, doc, version)))
            _label_single_predictor(target, doc)
        else:
            target.remove_document(doc)
    elif edit.kind is EditKind.SET_ROLE:
        if kind == Kind.SELDON_DEPLOYMENT and _predictor_count(target, doc) > 1:
            return  # one object, several versions: its role label cannot name one of them
        target.set_value(doc, ("metadata", "labels", ROLE_LABEL), str(edit.value))
    elif edit.kind is EditKind.SET_TRAFFIC:
        _set_traffic(target, doc, version, edit.value)
    elif edit.kind is EditKind.ADOPT_SPEC:
        if edit.source is None or source is None:
            raise EditError("adopting a spec needs the source version and its file")
        _adopt(target, doc, version, source, locate(source, edit.source), edit.source)
    else:  # pragma: no cover - EditKind is closed
        raise EditError(f"unknown edit {edit.kind}")


def _label_single_predictor(target: YamlFile, doc: int) -> None:
    """With one predictor left, the SeldonDeployment's version label names that predictor's
    version: the label would otherwise still name the version just removed."""
    predictors = target.get(doc, ("spec", "predictors")) or []
    labels = predictors[0].get("labels") if len(predictors) == 1 else None
    if isinstance(labels, dict):
        version = labels.get(VERSION_LABEL) or labels.get("version")
        if isinstance(version, str):
            target.set_value(doc, ("metadata", "labels", VERSION_LABEL), version)


def _set_traffic(
    target: YamlFile, doc: int, version: ModelVersion, value: int | str | None
) -> None:
    kind = version.ref.kind
    if kind == Kind.INFERENCE_SERVICE:
        path: Path = ("spec", "predictor", "canaryTrafficPercent")
        if value is None:
            target.delete(doc, path)
        elif isinstance(value, int):
            target.set_value(doc, path, value)
        else:
            raise EditError(f"canaryTrafficPercent cannot be {value!r}")
        return
    if kind == Kind.SELDON_DEPLOYMENT:
        base: Path = ("spec", "predictors", _predictor_index(target, doc, version))
        if value == "shadow":
            target.set_value(doc, (*base, "shadow"), True)
            target.delete(doc, (*base, "traffic"))
        elif isinstance(value, int):
            target.set_value(doc, (*base, "traffic"), value)
            target.delete(doc, (*base, "shadow"))
        else:
            raise EditError(f"predictor traffic cannot be {value!r}")
        return
    raise EditError(
        f"{kind} has no traffic field", fix="native mode is for kserve and seldon targets"
    )


def _adopt(
    target: YamlFile,
    doc: int,
    version: ModelVersion,
    source: YamlFile,
    source_doc: int,
    source_version: ModelVersion,
) -> None:
    """The primary takes the candidate's spec and version label; name, namespace, role and
    everything Kubernetes treats as identity (selectors) stay the primary's."""
    kind = version.ref.kind
    labels: Path = ("metadata", "labels", VERSION_LABEL)
    if kind == Kind.INFERENCE_SERVICE:
        target.copy_from(doc, ("spec",), source, source_doc, ("spec",))
        target.set_value(doc, labels, source_version.version)
    elif kind == Kind.DEPLOYMENT:
        pod_spec: Path = ("spec", "template", "spec")
        target.copy_from(doc, pod_spec, source, source_doc, pod_spec)
        target.set_value(doc, labels, source_version.version)
        # Pods carry the version label too unless the selector uses it (immutable).
        selector = target.get(doc, ("spec", "selector", "matchLabels")) or {}
        pod_label: Path = ("spec", "template", "metadata", "labels", VERSION_LABEL)
        if VERSION_LABEL not in selector and target.get(doc, pod_label) is not None:
            target.set_value(doc, pod_label, source_version.version)
    elif kind == Kind.SELDON_DEPLOYMENT:
        mine = _predictor_index(target, doc, version)
        theirs = _predictor_index(source, source_doc, source_version)
        base: Path = ("spec", "predictors", mine)
        wanted = source.get(source_doc, ("spec", "predictors", theirs)) or {}
        for key in list(target.get(doc, base) or {}):
            if key not in KEEP_IN_PREDICTOR and key not in wanted:
                target.delete(doc, (*base, key))
        for key in wanted:
            if key not in KEEP_IN_PREDICTOR:
                target.copy_from(
                    doc, (*base, key), source, source_doc, ("spec", "predictors", theirs, key)
                )
        if _predictor_count(target, doc) == 1:
            target.set_value(doc, labels, source_version.version)
    else:
        raise EditError(f"cannot adopt the spec of a {kind}")


# ---------------------------------------------------------------------------------------------
# kustomization.yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def _resolve(folder: str, entry: str) -> str | None:
    """Repository path a ``resources:`` entry points at (None for remote resources)."""
    if "://" in entry or entry.startswith(("github.com/", "git@")):
        return None
    return posixpath.normpath(posixpath.join(folder, entry.rstrip("/")))


def resource_group(folder: str, entry: str) -> str | None:
    """The subfolder of `folder` a ``resources:`` entry lies in or names (in a namespace's
    kustomization: the model's folder), or None for entries outside `folder` and remote ones.

    ``fraud/fraud-v1.yaml``, ``./fraud/service.yaml``, ``fraud/`` and ``fraud`` are all in
    group ``fraud``; ``fraud.yaml`` is in group ``fraud.yaml`` (a file, no model's folder).
    """
    path = _resolve(folder, entry)
    head = posixpath.normpath(folder) + "/"
    if path is None or not path.startswith(head):
        return None
    return path[len(head) :].split("/", 1)[0]


def resource_slot(entries: Sequence[object], entry: str, *, folder: str) -> int:
    """Where `entry` joins a ``resources:`` list: right after the last entry of its group,
    else at the end.

    Pull requests of one pass each list a different model in the same kustomization.yaml. Had
    they all appended, every one would insert at the same spot and conflict with the first
    merged; next to its own model's entries each insertion has unchanged lines around it that
    keep it apart from the others, so git merges them (two models that have no entry yet still
    meet at the end).
    """
    group = resource_group(folder, entry)
    if group is not None:
        for index in reversed(range(len(entries))):
            listed = entries[index]
            if isinstance(listed, str) and resource_group(folder, listed) == group:
                return index + 1
    return len(entries)


def remove_resources(
    kustomization: YamlFile, *, folder: str, gone: Callable[[str], bool]
) -> list[str]:
    """Drop every ``resources:`` entry whose path `gone` says no longer exists; returns them."""
    removed: list[str] = []
    for doc in kustomization.documents():
        entries = kustomization.get(doc, ("resources",)) or []
        for index in reversed(range(len(entries))):
            entry = entries[index]
            path = _resolve(folder, entry) if isinstance(entry, str) else None
            if path is not None and gone(path):
                kustomization.delete(doc, ("resources", index))
                removed.append(entry)
    return removed[::-1]


def add_resource(kustomization: YamlFile, entry: str, *, folder: str) -> bool:
    """List `entry` in ``resources:`` unless an entry already points there; it goes where
    `resource_slot` says (after its model's entries), in the first document."""
    docs = kustomization.documents()
    if not docs:
        raise EditError(f"{kustomization.file} is empty", fix="add a Kustomization or delete it")
    wanted = _resolve(folder, entry)
    for doc in docs:
        entries: Sequence[Any] = kustomization.get(doc, ("resources",)) or []
        if any(isinstance(e, str) and _resolve(folder, e) == wanted for e in entries):
            return False
    listed = kustomization.get(docs[0], ("resources",))
    index = resource_slot(listed, entry, folder=folder) if isinstance(listed, list) else 0
    kustomization.insert_item(docs[0], ("resources",), index, entry)
    return True
