"""Safe YAML loading that remembers where every value came from.

Policies and manifests are human-written, so an error must point at the line to fix. This module
composes YAML into plain Python values and a map from field path to line number, and refuses the
inputs that would hurt the reconciler: files over `MAX_BYTES`, documents that expand past
`MAX_NODES` (alias bombs), duplicate keys (PyYAML would silently keep the last) and non-string
keys. It knows nothing about what the documents mean; `policy` and `inventory` give them meaning.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from gitops_rollout.errors import Problem

MAX_BYTES = 1024 * 1024
"""Largest YAML file we read (bytes). Policies are a few KB; a megabyte is a mistake."""

MAX_NODES = 200_000
"""Most values one document may expand to, counting every alias expansion (alias-bomb guard)."""

FieldPath = tuple[str | int, ...]

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader where present (10x faster); the pure-Python one otherwise."""


def format_path(path: FieldPath) -> str:
    """Render a field path the way users write it: ``spec.steps[2].weight``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass
class Document:
    """One YAML document: its value and the line (1-based) of every field path in it."""

    file: str
    index: int
    value: Any
    lines: dict[FieldPath, int] = field(default_factory=dict)
    start_line: int = 1

    def line_of(self, path: FieldPath) -> int:
        """The line of `path`, or of its nearest ancestor that has one."""
        probe = tuple(path)
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            probe = probe[:-1]
        return self.start_line


class YamlProblem(Exception):
    """A file could not be read as YAML; carries the located problem."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(str(problem))


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.count = 0
        self.lines: dict[FieldPath, int] = {}
        self.scalars = _Constructor()

    def build(self, node: yaml.Node, path: FieldPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise YamlProblem(
                Problem(
                    self.file,
                    node.start_mark.line + 1,
                    format_path(path),
                    f"document expands to more than {MAX_NODES} values (alias bomb?)",
                    "remove the repeated aliases; write the values out",
                )
            )
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self.scalars.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: FieldPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged = self.build(value_node, path)
                items = merged if isinstance(merged, list) else [merged]
                for item in items:
                    if isinstance(item, dict):
                        for k, v in item.items():
                            out.setdefault(k, v)
                continue
            key = self.scalars.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise YamlProblem(
                    Problem(
                        self.file,
                        line,
                        format_path(path),
                        f"mapping key {key!r} is not a string",
                        "quote the key",
                    )
                )
            if key in out:
                raise YamlProblem(
                    Problem(
                        self.file,
                        line,
                        format_path((*path, key)),
                        "duplicate key",
                        "keep one of the two entries",
                    )
                )
            self.lines[(*path, key)] = line
            out[key] = self.build(value_node, (*path, key))
        return out


class _Constructor(yaml.SafeLoader):
    """A constructor with no input, used only to turn scalar nodes into values."""

    def __init__(self) -> None:
        super().__init__("")


def load_documents(text: str | bytes, *, file: str) -> list[Document]:
    """Parse every document of a YAML stream, with line numbers.

    Raises `YamlProblem` for syntax errors, oversized input, alias bombs and duplicate keys.
    Empty documents (a lone ``---``) are skipped.
    """
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_BYTES:
        raise YamlProblem(
            Problem(
                file,
                None,
                "",
                f"file is {size} bytes, more than the {MAX_BYTES} we read",
                "split it into smaller files",
            )
        )
    docs: list[Document] = []
    try:
        for index, node in enumerate(_compose_all(text)):
            if node is None:
                continue
            builder = _Builder(file)
            value = builder.build(node, ())
            docs.append(
                Document(file, index, value, builder.lines, start_line=node.start_mark.line + 1)
            )
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = f"invalid YAML: {err.problem or err.context}"
        raise YamlProblem(
            Problem(file, line, "", reason, "fix the YAML syntax at that line")
        ) from err
    except yaml.YAMLError as err:
        raise YamlProblem(
            Problem(file, None, "", f"invalid YAML: {err}", "fix the YAML syntax")
        ) from err
    return docs


def _compose_all(text: str | bytes) -> Iterator[yaml.Node | None]:
    loader = _BaseLoader(text)
    try:
        while loader.check_node():
            yield loader.get_node()
    finally:
        loader.dispose()


def load_fast(text: str | bytes) -> list[Any]:
    """Parse a YAML stream without line tracking (libyaml); for trusted, already-validated input.

    Used on the hot path for bot-owned files and cached inputs; anything that may need a
    located error goes through `load_documents`.
    """
    return [d for d in yaml.load_all(text, Loader=_BaseLoader) if d is not None]
