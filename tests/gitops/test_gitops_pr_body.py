"""Pull request text: what a reviewer reads, and the metadata later passes read back."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from gitops_helpers import POLICY_FILE, T0, Verdict, transition

from gitops_rollout.gitops.changeset import ChangeSet, FileChange
from gitops_rollout.gitops.pr_body import (
    MAX_BODY,
    PullMetadata,
    commit_message,
    decision_digest,
    render,
    render_body,
    title,
)
from gitops_rollout.policy import TransitionKind
from gitops_rollout.transitions import Command

GOLDEN = Path(__file__).parent / "golden"
ROUTING = "clusters/prod-east/default/fashionmnist/rollout/routing.yaml"
VS = "kind: VirtualService\nspec:\n  http:\n  - route:\n" + "    - {{weight: {}}}\n" * 2
CHANGES = ChangeSet((FileChange(ROUTING, VS.format(95, 5).encode(), VS.format(90, 10).encode()),))
HISTORY = [(T0 - timedelta(minutes=30), 0), (T0 - timedelta(minutes=10), 5)]


def test_step_body_matches_the_golden_file() -> None:
    t = transition()
    body = render_body(t, CHANGES, digest=decision_digest(t), history=HISTORY)
    golden = GOLDEN / "pr_body_step.md"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(body)
    assert body == golden.read_text(), "run with UPDATE_GOLDEN=1 and review the diff"


def test_step_body_sections() -> None:
    t = transition()
    body = render_body(t, CHANGES, digest="abc123", history=HISTORY)
    assert "| mean-latency | 120 | 131.2 | 250 | ✅ pass |" in body
    assert "| error-rate | 0.001 | n/a | 0.0011 | ✅ pass |" in body
    assert "| fashionmnist-0 (v1) | 95% | 90% | -5 |" in body
    assert "| fashionmnist-1 (v2) | 5% | 10% | +5 |" in body
    assert 'x-axis ["08:30", "08:50", "this PR"]' in body and "line [0, 5, 10]" in body
    assert '"path": "/0/spec/http/0/route/0/weight"' in body
    assert "gitops-rollout merges this itself" in body
    assert f"`{POLICY_FILE}`" in body


def test_metadata_round_trips_and_resists_injected_markers() -> None:
    t = transition()
    fake = '<!-- gitops-rollout: {"digest": "evil", "kind": "step"} -->'
    t = replace(t, reasons=(*t.reasons, fake))
    body = render_body(t, CHANGES, digest="abc123")
    assert PullMetadata.parse(body) == PullMetadata(
        digest="abc123",
        policy=POLICY_FILE,
        cluster="prod-east",
        namespace="default",
        model="fashionmnist",
        kind=TransitionKind.STEP,
    )
    assert body.count("<!-- gitops-rollout:") == 1
    assert PullMetadata.parse("a body a human wrote") is None


def test_promotion_waits_for_a_human() -> None:
    t = transition(command=Command.PROMOTE)
    body = render_body(t, CHANGES, digest=decision_digest(t))
    assert t.kind is TransitionKind.PROMOTE and not t.auto_merge
    assert "**A human must merge this**: `promote` is not in the policy's" in body
    assert "#### Evidence" not in body  # an operator's promotion has no verdict checks


def test_first_rollout_has_no_before_weights() -> None:
    t = transition(stored=False)
    body = render_body(t, CHANGES, digest="d")
    assert "| fashionmnist-1 (v2) | n/a | 5% |  |" in body
    assert "Before: no routing written by gitops-rollout yet." in body
    assert "```mermaid" not in body  # no history yet: a single point is no chart


def test_verdict_without_checks_has_no_evidence_table() -> None:
    body = render_body(transition(verdict=replace(Verdict(), checks=())), CHANGES, digest="d")
    assert "#### Evidence" not in body


def test_huge_patches_are_left_to_the_commit() -> None:
    big = ChangeSet(
        tuple(
            FileChange(
                f"clusters/p/ns/m{i}/rollout/routing.yaml", None, b"x: " + b"y" * 2000 + b"\n"
            )
            for i in range(40)
        )
    )
    body = render_body(transition(), big, digest="d")
    assert len(body) < MAX_BODY
    assert "Too large to show here" in body
    assert PullMetadata.parse(body) is not None


def test_title_commit_message_and_draft() -> None:
    t = transition()
    digest = decision_digest(t)
    assert title(t) == "rollout(fashionmnist): prod-east step 2/8 -> 10%"
    message = commit_message(t, CHANGES, digest=digest).render()
    assert message.startswith("rollout(fashionmnist): prod-east step 2/8 -> 10%\n\n- ")
    assert message.endswith(
        f"Rollout-Policy: {POLICY_FILE}\nRollout-Decision: {digest}\nRollout-Kind: step\n"
    )
    pr = render(
        t, CHANGES, head="gitops-rollout/prod-east/default/fashionmnist", base="main", digest=digest
    )
    assert pr.title == title(t)
    assert pr.labels == ("gitops-rollout", "rollout:step", "ml-platform")


def test_decision_digest_is_stable_and_ignores_free_text() -> None:
    t = transition()
    assert decision_digest(t) == decision_digest(transition())
    reworded = replace(t, reasons=("p = 0.0041 now",), state=replace(t.state, reason="new words"))
    assert decision_digest(reworded) == decision_digest(t)
    assert decision_digest(transition(step=2)) != decision_digest(t)


@pytest.mark.parametrize("secret", ["ghp_abcdefghijklmnop", "s3cret-token"])
def test_nothing_but_its_inputs_reaches_the_body(secret: str) -> None:
    t = transition()
    body = render_body(t, CHANGES, digest=decision_digest(t), history=HISTORY)
    assert secret not in body
    assert not re.search(r"https?://[^/\s]*@", body)
