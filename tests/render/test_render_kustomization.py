"""Where a new rollout folder joins a namespace's kustomization.yaml, by either path.

A new ``<model>/rollout`` entry goes right after the last entry of the same model's folder
(``fraud/fraud-v1.yaml``, ``fraud/``, ``./fraud/service.yaml``), and at the end only when the
list has none: the pull requests of one pass, each listing another model, then change lines
that git merges apart (test_render_kustomization_merge.py merges them for real). The fast path
of render.py (libyaml positions, for the plain block lists nearly every kustomization has) must
write exactly the bytes the round-trip engine of manifest_edits.py writes, and an adoption
adding 1,000 entries to one file parses it once, not once per entry.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from gitops_rollout import render
from gitops_rollout.manifest_edits import (
    EditError,
    YamlFile,
    add_resource,
    resource_group,
    resource_slot,
)

FOLDER = "clusters/prod/ml"
FILE = f"{FOLDER}/kustomization.yaml"
HEAD = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"


def general(text: str, entry: str) -> str:
    """The round-trip engine's result (`add_resource` on a parsed file)."""
    doc = YamlFile(text, file=FILE)
    add_resource(doc, entry, folder=FOLDER)
    return doc.text


def fast(text: str, entry: str) -> str | None:
    """The fast path's result, or None when it leaves the layout to the engine."""
    out = render._add_resource_fast(text.encode(), entry, folder=FOLDER)
    return None if out is None else out.decode()


@pytest.fixture(autouse=True)
def fresh_listings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without remembered listings (they are keyed by content anyway)."""
    monkeypatch.setattr(render, "_LISTINGS", {})


# ---------------------------------------------------------------------------------------------
# Placement


PLACEMENTS = [
    pytest.param(
        "resources:\n  - fraud/fraud-v1.yaml\n  - fraud/fraud-v2.yaml\n"
        "  - scoring/scoring-v1.yaml\n",
        "resources:\n  - fraud/fraud-v1.yaml\n  - fraud/fraud-v2.yaml\n  - fraud/rollout\n"
        "  - scoring/scoring-v1.yaml\n",
        id="model entries in the middle: right after them",
    ),
    pytest.param(
        "resources:\n  - scoring/scoring-v1.yaml\n  - fraud/fraud-v1.yaml\n",
        "resources:\n  - scoring/scoring-v1.yaml\n  - fraud/fraud-v1.yaml\n  - fraud/rollout\n",
        id="model entries at the end: after them, at the end",
    ),
    pytest.param(
        "resources:\n  - fraud/fraud-v1.yaml\n  - scoring/a.yaml\n  - fraud/fraud-v2.yaml\n"
        "  - zeta/a.yaml\n",
        "resources:\n  - fraud/fraud-v1.yaml\n  - scoring/a.yaml\n  - fraud/fraud-v2.yaml\n"
        "  - fraud/rollout\n  - zeta/a.yaml\n",
        id="model entries scattered: after the last one",
    ),
    pytest.param(
        HEAD + "resources:\n- fraud/\n- scoring/\n",
        HEAD + "resources:\n- fraud/\n- fraud/rollout\n- scoring/\n",
        id="the model folder itself listed, entries at column 0",
    ),
    pytest.param(
        "resources:\n  - fraud\n  - scoring\n",
        "resources:\n  - fraud\n  - fraud/rollout\n  - scoring\n",
        id="the model folder listed without a slash",
    ),
    pytest.param(
        "resources:\n  - ./fraud/service.yaml  # the Service\n  - ./scoring/service.yaml\n",
        "resources:\n  - ./fraud/service.yaml  # the Service\n  - fraud/rollout\n"
        "  - ./scoring/service.yaml\n",
        id="dot-slash entry with a trailing comment: after its line",
    ),
    pytest.param(
        "resources:\n    -   'fraud/fraud-v1.yaml'\n    -   \"scoring/a.yaml\"\n",
        "resources:\n    -   'fraud/fraud-v1.yaml'\n    - fraud/rollout\n"
        '    -   "scoring/a.yaml"\n',
        id="quoted entries, deep indent: the dash column is copied",
    ),
    pytest.param(
        "resources:\n  - fraud/fraud-v1.yaml\n  # scoring, owned by the risk team\n"
        "  - scoring/a.yaml\n",
        "resources:\n  - fraud/fraud-v1.yaml\n  - fraud/rollout\n"
        "  # scoring, owned by the risk team\n  - scoring/a.yaml\n",
        id="the comment above the next entry stays with it",
    ),
    pytest.param(
        "resources:\n  - scoring/a.yaml\n  - ../base\n",
        "resources:\n  - scoring/a.yaml\n  - ../base\n  - fraud/rollout\n",
        id="no entry for the model: appended",
    ),
    pytest.param(
        "resources:\n  - fraud.yaml\n  - fraud-v1/x.yaml\n  - scoring/a.yaml\n",
        "resources:\n  - fraud.yaml\n  - fraud-v1/x.yaml\n  - scoring/a.yaml\n  - fraud/rollout\n",
        id="similar names are other folders: appended",
    ),
    pytest.param(
        "resources:\n  - fraud/fraud-v1.yaml\n  - scoring/a.yaml",
        "resources:\n  - fraud/fraud-v1.yaml\n  - fraud/rollout\n  - scoring/a.yaml",
        id="no final newline, inserted in the middle",
    ),
    pytest.param(
        "resources:\n  - scoring/a.yaml\n  - fraud/fraud-v1.yaml",
        "resources:\n  - scoring/a.yaml\n  - fraud/fraud-v1.yaml\n  - fraud/rollout\n",
        id="no final newline, after the last line",
    ),
    pytest.param(
        "resources:\n  - fraud/fraud-v1.yaml\n  - scoring/a.yaml\nnamespace: ml\n",
        "resources:\n  - fraud/fraud-v1.yaml\n  - fraud/rollout\n  - scoring/a.yaml\n"
        "namespace: ml\n",
        id="keys after the list are untouched",
    ),
]


@pytest.mark.parametrize(("text", "expected"), PLACEMENTS)
def test_the_entry_joins_its_models_entries(text: str, expected: str) -> None:
    assert general(text, "fraud/rollout") == expected
    assert fast(text, "fraud/rollout") == expected


GENERAL_ONLY = [
    pytest.param(
        "resources: [fraud/fraud-v1.yaml, scoring/a.yaml]\n",
        "resources: [fraud/fraud-v1.yaml, fraud/rollout, scoring/a.yaml]\n",
        id="flow list",
    ),
    pytest.param(
        "resources:\r\n  - fraud/fraud-v1.yaml\r\n  - scoring/a.yaml\r\n",
        "resources:\r\n  - fraud/fraud-v1.yaml\r\n  - fraud/rollout\r\n  - scoring/a.yaml\r\n",
        id="Windows line endings",
    ),
    pytest.param(
        "# Modèles du namespace\nresources:\n  - fraud/fraud-v1.yaml\n  - scoring/a.yaml\n",
        "# Modèles du namespace\nresources:\n  - fraud/fraud-v1.yaml\n  - fraud/rollout\n"
        "  - scoring/a.yaml\n",
        id="non-ASCII comment",
    ),
    pytest.param(
        "resources:\n  - fraud/fraud-v1.yaml\n  - scoring/a.yaml\n---\nkind: Other\n",
        "resources:\n  - fraud/fraud-v1.yaml\n  - fraud/rollout\n  - scoring/a.yaml\n"
        "---\nkind: Other\n",
        id="several documents",
    ),
    pytest.param(
        "resources:\n  - fraud/fraud-v1.yaml\n  - >-\n    scoring/a.yaml\n",
        "resources:\n  - fraud/fraud-v1.yaml\n  - fraud/rollout\n  - >-\n    scoring/a.yaml\n",
        id="a folded entry after the model's",
    ),
    pytest.param(
        "resources:\n  - fraud\n  - yes\n",
        "resources:\n  - fraud\n  - fraud/rollout\n  - yes\n",
        id="an entry YAML 1.1 reads as a boolean",
    ),
    pytest.param(
        "resources:\n  - fraud\n  - 0o10\n",
        "resources:\n  - fraud\n  - fraud/rollout\n  - 0o10\n",
        id="an entry YAML 1.2 reads as a number",
    ),
    pytest.param(
        "resources:\n",
        "resources:\n  - fraud/rollout\n",
        id="an empty list",
    ),
]


@pytest.mark.parametrize(("text", "expected"), GENERAL_ONLY)
def test_unusual_layouts_take_the_round_trip_engine(text: str, expected: str) -> None:
    assert fast(text, "fraud/rollout") is None
    assert general(text, "fraud/rollout") == expected


def test_an_entry_already_listed_is_not_added_again() -> None:
    text = "resources:\n  - fraud/fraud-v1.yaml\n  - ./fraud/rollout/\n  - scoring/a.yaml\n"
    doc = YamlFile(text, file=FILE)
    assert not add_resource(doc, "fraud/rollout", folder=FOLDER)
    assert doc.text == text
    assert fast(text, "fraud/rollout") == text


@pytest.mark.parametrize(
    ("entry", "group"),
    [
        ("fraud/fraud-v1.yaml", "fraud"),
        ("./fraud/service.yaml", "fraud"),
        ("fraud/", "fraud"),
        ("fraud", "fraud"),
        ("fraud.yaml", "fraud.yaml"),
        ("../ml/fraud/x.yaml", "fraud"),
        ("../base/fraud", None),
        ("https://github.com/org/repo//fraud", None),
    ],
    ids=str,
)
def test_resource_group(entry: str, group: str | None) -> None:
    assert resource_group(FOLDER, entry) == group


def test_resource_slot_ignores_entries_that_are_not_paths() -> None:
    entries: list[object] = ["fraud/a.yaml", 7, None, "scoring/a.yaml"]
    assert resource_slot(entries, "fraud/rollout", folder=FOLDER) == 1
    assert resource_slot(entries, "new/rollout", folder=FOLDER) == 4
    assert resource_slot([], "fraud/rollout", folder=FOLDER) == 0


# ---------------------------------------------------------------------------------------------
# The engine's insert_item


@pytest.mark.parametrize(
    ("text", "edit", "expected"),
    [
        pytest.param(
            "resources:\n  # first\n  - a.yaml\n",
            lambda d: d.insert_item(0, ("resources",), 0, "z.yaml"),
            "resources:\n  - z.yaml\n  # first\n  - a.yaml\n",
            id="at the front: before the first entry's comment",
        ),
        pytest.param(
            "spec:\n  list:\n  - name: a\n    x: 1\n  - name: b\n",
            lambda d: d.insert_item(0, ("spec", "list"), 1, {"name": "c", "y": [1]}),
            "spec:\n  list:\n  - name: a\n    x: 1\n  - name: c\n    y:\n    - 1\n  - name: b\n",
            id="a mapping after a multi-line item",
        ),
        pytest.param(
            "l: [a, 'b']\n",
            lambda d: d.insert_item(0, ("l",), 1, "c d"),
            "l: [a, c d, 'b']\n",
            id="flow list",
        ),
        pytest.param(
            "a: 1\n",
            lambda d: d.insert_item(0, ("l",), 0, "x"),
            "a: 1\nl:\n  - x\n",
            id="a missing list is created",
        ),
        pytest.param(
            "l:\r\n  - a\r\n  - b\r\n",
            lambda d: d.insert_item(0, ("l",), 1, "c"),
            "l:\r\n  - a\r\n  - c\r\n  - b\r\n",
            id="Windows line endings",
        ),
        pytest.param(
            "l:\n  - a\n  - b\n",
            lambda d: d.append_item(0, ("l",), "on"),
            'l:\n  - a\n  - b\n  - "on"\n',
            id="append_item is an insert at the end",
        ),
    ],
)
def test_insert_item(text: str, edit: Callable[[YamlFile], None], expected: str) -> None:
    doc = YamlFile(text)
    edit(doc)
    assert doc.text == expected


@pytest.mark.parametrize(
    ("text", "index", "message"),
    [
        pytest.param("l:\n  - a\n", 2, "list index 2 does not exist at l", id="past the end"),
        pytest.param("l:\n  - a\n", -1, "list index -1 does not exist at l", id="negative"),
        pytest.param("a: 1\n", 1, "list index 1 does not exist at l", id="missing list"),
        pytest.param("l: text\n", 0, "l is not a list", id="not a list"),
    ],
)
def test_insert_item_refuses(text: str, index: int, message: str) -> None:
    doc = YamlFile(text)
    with pytest.raises(EditError) as caught:
        doc.insert_item(0, ("l",), index, "x")
    assert caught.value.reason == message
    assert doc.text == text


# ---------------------------------------------------------------------------------------------
# Fast path and engine agree byte for byte


LAYOUTS = {
    "plain": HEAD + "resources:\n{items}",
    "column 0": "resources:\n{items}namespace: ml\n",
    "commented": "# Models of ml.\n" + HEAD + "resources:\n{items}  # - retired/old.yaml\n",
    "no final newline": "resources:\n{items}",
}
"""Namespace kustomizations the fast path takes; ``{items}`` holds the entry lines."""

ENTRIES = [
    "a/a-v1.yaml",
    "./b/b-v1.yaml",
    "b/service.yaml",
    "c/",
    "d",
    "'e/e-v1.yaml'",
    "../base/common",
    "f.yaml",
    "a/a-v2.yaml  # candidate",
]


def _layout(name: str, entries: list[str]) -> str:
    indent = "" if name == "column 0" else "  "
    text = LAYOUTS[name].format(items="".join(f"{indent}- {e}\n" for e in entries))
    return text.rstrip("\n") if name == "no final newline" else text


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize(
    "model", ["a", "b", "c", "d", "e", "f", "g", "base", "a-v1.yaml", "b b", "ü"]
)
def test_fast_and_general_give_the_same_bytes(layout: str, model: str) -> None:
    text = _layout(layout, ENTRIES)
    entry = f"{model}/rollout"
    expected = general(text, entry)
    got = fast(text, entry)
    if model == "ü":
        assert got is None  # non-ASCII entries are the engine's
    else:
        assert got == expected


def _adopt(text: str, models: list[str], add: Callable[[str, str], str | None]) -> str:
    for model in models:
        out = add(text, f"{model}/rollout")
        assert out is not None
        text = out
    return text


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_adoption_gives_the_same_bytes_by_either_path(layout: str, seed: int) -> None:
    """Entry by entry, each on the previous result, in a random order: the remembered listings
    of the fast path (offsets shifted after each insertion) stay where the engine would go."""
    rng = random.Random(seed)
    entries = [f"m{i:02}/m{i:02}-v1.yaml" for i in range(30)]
    entries += [f"m{i:02}/service.yaml" for i in rng.sample(range(30), 10)]
    rng.shuffle(entries)
    models = [f"m{i:02}" for i in range(36)]  # six without entries
    rng.shuffle(models)
    text = _layout(layout, entries)
    by_engine = _adopt(text, models, general)
    assert _adopt(text, models, fast) == by_engine
    listed = yaml.safe_load(by_engine)["resources"]
    for model in (m for m in models if int(m[1:]) < 30):
        own = [i for i, e in enumerate(listed) if e.startswith(f"{model}/")]
        assert listed[own[-1]] == f"{model}/rollout", model
    assert listed[-6:] == [f"{m}/rollout" for m in models if int(m[1:]) >= 30]


def test_an_entry_after_a_last_line_without_line_break() -> None:
    """The file's last line gains a line break when a new model is appended after it; the
    model of that line still gets its next entry right after it, by either path."""
    text = "resources:\n  - a/a-v1.yaml"
    expected = "resources:\n  - a/a-v1.yaml\n  - a/rollout\n  - b/rollout\n"
    assert _adopt(text, ["b", "a"], general) == expected
    assert _adopt(text, ["b", "a"], fast) == expected


def test_the_read_back_checks_the_position(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first splice into a file is read back: an entry that did not land where
    `resource_slot` puts it sends the file to the round-trip engine."""
    text = "resources:\n  - fraud/fraud-v1.yaml\n  - scoring/a.yaml\n"
    monkeypatch.setattr(render, "resource_slot", lambda entries, entry, *, folder: 0)
    assert fast(text, "fraud/rollout") is None


# ---------------------------------------------------------------------------------------------
# A long adoption parses the file once


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """How often libyaml composes or loads a document (render's fast path does both)."""
    counts = {"compose": 0, "load": 0}
    compose_all, load = yaml.compose_all, yaml.load

    def counting_compose(*args: Any, **kwargs: Any) -> Any:
        counts["compose"] += 1
        return compose_all(*args, **kwargs)

    def counting_load(*args: Any, **kwargs: Any) -> Any:
        counts["load"] += 1
        return load(*args, **kwargs)

    monkeypatch.setattr(yaml, "compose_all", counting_compose)
    monkeypatch.setattr(yaml, "load", counting_load)
    yield counts


def test_a_thousand_entry_adoption_parses_the_file_once(parses: dict[str, int]) -> None:
    models = [f"model-{i:04}" for i in range(1000)]
    base = HEAD + "resources:\n" + "".join(f"  - {m}/{m}-v1.yaml\n" for m in models)
    order = models[::2] + models[1::2]  # not in file order: insertions land all over the file
    # A pass renders each adopted model alone on the base file, then stacked on the others.
    for model in order:
        assert fast(base, f"{model}/rollout") is not None
    text = base
    for model in order:
        out = fast(text, f"{model}/rollout")
        assert out is not None
        text = out
    assert parses == {"compose": 1, "load": 2}  # one reading, one read-back of the first splice
    lines = text.splitlines()
    for model in models:
        own = lines.index(f"  - {model}/{model}-v1.yaml")
        assert lines[own + 1] == f"  - {model}/rollout"
    assert len(lines) == 3 + 2 * len(models)
