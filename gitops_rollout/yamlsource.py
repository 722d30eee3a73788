"""Safe YAML loading that remembers where every value came from.

Policies and manifests are human-written, so an error must point at the line to fix. This module
composes YAML into plain Python values and a map from field path to line number, and refuses the
inputs that would hurt the reconciler: files over `MAX_BYTES`, documents that expand past
`MAX_NODES` (alias bombs) or nest deeper than `MAX_DEPTH` (which would exhaust the stack),
duplicate keys (PyYAML would silently keep the last) and non-string keys. Syntax errors are
translated from the parser's wording into what to change. It knows nothing about what the
documents mean; `policy` and `inventory` give them meaning.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from gitops_rollout.errors import Problem

MAX_BYTES = 1024 * 1024
"""Largest YAML file we read (bytes). Policies are a few KB; a megabyte is a mistake."""

MAX_NODES = 200_000
"""Most values one document may expand to, counting every alias expansion (alias-bomb guard)."""

MAX_DEPTH = 100
"""Deepest nesting of mappings and lists we read. Real documents stay under 20 levels; the
parser and the builder recurse per level, so an unbounded depth would crash the process."""

FieldPath = tuple[str | int, ...]

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader where present (10x faster); the pure-Python one otherwise."""

_SYNTAX_FIX = "fix the YAML syntax at that line"

_STR_TAG = "tag:yaml.org,2002:str"


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

    def _top(self, path: FieldPath, node: yaml.Node) -> tuple[str, int]:
        # Where an expansion went wrong, the top-level entry is what the reader can find; the
        # full path of an alias expansion runs through values written elsewhere.
        top = path[:1]
        return format_path(top), self.lines.get(top, node.start_mark.line + 1)

    def build(self, node: yaml.Node, path: FieldPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            where, line = self._top(path, node)
            raise YamlProblem(
                Problem(
                    self.file,
                    line,
                    where,
                    f"aliases expand the document to more than {MAX_NODES} values (an alias bomb)",
                    "write the values out instead of repeating aliases",
                )
            )
        if len(path) > MAX_DEPTH:
            # Only an alias that refers to its own ancestor gets here: the parser has already
            # checked the depth of what is written (`_check_depth`).
            where, line = self._top(path, node)
            raise YamlProblem(
                Problem(
                    self.file,
                    line,
                    where,
                    f"values nest more than {MAX_DEPTH} levels deep (an alias inside its "
                    "own anchor?)",
                    "write the value out instead of the recursive alias",
                )
            )
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node, path)

    def _scalar(self, node: yaml.ScalarNode, path: FieldPath) -> Any:
        if node.tag == _STR_TAG:
            return node.value  # what SafeConstructor.construct_yaml_str returns, without the detour
        try:
            return self.scalars.construct_object(node, deep=True)
        except (ValueError, OverflowError) as err:
            # A value that looks like a date or number but is not one (2024-13-01), or an
            # explicit tag (!!int abc) that does not fit: PyYAML raises plain ValueErrors.
            raise YamlProblem(
                Problem(
                    self.file,
                    node.start_mark.line + 1,
                    format_path(path),
                    f"invalid YAML: {node.value!r} cannot be read as {_tag_name(node.tag)} ({err})",
                    "quote the value to keep it as text",
                )
            ) from err

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
            line = key_node.start_mark.line + 1
            key = (
                self._scalar(key_node, path)
                if isinstance(key_node, yaml.ScalarNode)
                else self.build(key_node, path)
            )
            if not isinstance(key, str):
                raise YamlProblem(
                    Problem(
                        self.file,
                        line,
                        format_path(path),
                        f"key {_show_key(key_node)} is {_a_type(key)}, not a string",
                        f'quote it: "{key_node.value}"'
                        if isinstance(key_node, yaml.ScalarNode)
                        else "use a plain text key",
                    )
                )
            if key in out:
                first = self.lines.get((*path, key))
                raise YamlProblem(
                    Problem(
                        self.file,
                        line,
                        format_path((*path, key)),
                        f"duplicate key; {key!r} is already set on line {first}"
                        if first is not None
                        else "duplicate key",
                        "keep one of the two entries",
                    )
                )
            self.lines[(*path, key)] = line
            out[key] = self.build(value_node, (*path, key))
        return out


def _tag_name(tag: str) -> str:
    short = tag.rsplit(":", 1)[-1] if tag.startswith("tag:yaml.org,2002:") else tag
    return {"int": "an integer", "float": "a number", "timestamp": "a date"}.get(short, short)


def _show_key(node: yaml.Node) -> str:
    return (
        repr(node.value)
        if isinstance(node, yaml.ScalarNode)
        else f"on line {node.start_mark.line + 1}"
    )


def _a_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


class _Constructor(yaml.SafeLoader):
    """A constructor with no input, used only to turn scalar nodes into values."""

    def __init__(self) -> None:
        super().__init__("")


# (text in the parser's problem, reason, fix, whether the construct's start is the line to fix)
_SYNTAX: tuple[tuple[str, str, str, bool], ...] = (
    (
        "tab character",
        "tab character in the indentation",
        "indent with spaces; YAML does not allow tabs",
        False,
    ),
    (
        "mapping values are not allowed",
        "unexpected ':' (a `key: value` cannot start here)",
        "check this line's indentation, or quote a value that contains ': '",
        False,
    ),
    (
        "did not find expected key",
        "this line does not fit the mapping around it",
        "indent it like the other keys of its mapping, or quote it",
        False,
    ),
    (
        "did not find expected '-' indicator",
        "expected a `- item` line of the list above",
        "start the line with '- ', or indent it to match its list",
        False,
    ),
    (
        "could not find expected ':'",
        "no ':' after the key on this line",
        "write it as `key: value`, or indent it as part of the value above",
        True,
    ),
    (
        "found unexpected end of stream",
        "a quoted string is never closed",
        "add the closing quote",
        True,
    ),
    (
        "did not find expected ',' or ']'",
        "a [ list is never closed",
        "close it with ']', and separate its items with ','",
        True,
    ),
    (
        "did not find expected ',' or '}'",
        "a { mapping is never closed",
        "close it with '}', and separate its entries with ','",
        True,
    ),
    (
        "did not find expected node content",
        "expected a value here",
        "complete the value, or put it in quotes if it starts with } ] , or another YAML symbol",
        False,
    ),
    (
        "found undefined alias",
        "alias (*name) to an anchor that is not defined",
        "define the anchor with &name before using it, or quote a value that starts with *",
        False,
    ),
    (
        "found unknown escape character",
        "unknown escape sequence in a double-quoted string",
        "use single quotes, or write a backslash as \\\\",
        False,
    ),
    (
        "directive",
        "a line starting with % is read as a YAML directive",
        "remove the line, or quote a value that starts with %",
        False,
    ),
    (
        "could not determine a constructor",
        "unsupported tag",
        "remove the !tag; only plain YAML values are read",
        False,
    ),
)


def _syntax_problem(file: str, text: str | bytes, err: yaml.MarkedYAMLError) -> Problem:
    """Turn PyYAML's wording into what to change, on the line to change."""
    problem = err.problem or err.context or "syntax error"
    mark = err.problem_mark or err.context_mark
    chars = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
    char = chars[mark.index] if mark is not None and 0 <= mark.index < len(chars) else ""
    line = mark.line + 1 if mark is not None else None
    known = next((entry for entry in _SYNTAX if entry[0] in problem), None)
    if mark is not None and "mapping values are not allowed" in problem:
        # `key value` without the colon, followed by `key: value`: YAML reads the two lines as
        # one multi-line key and stumbles on the second line; the missing colon is on the first.
        previous = _bare_line_before(chars, mark.line)
        if previous is not None:
            _, reason, fix, _ = next(e for e in _SYNTAX if e[0] == "could not find expected ':'")
            return Problem(file, previous + 1, "", f"invalid YAML: {reason}", fix)
    if known is not None and known[3]:
        # An unclosed quote or bracket: the parser notices at the end, the fix is at the start.
        _, reason, fix, _ = known
        line = err.context_mark.line + 1 if err.context_mark is not None else line
    elif (
        mark is not None
        and mark.index >= len(chars.rstrip())
        and (known is None or known[0] == "did not find expected node content")
    ):
        reason = "the file ends before the last value is complete"
        fix = "close every [ and { that is opened, and finish the last value"
        line = chars.rstrip().count("\n") + 1
    elif known is not None:
        needle, reason, fix, _ = known
        if needle == "could not determine a constructor":
            reason = f"{reason} {problem.rsplit(' ', 1)[-1]}"
    elif "cannot start any token" in problem and char == "\t":
        reason, fix = _SYNTAX[0][1], _SYNTAX[0][2]
    elif "cannot start any token" in problem and char:
        reason, fix = f"a plain value cannot start with {char!r}", "put the value in quotes"
    elif "duplicate anchor" in (err.context or "") and err.context_mark is not None:
        reason = f"anchor defined twice (first on line {err.context_mark.line + 1})"
        fix = "rename one of the anchors"
    else:
        reason = f"{problem} ({err.context})" if err.context else problem
        fix = _SYNTAX_FIX
    return Problem(file, line, "", f"invalid YAML: {reason}", fix)


def _bare_line_before(chars: str, line: int) -> int | None:
    """The 0-based index of the line before `line` if it is a bare word at the same indent."""
    lines = chars.splitlines()
    if line >= len(lines):
        return None
    before = next((i for i in range(line - 1, -1, -1) if lines[i].strip()), None)
    if before is None:
        return None
    previous, current = lines[before], lines[line]
    stripped = previous.strip()
    bare = ":" not in stripped and not stripped.startswith(tuple("#-[]{}'\"&*!|>?%@`"))
    indent = len(previous) - len(previous.lstrip())
    return before if bare and indent == len(current) - len(current.lstrip()) else None


_INDENT = re.compile(rb"^( *)[^ \n]", re.MULTILINE)


def _nesting_bound(data: bytes) -> int:
    """A cheap upper bound of how deep `data` can nest, without parsing it.

    Every level is a flow collection (``[`` or ``{``); a block sequence or explicit key (``-``
    or ``?`` before whitespace), which may also open a compact mapping on the same line (so
    each counts twice); or a block mapping at the start of a line, indented deeper than any
    block mapping around it (so those have distinct indentations). Over-counting is fine:
    above `MAX_DEPTH` the exact depth is measured.
    """
    indicators = sum(data.count(t) for t in (b"- ", b"-\n", b"-\t", b"? ", b"?\n", b"?\t"))
    flows = data.count(b"[") + data.count(b"{")
    return flows + 2 * indicators + len(set(_INDENT.findall(data))) + 1


def _check_depth(text: str | bytes, *, file: str) -> None:
    # libyaml's composer recurses per level in C and crashes the interpreter (not a Python
    # exception) at a few ten thousand levels, and values deeper than the recursion limit break
    # every later consumer; the event stream is flat, so measure there before composing.
    data = text.encode() if isinstance(text, str) else text
    if _nesting_bound(data) <= MAX_DEPTH:
        return
    depth = 0
    for event in yaml.parse(text, Loader=_BaseLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlProblem(
                    Problem(
                        file,
                        event.start_mark.line + 1 if event.start_mark else None,
                        "",
                        f"values nest more than {MAX_DEPTH} levels deep",
                        "flatten the document; policies and manifests need a few levels",
                    )
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load_documents(text: str | bytes, *, file: str) -> list[Document]:
    """Parse every document of a YAML stream, with line numbers.

    Raises `YamlProblem` for syntax errors, oversized input, alias bombs, too deep nesting,
    duplicate and non-string keys. Empty documents (a lone ``---``) are skipped.
    """
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_BYTES:
        raise YamlProblem(
            Problem(
                file,
                None,
                "",
                f"file is {size} bytes, over the {MAX_BYTES // 1024 // 1024} MiB "
                f"({MAX_BYTES} bytes) limit",
                "split it into smaller files; a policy or manifest is a few KB",
            )
        )
    docs: list[Document] = []
    try:
        _check_depth(text, file=file)
        for index, node in enumerate(_compose_all(text)):
            if node is None or _is_empty(node):
                continue
            builder = _Builder(file)
            value = builder.build(node, ())
            docs.append(
                Document(file, index, value, builder.lines, start_line=node.start_mark.line + 1)
            )
    except yaml.MarkedYAMLError as err:
        raise YamlProblem(_syntax_problem(file, text, err)) from err
    except yaml.reader.ReaderError as err:
        raise YamlProblem(
            Problem(
                file,
                None,
                "",
                f"not UTF-8 text: byte 0x{err.character:02x} at offset {err.position} "
                f"({err.reason})"
                if isinstance(err.character, int)
                else f"not readable text: {err.reason} at offset {err.position}",
                "save the file as UTF-8",
            )
        ) from err
    except yaml.YAMLError as err:
        raise YamlProblem(
            Problem(file, None, "", f"invalid YAML: {err}", "fix the YAML syntax")
        ) from err
    return docs


def _is_empty(node: yaml.Node) -> bool:
    # An explicit empty document: a lone `---`, or the one after a trailing `---`.
    return (
        isinstance(node, yaml.ScalarNode)
        and node.tag == "tag:yaml.org,2002:null"
        and node.value == ""
    )


def _compose_all(text: str | bytes) -> Iterator[yaml.Node | None]:
    loader = _BaseLoader(text)
    try:
        while loader.check_node():
            yield loader.get_node()
    finally:
        loader.dispose()


def load_fast(text: str | bytes) -> list[Any]:
    """Parse a YAML stream without line tracking (libyaml), for the hot path.

    Raises on anything `load_documents` would refuse to parse safely (nesting deeper than
    `MAX_DEPTH`) and on syntax errors; callers that need the located message then read the
    file again with `load_documents`. Duplicate keys and size are not checked here.
    """
    _check_depth(text, file="")
    loader = _BaseLoader(text)
    try:
        docs = []
        while loader.check_node():
            node = loader.get_node()
            try:
                value = _plain_value(node, set(), loader)
            except _Unplain:
                # Anchors, merge keys, tags on collections: the constructor's own way.
                return [d for d in yaml.load_all(text, Loader=_BaseLoader) if d is not None]
            if value is not None:
                docs.append(value)
        return docs
    finally:
        loader.dispose()


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Unplain(Exception):
    """A document `_plain_value` leaves to the constructor."""


def _plain_value(node: yaml.Node, seen: set[int], constructor: Any) -> Any:
    """The value SafeConstructor builds for a composed tree of plain maps, lists and scalars,
    without its generic bookkeeping; raises `_Unplain` for anything else (an alias, whose
    node occurs twice, a merge key, a tagged collection, an unhashable key)."""
    if id(node) in seen:
        raise _Unplain
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _STR_TAG:
            return node.value
        return constructor.construct_object(node)
    if isinstance(node, yaml.MappingNode):
        if node.tag != _MAP_TAG:
            raise _Unplain
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                raise _Unplain
            key = _plain_value(key_node, seen, constructor)
            try:
                out[key] = _plain_value(value_node, seen, constructor)
            except TypeError:
                raise _Unplain from None
        return out
    if node.tag != _SEQ_TAG:
        raise _Unplain
    return [_plain_value(item, seen, constructor) for item in node.value]
