"""yamlemit's three ways of writing YAML give the same bytes as ``yaml.safe_dump``.

Every generated routing file goes through `yamlemit.dump`; goldens pin its output for the
scenarios, and these tests pin the equivalence for arbitrary data: the golden routing objects,
the shapes the direct emitter handles (nesting, lists of lists, empty collections, strings that
need quotes), and random trees of every scalar type with awkward strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gitops_rollout import yamlemit

GOLDEN = Path(__file__).parent / "golden"


def _same_everywhere(obj: Any) -> str:
    reference = yamlemit.dump_pure(obj)
    assert yamlemit.dump_libyaml(obj) == reference
    assert yamlemit.dump(obj) == reference
    return reference


def _golden_objects() -> list[Any]:
    objects = []
    for path in sorted(GOLDEN.rglob("routing.yaml")):
        objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return objects


def test_golden_routing_objects_are_written_the_same_three_ways() -> None:
    objects = _golden_objects()
    assert len(objects) > 20
    for obj in objects:
        _same_everywhere(obj)
        assert yamlemit._Emitter.emit(obj) is not None  # the generated shapes take the fast way


def test_the_direct_emitter_takes_the_common_shapes() -> None:
    obj = {
        "apiVersion": "networking.istio.io/v1",
        "spec": {
            "hosts": ["a.example.com"],
            "http": [
                {
                    "name": "default",
                    "match": [{"headers": {"x-model": {"exact": "v2"}}}],
                    "route": [{"destination": {"host": "h", "port": {"number": 80}}, "weight": 90}],
                    "mirrorPercentage": {"value": 12.5},
                    "retries": {},
                    "tags": [],
                }
            ],
            "matrix": [[1, 2], [[3], {"a": None}], []],
            "flags": [True, False, None, 0, -3, 1.0, 1e300, float("inf")],
            "quoted": ["1.0", "true", "yes", "~", "", "- dash", "a: b", "#x", "'q'", '"d"', "@at"],
            "keys": {"true": 1, "1": 2, "null": 3, "with space": 4, "x: y": 5},
        },
    }
    text = _same_everywhere(obj)
    assert yamlemit._Emitter.emit(obj) == text  # not declined: the direct way wrote it


@pytest.mark.parametrize(
    "obj",
    [
        {"k": "é"},  # not ASCII: PyYAML's own emitter
        {"": 1},  # empty key
        {1: "int key"},
        {"k": "line\nbreak"},
        {"k": "x" * 200, "x" * 200: 1},  # long key: the explicit "? " form
        "bare scalar",
        [],
        {},
    ],
)
def test_what_the_direct_emitter_declines_is_still_written_right(obj: Any) -> None:
    _same_everywhere(obj)


def test_a_shared_container_declines_and_gets_its_anchor() -> None:
    shared = {"a": 1}
    obj = {"x": shared, "y": shared}
    assert yamlemit._Emitter.emit(obj) is None
    assert "&id001" in _same_everywhere(obj)


_text = st.text(
    alphabet=st.sampled_from(list("ab01 -:#'\"?!&*|>%@`,[]{}.~eE+=_/\\\té\n")), max_size=8
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False),
    _text,
)
_trees = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_text, children, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_text, _trees, min_size=1, max_size=5))
def test_random_trees_are_written_the_same_three_ways(obj: dict[str, Any]) -> None:
    _same_everywhere(obj)


_plainish = st.text(
    alphabet=st.sampled_from(list("aZ09_./@#:+=~-xyYnN eE")), min_size=1, max_size=10
)


@settings(max_examples=1500, deadline=None)
@given(_plainish)
def test_text_judged_plain_is_written_plain_by_pyyaml(text: str) -> None:
    if not yamlemit._plain(text):
        return
    assert yamlemit.dump_pure({"k": text}) == f"k: {text}\n"
    assert yamlemit.dump_pure({text: 0}) == f"{text}: 0\n"


@pytest.mark.parametrize(
    "text",
    [
        "true",
        "yes",
        "NO",
        "~",
        "null",
        "1",
        "0x1f",
        "1.5",
        "1.0e+3",
        "2026-01-02",
        "12:30",
        "a:",
        "=",
        "<<",
    ],
)
def test_text_that_reads_as_another_type_is_not_plain(text: str) -> None:
    assert not yamlemit._plain(text)
    _same_everywhere({text: text})


@settings(max_examples=1500, deadline=None)
@given(_plainish)
def test_plain_characters_that_read_as_another_type_are_single_quoted(text: str) -> None:
    if not yamlemit._PLAIN.fullmatch(text) or text.endswith(":") or yamlemit._plain(text):
        return
    assert yamlemit.dump_pure({"k": text}) == f"k: '{text}'\n"
    assert yamlemit.dump_pure({text: 0}) == f"'{text}': 0\n"
    assert yamlemit.dump({"k": text, text: 0}) == yamlemit.dump_pure({"k": text, text: 0})
