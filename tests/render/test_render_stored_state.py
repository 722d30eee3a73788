"""Reading the recorded state from a routing file's metadata lines gives what the whole file
gives: every golden routing file (every target x strategy x state), and edited copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitops_rollout import state
from gitops_rollout.yamlsource import load_fast

GOLDEN = Path(__file__).parent / "golden"
ROUTING = sorted(GOLDEN.rglob("routing.yaml"))


def _full(text: bytes) -> state.StoredState:
    docs = load_fast(text)
    annotations = docs[0]["metadata"]["annotations"]
    return state.StoredState(
        state.RolloutState.from_annotations(annotations), state.is_hand_edited(text)
    )


def test_there_are_golden_routing_files() -> None:
    assert len(ROUTING) > 20


@pytest.mark.parametrize("path", ROUTING, ids=lambda p: str(p.relative_to(GOLDEN)))
def test_the_metadata_lines_give_the_state_the_whole_file_gives(path: Path) -> None:
    text = path.read_bytes()
    assert not state.is_hand_edited(text)
    fragment = state._sealed_metadata(text)
    assert fragment is not None, "our own layout takes the short way"
    assert fragment["metadata"] == load_fast(text)[0]["metadata"]
    assert state.read_stored(text) == _full(text)


def test_an_edited_file_is_read_whole_and_reported() -> None:
    text = ROUTING[0].read_bytes().replace(b"\nspec:\n", b"\nspec:\n  extra: 1\n", 1)
    stored = state.read_stored(text)
    assert stored.hand_edited
    assert stored == _full(text)


def test_a_file_not_in_our_layout_is_read_whole() -> None:
    assert state._sealed_metadata(b"kind: X\n---\nmetadata:\n  name: a\n") is None
    assert state._sealed_metadata(b"kind: X\nspec: {}\n") is None
