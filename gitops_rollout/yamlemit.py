"""Plain data as block-style YAML, byte for byte what ``yaml.safe_dump`` writes, fast.

Every routing file of a pass goes through `dump` (10,000 of them in a pass over a large
repository), so it takes the quickest of three ways that give the same bytes:

1. `_Emitter`: the block layout written directly from Python dicts, lists and scalars. It uses
   libyaml only to learn how each distinct string is written as a key and as a value (plain,
   single- or double-quoted), once per string: strings repeat across objects (keys, hosts,
   namespaces), and the layout itself is a handful of fixed rules (two-space indent, lists
   under a key not indented, ``- `` carrying the first key of a mapping item, ``{}``/``[]`` for
   empty collections).
2. libyaml's emitter over a node tree (`_node`), for what the direct way declines.
3. PyYAML's pure-Python emitter, for what libyaml may write differently (text that is not
   printable ASCII, empty keys) and for objects that share a dict or list (PyYAML writes an
   anchor).

tests/render/test_render_dump.py checks that the three agree.
"""

from __future__ import annotations

import io
import re
from typing import Any, ClassVar

import yaml

DUMP_OPTIONS: dict[str, Any] = {
    "sort_keys": False,
    "default_flow_style": False,
    "width": 1_000_000,
    "allow_unicode": True,
}
"""The options every generated file is written with (`yaml.safe_dump` keywords)."""


def dump(obj: Any) -> str:
    """`yaml.safe_dump(obj, **DUMP_OPTIONS)`, the fastest way that gives the same text."""
    text = _Emitter.emit(obj)
    if text is not None:
        return text
    return dump_libyaml(obj)


def dump_libyaml(obj: Any) -> str:
    """The same text through libyaml's emitter when that gives the same bytes (else PyYAML:
    a bare scalar, for one, which PyYAML ends with "..." and libyaml does not)."""
    if _FastDumper is not None and type(obj) in (dict, list):
        node = _node(obj, set())
        if node is not None:
            stream = io.StringIO()
            dumper = _FastDumper(stream, **DUMP_OPTIONS)
            try:
                dumper.open()
                dumper.serialize(node)
                dumper.close()
            finally:
                dumper.dispose()
            return stream.getvalue()
    return dump_pure(obj)


def dump_pure(obj: Any) -> str:
    """The reference: PyYAML's own emitter."""
    text: str = yaml.safe_dump(obj, **DUMP_OPTIONS)
    return text


# ---------------------------------------------------------------------------------------------
# 1. The direct emitter


def _printable(text: str) -> bool:
    return text.isascii() and text.isprintable()


_PLAIN = re.compile(r"[A-Za-z0-9_/][A-Za-z0-9_./@#:+=~-]*")
"""Text both emitters write plain (unquoted) when it does not read as another type: no
indicator first, no ": " or " #" inside (no spaces at all), no ":" last (checked apart)."""
_SIMPLE_KEY_MAX = 128
"""Longer keys are written in the explicit ``? key`` form."""
_RESOLVER = yaml.resolver.Resolver()


def _plain(text: str) -> bool:
    """True when `text` is written as itself: plain characters, and YAML reads it back as a
    string (not ``true``, ``1.0``, ``0x1f``, ``null``, a date...)."""
    return _PLAIN.fullmatch(text) is not None and not text.endswith(":") and _reads_as_string(text)


def _reads_as_string(text: str) -> bool:
    tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    return bool(tag == _STR)


class _Emitter:
    """Writes one object; `emit` returns None for anything outside the handled domain."""

    _as_key: ClassVar[dict[str, str | None]] = {}
    _as_value: ClassVar[dict[str, str | None]] = {}
    _CACHE_MAX = 100_000

    class Decline(Exception):
        """The object needs another way (an unusual string, a shared container, a type)."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.seen: set[int] = set()

    @classmethod
    def emit(cls, obj: Any) -> str | None:
        if _FastDumper is None:
            return None
        emitter = cls()
        try:
            if type(obj) is dict and obj:
                emitter.mapping(obj, 0, first_inline=False)
            elif type(obj) is list and obj:
                emitter.sequence(obj, 0, first_inline=False)
            else:
                return None  # a bare scalar or empty collection: rare, and has its own form
        except cls.Decline:
            return None
        return "".join(emitter.out)

    def enter(self, container: dict[Any, Any] | list[Any]) -> None:
        if id(container) in self.seen:
            raise self.Decline
        self.seen.add(id(container))

    def mapping(self, value: dict[Any, Any], indent: int, *, first_inline: bool) -> None:
        """Keys at `indent`; with `first_inline`, the first key follows a ``- `` already out."""
        self.enter(value)
        out = self.out
        pad = " " * indent
        for number, (key, child) in enumerate(value.items()):
            if type(key) is not str:
                raise self.Decline
            lead = "" if first_inline and number == 0 else pad
            out.append(f"{lead}{self.key(key)}:")
            kind = type(child)
            if kind is dict and child:
                out.append("\n")
                self.mapping(child, indent + 2, first_inline=False)
            elif kind is list and child:
                out.append("\n")
                self.sequence(child, indent, first_inline=False)
            else:
                out.append(f" {self.scalar(child)}\n")

    def sequence(self, value: list[Any], indent: int, *, first_inline: bool) -> None:
        """Items' ``- `` at `indent`; with `first_inline`, the first item's dash is already out."""
        self.enter(value)
        out = self.out
        pad = " " * indent
        for number, child in enumerate(value):
            out.append("- " if first_inline and number == 0 else f"{pad}- ")
            kind = type(child)
            if kind is dict and child:
                self.mapping(child, indent + 2, first_inline=True)
            elif kind is list and child:
                self.sequence(child, indent + 2, first_inline=True)
            else:
                out.append(f"{self.scalar(child)}\n")

    def key(self, text: str) -> str:
        found = self._as_key.get(text, "")
        if found == "":
            found = self._learn(self._as_key, text, as_key=True)
        if found is None:
            raise self.Decline
        return found

    def scalar(self, value: Any) -> str:
        kind = type(value)
        if kind is str:
            found = self._as_value.get(value, "")
            if found == "":
                found = self._learn(self._as_value, value, as_key=False)
            if found is None:
                raise self.Decline
            return found
        if kind is bool:
            return "true" if value else "false"
        if kind is int:
            return str(value)
        if value is None:
            return "null"
        if kind is float:
            return _float_text(value)
        if kind is dict and not value:
            self.enter(value)
            return "{}"
        if kind is list and not value:
            self.enter(value)
            return "[]"
        raise self.Decline

    @classmethod
    def _learn(cls, cache: dict[str, str | None], text: str, *, as_key: bool) -> str | None:
        """How libyaml writes `text` as a key or a value, on one line; None when not so."""
        found: str | None = None
        simple = _PLAIN.fullmatch(text) is not None and not text.endswith(":")
        if simple and (not as_key or len(text) < _SIMPLE_KEY_MAX):
            # Plain when it reads back as a string, else single-quoted ('1.0', 'true').
            found = text if _reads_as_string(text) else f"'{text}'"
        elif text and _printable(text):
            written = dump_libyaml({text: 0} if as_key else {"k": text})
            if as_key and written.endswith(": 0\n"):
                found = written[: -len(": 0\n")]
                if found.startswith("?"):
                    found = None  # a long key, written in the explicit "? key" form
            elif not as_key and written.startswith("k: ") and written.endswith("\n"):
                found = written[len("k: ") : -1]
            if found is not None and "\n" in found:
                found = None
        elif text == "" and not as_key:
            found = "''"
        if len(cache) >= cls._CACHE_MAX:
            cache.clear()
        cache[text] = found
        return found


# ---------------------------------------------------------------------------------------------
# 2. libyaml over a node tree

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
        return yaml.ScalarNode(_STR, value) if _printable(value) else None
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
