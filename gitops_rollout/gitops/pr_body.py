"""What a rollout pull request and its commit say: title, markdown body, commit message.

Rendered from the transition (the decision and why), the change set (what changes) and the
traffic history the caller read from Git. The body is for the reviewer: decision and reasons,
evidence, weights before and after, the policy, a chart of the candidate's traffic, the JSON
patch, and what merging, closing or ignoring the PR does. A hidden metadata comment lets later
passes recognise the PR (adopt it, or treat its closing as a veto of this exact decision).
Pure: no I/O, no clock. Nothing secret is ever an input, so nothing secret can come out.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from gitops_rollout import __version__
from gitops_rollout.analysis.verdict import (
    Check,
    CheckVerdict,
    Comparison,
    Verdict,
    confidence,
    value,
)
from gitops_rollout.gitops.changeset import ChangeSet
from gitops_rollout.gitops.hosts.base import PullRequestDraft
from gitops_rollout.gitops.repo import CommitMessage
from gitops_rollout.policy import Analysis, TransitionKind, format_duration
from gitops_rollout.state import PREFIX
from gitops_rollout.transitions import RoutePlan, Transition

MAX_BODY = 60_000
"""Characters; GitHub refuses bodies over 65,536, and hosts append their own text."""

MAX_CHART_POINTS = 30
"""Points in the traffic chart; older history is dropped so the chart stays readable."""

_MARKER = "<!-- gitops-rollout: "
_MARKER_RE = re.compile(r"<!-- gitops-rollout: (\{.*?\}) -->", re.DOTALL)

TRAILER_POLICY = "Rollout-Policy"
TRAILER_DECISION = "Rollout-Decision"
TRAILER_KIND = "Rollout-Kind"
TRAILER_ROLLOUT = "Rollout-Id"


@dataclass(frozen=True)
class PullMetadata:
    """The hidden, machine-readable part of a rollout PR body."""

    digest: str
    """`decision_digest` of the transition the PR proposes."""
    policy: str
    cluster: str
    namespace: str
    model: str
    kind: TransitionKind

    def comment(self) -> str:
        data = {
            "cluster": self.cluster,
            "digest": self.digest,
            "kind": self.kind.value,
            "model": self.model,
            "namespace": self.namespace,
            "policy": self.policy,
        }
        # ">" only occurs inside JSON strings; escaping it keeps "-->" out of the comment.
        text = json.dumps(data, sort_keys=True).replace(">", "\\u003e")
        return f"{_MARKER}{text} -->"

    @staticmethod
    def parse(body: str) -> PullMetadata | None:
        """The metadata of a body we rendered, or None (not ours, or mangled by a human)."""
        found = _MARKER_RE.findall(body or "")
        if not found:
            return None
        try:
            data = json.loads(found[-1])
            return PullMetadata(
                digest=str(data["digest"]),
                policy=str(data["policy"]),
                cluster=str(data["cluster"]),
                namespace=str(data["namespace"]),
                model=str(data["model"]),
                kind=TransitionKind(data["kind"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


def metadata(
    transition: Transition, *, digest: str, policy_file: str | None = None
) -> PullMetadata:
    s = transition.situation
    return PullMetadata(
        digest=digest,
        policy=policy_file or s.loaded.file,
        cluster=s.cluster,
        namespace=s.policy.spec.namespace,
        model=s.policy.model,
        kind=transition.kind,
    )


def decision_digest(transition: Transition) -> str:
    """A short id of what the transition decides: same inputs, same digest.

    Covers where (cluster, model, policy), the kind and action, the state it records (without
    the free-text reason, which may quote fresh metric values) and the routing it asks for.
    A PR closed unmerged vetoes this digest; new inputs (a changed candidate spec, another
    step) give a new digest and a new PR.
    """
    s = transition.situation
    state = {k: v for k, v in transition.state.annotations().items() if k != PREFIX + "reason"}
    payload = {
        "cluster": s.cluster,
        "model": s.policy.model,
        "namespace": s.policy.spec.namespace,
        "policy": s.loaded.file,
        "kind": transition.kind.value,
        "action": transition.action.value,
        "state": state,
        "plan": transition.plan.describe() if transition.plan else None,
        "edits": [[e.kind.value, e.version.key, str(e.value)] for e in transition.edits],
    }
    data = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def title(transition: Transition) -> str:
    """``rollout(<model>): <cluster> <title>``: the PR title and the commit subject."""
    s = transition.situation
    return " ".join(f"rollout({s.policy.model}): {s.cluster} {transition.title}".split())


def commit_message(transition: Transition, changes: ChangeSet, *, digest: str) -> CommitMessage:
    """The structured commit message: subject, reasons, and greppable trailers."""
    lines = [f"- {' '.join(r.split())}" for r in transition.reasons]
    lines.append("")
    lines.append(f"{transition.action.value}: {changes.summary()}")
    return CommitMessage(
        subject=title(transition),
        body="\n".join(lines),
        trailers=(
            (TRAILER_POLICY, transition.situation.loaded.file),
            (TRAILER_DECISION, digest),
            (TRAILER_KIND, transition.kind.value),
            *(((TRAILER_ROLLOUT, transition.state.rollout),) if transition.state.rollout else ()),
        ),
    )


def render(
    transition: Transition,
    changes: ChangeSet,
    *,
    head: str,
    base: str,
    digest: str,
    history: Sequence[tuple[datetime, int]] = (),
    policy_file: str | None = None,
) -> PullRequestDraft:
    """The pull request for one transition: title, body, labels and reviewers from the policy."""
    policy = transition.situation.policy
    labels = ("gitops-rollout", f"rollout:{transition.kind.value}", *policy.spec.gitops.labels)
    return PullRequestDraft(
        head=head,
        base=base,
        title=title(transition),
        body=render_body(
            transition, changes, digest=digest, history=history, policy_file=policy_file
        ),
        labels=tuple(dict.fromkeys(labels)),
        reviewers=tuple(policy.spec.gitops.reviewers),
    )


def render_body(
    transition: Transition,
    changes: ChangeSet,
    *,
    digest: str,
    history: Sequence[tuple[datetime, int]] = (),
    policy_file: str | None = None,
) -> str:
    """The markdown body. `history` is (time, candidate weight %) as merged so far, oldest
    first; the chart appends the weight this PR proposes."""
    meta = metadata(transition, digest=digest, policy_file=policy_file)
    head = [
        _summary(transition, meta),
        _evidence(transition),
        _weights(transition),
        _chart(transition, history),
        _policy(transition, meta),
        _files(changes),
    ]
    tail = [_behaviour(transition), _footer(meta)]
    patch = _patch(changes)
    body = _join(*head, patch, *tail)
    if len(body) > MAX_BODY:
        note = (
            "<details><summary>JSON patch</summary>\n\nToo large to show here; "
            "see the commit's diff.\n\n</details>"
        )
        body = _join(*head, note, *tail)
    return body


# -- sections ----------------------------------------------------------------------------------


def _summary(t: Transition, meta: PullMetadata) -> str:
    out = [
        f"### `{meta.model}` on `{meta.cluster}`: {_text(t.title)}",
        "",
        f"**Decision:** {t.action.value} ({t.kind.value}) in namespace `{meta.namespace}`.",
    ]
    if t.reasons:
        out += ["", "**Why:**", *(f"- {_text(r)}" for r in t.reasons)]
    return "\n".join(out)


def _evidence(t: Transition) -> str:
    checks = getattr(t.verdict, "checks", None) if t.verdict is not None else None
    if not checks:
        return ""
    if not all(isinstance(c, Check) for c in checks):
        return _loose_evidence(checks)
    return _check_evidence(t, tuple(checks))


# -- evidence ----------------------------------------------------------------------------------

_COMPARED = {
    Comparison.RELATIVE: "ratio to baseline",
    Comparison.UPPER_LIMIT: "upper limit",
    Comparison.LOWER_LIMIT: "lower limit",
    Comparison.REWARD: "reward vs baseline",
    Comparison.TRAFFIC_SPLIT: "traffic split",
}
_MARK = {
    CheckVerdict.PASS: "✅ pass",
    CheckVerdict.FAIL: "❌ fail",
    CheckVerdict.UNDECIDED: "⏳ undecided",
    CheckVerdict.NO_DATA: "⚠️ no data",
}
_GUARDS = (Comparison.RELATIVE, Comparison.UPPER_LIMIT, Comparison.LOWER_LIMIT)
"""Guardrail tests: the ones that share the rollback alpha."""


def _check_evidence(t: Transition, checks: tuple[Check, ...]) -> str:
    """The analysis' checks: per metric and version the estimates, the confidence bounds and
    what they must beat, the verdict, the counts it rests on, and why in a sentence."""
    s = t.situation
    baseline = s.primary.version if s.primary is not None else "baseline"
    rows = [
        "#### Evidence",
        "",
        *_evidence_intro(t, checks),
        "",
        f"| metric | version | compared with | baseline ({_text(baseline)}) | candidate "
        "| bounds | pass / fail when | verdict | counts (baseline / candidate) |",
        "|---|---|---|---:|---:|---|---|---|---|",
    ]
    for c in checks:
        base, cand = _estimate(c, c.baseline), _estimate(c, c.candidate)
        if c.comparison is Comparison.TRAFFIC_SPLIT:
            base, cand = f"configured {base}", f"observed {cand}"
        cells = (
            c.metric,
            c.version,
            _COMPARED[c.comparison],
            base,
            cand,
            _bounds(c),
            _thresholds(c),
            _MARK[c.verdict],
            _counts(c, t),
        )
        rows.append("| " + " | ".join(_text(cell) for cell in cells) + " |")
    rows += ["", "Why, per check:", ""]
    rows += [
        f"- **{_text(c.metric)}** ({_text(c.version)}): {_text(_why(c, baseline))}" for c in checks
    ]
    return "\n".join(rows)


def _evidence_intro(t: Transition, checks: tuple[Check, ...]) -> list[str]:
    analysis_spec = t.situation.policy.spec.analysis
    verdict = t.verdict if isinstance(t.verdict, Verdict) else None
    used = max((c.tally.intervals for c in checks), default=0)
    every = format_duration(analysis_spec.interval) if analysis_spec else "?"
    tested = _plural(used, "interval")
    out = [f"Counts since the rollout started: {tested} of {every} entered the tests"]
    if verdict is not None:
        warmup = []
        if analysis_spec is not None and analysis_spec.warmup:
            warmup.append(f"warmup {format_duration(analysis_spec.warmup)}")
        if analysis_spec is not None and analysis_spec.warmup_requests:
            warmup.append(f"warmupRequests {analysis_spec.warmup_requests}")
        declared = f" (policy: {', '.join(warmup)})" if warmup else ""
        left = _plural(verdict.excluded_intervals, "interval")
        out[0] += f"; {left} left out as the candidate's warm-up{declared}."
        guards = [c for c in checks if c.comparison in _GUARDS]
        if verdict.alpha > 0:
            split = verdict.alpha / max(len(guards), 1)
            tests = _plural(len(guards), "rollback test")
            out += [
                "",
                "Bounds are anytime-valid (they hold however often the rollout is looked at): "
                f"a check passes when its bound clears the line at {confidence(verdict.alpha)} "
                f"confidence, and fails (rolling back) at {confidence(split)} each, the "
                f"policy's alpha {verdict.alpha:g} shared by {tests}.",
            ]
    else:
        out[0] += "."
    return out


def _estimate(c: Check, x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return value(c, x)


def _bound(c: Check, x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "?"
    if c.comparison is Comparison.RELATIVE:
        return f"{x:.2f}x"
    if c.comparison is Comparison.REWARD:
        return f"{x:+.4g}"
    return value(c, x)


def _bounds(c: Check) -> str:
    if c.comparison is Comparison.TRAFFIC_SPLIT or (c.lower is None and c.upper is None):
        return "n/a"
    return f"{_bound(c, c.lower)} to {_bound(c, c.upper)}"


def _thresholds(c: Check) -> str:
    limit, fail_at = _bound(c, c.limit), _bound(c, c.fail_at)
    if c.comparison in (Comparison.RELATIVE, Comparison.UPPER_LIMIT):
        return f"passes with upper bound below {limit}, fails with lower bound above {fail_at}"
    if c.comparison is Comparison.LOWER_LIMIT:
        return f"passes with lower bound above {limit}, fails with upper bound below {fail_at}"
    if c.comparison is Comparison.REWARD:
        return "wins with lower bound above 0 against every arm; out when proven below another"
    return "fails when far from the configured share (sample-ratio test at alpha 0.001)"


def _counts(c: Check, t: Transition) -> str:
    tally = c.tally
    requests = "requests"
    spec = t.situation.policy.spec.analysis
    if c.unit == "ratio" or (
        c.comparison is Comparison.REWARD and spec and _per_denominator(c, spec)
    ):
        requests = "denominator"
    parts = [
        _plural(tally.intervals, "interval"),
        f"{requests} {_count(tally.baseline_requests)} / {_count(tally.candidate_requests)}",
    ]
    if tally.baseline_events is not None or tally.candidate_events is not None:
        parts.append(
            f"{_events(c)} {_count(tally.baseline_events)} / {_count(tally.candidate_events)}"
        )
    return "; ".join(parts)


def _per_denominator(c: Check, spec: Analysis) -> bool:
    """Whether a reward is counted per its own denominator rather than per request."""
    custom = next((m for m in spec.metrics if m.name == c.metric), None)
    return custom is not None and custom.denominator is not None


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _events(c: Check) -> str:
    if c.metric == "error-rate":
        return "errors"
    if c.metric.endswith("-latency"):
        return "slow requests"
    return "events"


def _count(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.2f}"


def _why(c: Check, baseline: str) -> str:
    """The check's finding in one plain sentence."""
    what = f"{c.metric} of {c.version}"
    if c.metric.endswith("-latency") and c.unit == "fraction of requests":
        # Tail latency is tested as the share of requests beyond a bucket edge (the note).
        what = f"the share of {c.version}'s slow requests ({c.metric})"
    measured = f"{_estimate(c, c.candidate)} against {baseline}'s {_estimate(c, c.baseline)}"
    note = f" ({c.note})" if c.note and not c.note.startswith("bounds are on") else ""
    note = note.replace("<=", "≤").replace(">=", "≥")
    if c.verdict is CheckVerdict.NO_DATA:
        return f"no data, so it can neither pass nor fail: {c.note or 'not found in the metrics'}."
    if c.comparison is Comparison.TRAFFIC_SPLIT:
        if c.verdict is CheckVerdict.FAIL:
            return (
                f"{c.note}: traffic is not split as configured, so no comparison is trusted "
                "until the routing is fixed."
            )
        return f"{c.note}: consistent with the configured split."
    if c.comparison is Comparison.REWARD:
        diff = f"{_bound(c, c.lower)} to {_bound(c, c.upper)}"
        if c.verdict is CheckVerdict.PASS:
            return f"{c.version} has the best {c.metric}: {measured}; the difference is {diff}."
        if c.verdict is CheckVerdict.FAIL:
            return (
                f"{c.version} is out: proven worse than another arm on {c.metric}, or it "
                f"failed a guardrail ({measured})."
            )
        return f"no winner yet on {c.metric}: {measured}; the difference is {diff}."
    if c.comparison is Comparison.RELATIVE:
        if c.verdict is CheckVerdict.PASS:
            return (
                f"{what} is at most {_bound(c, c.upper)} {baseline}'s ({measured}), inside the "
                f"margin of {_bound(c, c.limit)}{note}."
            )
        if c.verdict is CheckVerdict.FAIL:
            return (
                f"{what} is at least {_bound(c, c.lower)} {baseline}'s ({measured}), beyond the "
                f"rollback margin of {_bound(c, c.fail_at)}: it is worse{note}."
            )
        if c.upper is None:
            return (
                f"{what} needs more data to be shown below {_bound(c, c.limit)} {baseline}'s "
                f"({measured}){note}."
            )
        return (
            f"{what} is between {_bound(c, c.lower)} and {_bound(c, c.upper)} {baseline}'s "
            f"({measured}): not yet shown inside the margin of {_bound(c, c.limit)}, nor worse "
            f"than the rollback margin of {_bound(c, c.fail_at)}{note}."
        )
    upper = c.comparison is Comparison.UPPER_LIMIT
    side, line = ("upper", "below") if upper else ("lower", "above")
    own = f"{_estimate(c, c.candidate)} measured"
    if c.verdict is CheckVerdict.PASS:
        bound = f"at most {_bound(c, c.upper)}" if upper else f"at least {_bound(c, c.lower)}"
        return f"{what} is {bound} ({own}), {line} its {side} limit of {_bound(c, c.limit)}{note}."
    if c.verdict is CheckVerdict.FAIL:
        bound = f"at least {_bound(c, c.lower)}" if upper else f"at most {_bound(c, c.upper)}"
        crossed = "above" if upper else "below"
        return (
            f"{what} is {bound} ({own}), {crossed} its {side} limit of {_bound(c, c.limit)}{note}."
        )
    return (
        f"{what} is between {_bound(c, c.lower)} and {_bound(c, c.upper)} ({own}): not yet "
        f"shown {line} its {side} limit of {_bound(c, c.limit)}{note}."
    )


def _loose_evidence(checks: Sequence[object]) -> str:
    """Checks of another verdict type than the analysis stage's, read by field name."""
    rows = [
        "#### Evidence",
        "",
        "| metric | baseline | candidate | bound | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for check in checks:
        metric = _field(check, "metric", "name")
        bound = _field(check, "bound", "limit", "threshold")
        verdict = _field(check, "verdict", "outcome", "passed", "ok", "status")
        rows.append(
            f"| {_text(_value(metric))} | {_number(_field(check, 'baseline'))} "
            f"| {_number(_field(check, 'candidate'))} | {_number(bound)} | {_verdict(verdict)} |"
        )
    return "\n".join(rows)


def _weights(t: Transition) -> str:
    s = t.situation
    names: dict[str, str] = {}
    for v in (s.primary, *s.candidates):
        if v is not None:
            names[v.key] = f"{v.ref.name} ({v.version})"
    before: dict[str, int] | None
    if s.state.weights:
        before = dict(s.state.weights)
    elif s.stored is not None and s.state.primary is not None:
        before = {s.state.primary.key: 100}
    else:
        before = None  # no routing file yet: gitops-rollout has not routed anything
    after = _plan_weights(t.plan)
    if after is None and before is None:
        return ""
    keys = list(dict.fromkeys([*(after or {}), *(before or {})]))
    rows = ["#### Traffic", "", "| version | before | after | change |", "|---|---:|---:|---:|"]
    for key in keys:
        b = before.get(key, 0) if before is not None else None
        a = after.get(key, 0) if after is not None else None
        change = "" if a is None or b is None else _delta(a - b)
        rows.append(f"| {_text(names.get(key, key))} | {_percent(b)} | {_percent(a)} | {change} |")
    notes = _plan_notes(t.plan)
    if before is None:
        notes.insert(0, "Before: no routing written by gitops-rollout yet.")
    return "\n".join(rows + (["", *notes] if notes else []))


def _chart(t: Transition, history: Sequence[tuple[datetime, int]]) -> str:
    proposed = _candidate_share(t.plan)
    points = [(_label(when, history), int(w)) for when, w in history][-(MAX_CHART_POINTS - 1) :]
    points.append(("this PR", proposed))
    if len(points) < 2:
        return ""
    xs = ", ".join(json.dumps(x) for x, _ in points)
    ys = ", ".join(str(max(0, min(100, y))) for _, y in points)
    cluster = t.situation.cluster.replace('"', "'")
    return "\n".join(
        [
            "#### Candidate traffic over time",
            "",
            "```mermaid",
            "xychart-beta",
            f'    title "Candidate share of requests on {cluster} (%)"',
            f"    x-axis [{xs}]",
            '    y-axis "percent" 0 --> 100',
            f"    line [{ys}]",
            "```",
        ]
    )


def _policy(t: Transition, meta: PullMetadata) -> str:
    policy = t.situation.policy
    strategy = policy.spec.strategy.type.value
    state = t.state
    where = f", step {state.step}" if state.step else ""
    return "\n".join(
        [
            "#### Policy",
            "",
            f"`{meta.policy}` (rollout policy `{policy.name}`, strategy `{strategy}`) asked for "
            f"this: the rollout moves to phase `{state.phase.value}`{where}.",
        ]
    )


def _files(changes: ChangeSet) -> str:
    if not changes:
        return ""
    return "\n".join(
        ["#### Files", "", *(f"- `{_text(c.path)}` ({c.kind.value})" for c in changes)]
    )


def _patch(changes: ChangeSet) -> str:
    patches = changes.json_patches()
    if not patches:
        return ""
    parts = [f"<details><summary>JSON patch: {changes.summary()}</summary>", ""]
    for path, ops in patches.items():
        parts.append(f"`{_text(path)}`")
        parts.append("")
        if ops is None:
            parts.append("_not YAML, or not parseable: see the commit's diff_")
        else:
            text = json.dumps(ops, indent=2, sort_keys=True, ensure_ascii=False)
            fence = "`" * max(3, _longest_backticks(text) + 1)
            parts += [f"{fence}json", text, fence]
        parts.append("")
    parts.append("</details>")
    return "\n".join(parts)


def _behaviour(t: Transition) -> str:
    kind = t.kind.value
    if t.auto_merge:
        merge = (
            f"gitops-rollout merges this itself on a later pass: the policy lets it merge "
            f"`{kind}` changes. Merge it yourself to go faster."
        )
    elif t.approval:
        merge = "**A human must merge this**: this step of the policy asks for approval."
    else:
        merge = (
            f"**A human must merge this**: `{kind}` is not in the policy's `spec.gitops.autoMerge`."
        )
    return "\n".join(
        [
            "#### What happens next",
            "",
            f"- **Merge**: {merge} Argo CD or Flux then applies it; the next step's clock starts "
            "when it is merged.",
            "- **Close** (without merging): a veto. The rollout pauses and says so, and this "
            "transition is not proposed again until its inputs change (a new candidate, a policy "
            "edit, new evidence).",
            "- **Ignore**: the rollout waits where it is. A newer decision for this model (for "
            "example a rollback) replaces this PR's content in place.",
            "- **Push to this branch**: gitops-rollout stops updating it and reports it; delete "
            "the branch to let gitops-rollout write it again.",
        ]
    )


def _footer(meta: PullMetadata) -> str:
    return "\n".join(
        [
            "---",
            f"<sub>Generated by gitops-rollout {__version__} from `{meta.policy}` "
            f"(decision `{meta.digest}`). The files under `rollout/` are generated: edit the "
            "policy, not them.</sub>",
            "",
            meta.comment(),
        ]
    )


# -- helpers -----------------------------------------------------------------------------------


def _plan_weights(plan: RoutePlan | None) -> dict[str, int] | None:
    if plan is None:
        return None
    if plan.weighted:
        out: dict[str, int] = {}
        for v, w in plan.weighted:
            out[v.key] = out.get(v.key, 0) + w
        return out
    return {plan.primary.key: 100}


def _plan_notes(plan: RoutePlan | None) -> list[str]:
    if plan is None:
        return []
    notes = []
    if plan.matched:
        names = ", ".join(f"`{_text(v.version)}`" for v in plan.matched)
        notes.append(f"Requests matching the policy's match rules go to {names}.")
    if plan.mirror is not None:
        notes.append(
            f"{plan.mirror_percent:g}% of requests are mirrored to `{_text(plan.mirror.version)}` "
            "(responses discarded)."
        )
    if plan.overrides:
        notes.append("Requests with the override header go straight to the version they name.")
    return notes


def _candidate_share(plan: RoutePlan | None) -> int:
    if plan is None or not plan.weighted:
        return 0
    return sum(w for v, w in plan.weighted if v.key != plan.primary.key)


def _label(when: datetime, history: Sequence[tuple[datetime, int]]) -> str:
    same_day = len({t.date() for t, _ in history}) <= 1
    return when.strftime("%H:%M" if same_day else "%m-%d %H:%M")


def _field(obj: object, *names: str) -> Any:
    for name in names:
        value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _value(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    return "n/a" if value is None else str(value)


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return str(value)
    return _text(_value(value))


def _verdict(value: Any) -> str:
    if isinstance(value, bool):
        return "✅ pass" if value else "❌ fail"
    text = _value(value).lower()
    if text in ("pass", "passed", "ok", "advance", "promote"):
        return f"✅ {text}"
    if text in ("fail", "failed", "rollback"):
        return f"❌ {text}"
    return _text(text)


def _percent(value: int | None) -> str:
    return "n/a" if value is None else f"{value}%"


def _delta(value: int) -> str:
    return f"+{value}" if value > 0 else str(value)


def _text(value: str) -> str:
    """Text from manifests or analysis on one line, safe in a table cell; no ``<`` so it
    cannot open HTML or fake our metadata comment."""
    flat = " ".join(str(value).split())
    return flat.replace("|", "\\|").replace("<", "&lt;")


def _longest_backticks(text: str) -> int:
    runs = re.findall(r"`+", text)
    return max((len(r) for r in runs), default=0)


def _join(*sections: str) -> str:
    return "\n\n".join(s for s in sections if s) + "\n"
