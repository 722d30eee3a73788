"""decide(): the next step of one rollout, as a pure function of (policy, counts, now).

The order is ANALYSIS.md's "decision each pass":

1. data gates (no data, missing or stale scrape, warm-up, sample-ratio mismatch) -> HOLD, or the
   policy's noData action once noDataTimeout has passed;
2. any deterioration test fires, or an absolute limit is broken with confidence -> ROLLBACK
   (alpha split across every such test of every candidate);
3. every guardrail proven acceptable (each at alpha, no split: all must pass) and, for A/B/n,
   a proven winner -> PROMOTE on the last step, ADVANCE before it;
4. otherwise ADVANCE before the last step when nothing deteriorated and every guardrail has
   data (the rollback tests keep running at the higher weight), HOLD on the last step; a
   step's minimum duration and minimum request count hold back ADVANCE and PROMOTE;
5. a HOLD at or after the step's deadline is INCONCLUSIVE and becomes the policy's
   onInconclusive action.

The evidence should cover the candidate's whole rollout, not just the current step: the tests
account for changing weights interval by interval, so evidence accumulates across steps (the
current step's start only matters for its deadline, its minimums and the sample-ratio check).
No I/O, no clock: `now` is an argument. Logging and rendering are the caller's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from gitops_rollout.analysis import abn, gates, summary
from gitops_rollout.analysis.guardrails import (
    Guardrail,
    VersionCounts,
    evaluate,
    guardrails_of,
    reward_counts,
    tests_per_candidate,
)
from gitops_rollout.analysis.verdict import (
    Action,
    Check,
    CheckVerdict,
    Comparison,
    Tally,
    Verdict,
    confidence,
)
from gitops_rollout.metrics.evidence import Evidence
from gitops_rollout.policy import Analysis, InconclusiveAction, NoDataAction

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

DEFAULT_EXPLORATION_FLOOR = 0.10
"""Least share each surviving A/B/n arm keeps (the ab strategy's explorationFloor default)."""


def rollback_alpha(analysis: Analysis, candidates: int) -> float:
    """Alpha of each deterioration test: the policy's alpha split over every test of every
    candidate (Bonferroni), so that P(any false rollback) <= alpha."""
    tests = tests_per_candidate(guardrails_of(analysis)) * max(candidates, 1)
    return analysis.alpha / max(tests, 1)


def _judge(
    log_e_fail: float, log_e_pass: float, *, available: bool, alpha_fail: float, alpha_pass: float
) -> CheckVerdict:
    """One test's verdict from its two e-values."""
    if log_e_fail >= math.log(1.0 / alpha_fail):
        return CheckVerdict.FAIL
    if not available:
        return CheckVerdict.NO_DATA
    if log_e_pass >= math.log(1.0 / alpha_pass):
        return CheckVerdict.PASS
    return CheckVerdict.UNDECIDED


@dataclass(frozen=True)
class _Window:
    """Which intervals the tests use."""

    include: BoolArray
    excluded: int


def decide(
    analysis: Analysis,
    evidence: Evidence,
    *,
    baseline: str,
    candidates: Sequence[str],
    weights: Mapping[str, int],
    step_started: datetime,
    now: datetime,
    last_step: bool,
    reward_mode: bool = False,
    min_duration: timedelta = timedelta(0),
    min_requests: int = 0,
    exploration_floor: float = DEFAULT_EXPLORATION_FLOOR,
) -> Verdict:
    """Decide the next step of one rollout.

    ``weights`` are the configured percentages of the current step (baseline and candidates);
    ``min_duration``/``min_requests`` are the current step's minimums (candidate requests since
    ``step_started``); ``exploration_floor`` is the A/B/n strategy's least share per arm.
    """
    if not candidates:
        raise ValueError("decide() needs at least one candidate")
    if reward_mode:
        # An A/B/n arm taken out earlier (weight 0) may no longer be scraped at all.
        candidates = [c for c in candidates if c in evidence.series or weights.get(c, 0) > 0]
        if not candidates:
            return Verdict(
                Action.ROLLBACK,
                (f"No candidate is left; rolling back to {baseline}.",),
                alpha=analysis.alpha,
            )
    versions = [baseline, *candidates]
    # Only versions meant to serve requests must have served some: a baseline at a 100 %
    # step or an eliminated arm is idle by design, and waiting for its data would hold forever.
    routed = [v for v in versions if weights.get(v, 0) > 0]
    gated = routed if weights and routed else versions
    gate = gates.check_data(
        evidence,
        gated,
        step_started=step_started,
        now=now,
        no_data_timeout=analysis.no_data_timeout,
    )
    if gate is not None:
        if gate.timed_out and analysis.no_data is NoDataAction.ROLLBACK:
            return Verdict(
                Action.ROLLBACK,
                (f"No usable metrics: {gate.reason}.", "The policy's noData is rollback."),
                alpha=analysis.alpha,
            )
        return Verdict(
            Action.HOLD,
            (f"Holding: {gate.reason}; missing data is neither a pass nor a failure.",),
            alpha=analysis.alpha,
        )

    window = _window(analysis, evidence, baseline=baseline, candidates=candidates)
    base_series = evidence.series[baseline]
    if not np.any(window.include & (base_series.requests > 0)):
        return Verdict(
            Action.HOLD,
            (
                f"Holding: the candidate is still warming up ({window.excluded} interval(s) "
                "excluded); tests start after the declared warm-up.",
            ),
            excluded_intervals=window.excluded,
            alpha=analysis.alpha,
        )

    srm = _sample_ratio(evidence, versions, weights, step_started=step_started)
    if srm is not None and srm.verdict is CheckVerdict.FAIL:
        return Verdict(
            Action.HOLD,
            (
                "Holding: traffic is not split as configured (sample-ratio mismatch at alpha "
                f"{gates.SRM_ALPHA:g}): {srm.note}. The comparison cannot be trusted until the "
                "routing is fixed.",
            ),
            checks=(srm,),
            excluded_intervals=window.excluded,
            alpha=analysis.alpha,
        )

    guardrails = guardrails_of(analysis)
    alpha_fail = rollback_alpha(analysis, len(candidates))
    base = VersionCounts.from_series(base_series, window.include)
    counts = {c: VersionCounts.from_series(evidence.series[c], window.include) for c in candidates}
    checks: list[Check] = [] if srm is None else [srm]
    for c in candidates:
        checks.extend(_guardrail_checks(guardrails, base, counts[c], c, analysis, alpha_fail))

    context = _Context(
        analysis=analysis,
        evidence=evidence,
        baseline=baseline,
        candidates=tuple(candidates),
        step_started=step_started,
        now=now,
        last_step=last_step,
        min_duration=min_duration,
        min_requests=min_requests,
        include=window.include,
        alpha_fail=alpha_fail,
    )
    if reward_mode:
        verdict = _abn(context, checks, base, counts, weights, exploration_floor)
    else:
        verdict = _canary(context, checks)
    return replace(verdict, excluded_intervals=window.excluded, alpha=analysis.alpha)


@dataclass(frozen=True)
class _Context:
    analysis: Analysis
    evidence: Evidence
    baseline: str
    candidates: tuple[str, ...]
    step_started: datetime
    now: datetime
    last_step: bool
    min_duration: timedelta
    min_requests: int
    include: BoolArray
    alpha_fail: float


def _window(
    analysis: Analysis, evidence: Evidence, *, baseline: str, candidates: Sequence[str]
) -> _Window:
    series = [evidence.series[v] for v in (baseline, *candidates)]
    ok = gates.usable(series)
    start = evidence.boundaries[0]
    starts = np.array([(b - start).total_seconds() for b in evidence.boundaries[:-1]])
    cand_requests = np.stack([np.asarray(evidence.series[c].requests) for c in candidates])
    excluded = gates.warmup_excluded(
        starts,
        cand_requests,
        ok,
        warmup_seconds=analysis.warmup.total_seconds(),
        warmup_requests=float(analysis.warmup_requests),
    )
    return _Window(ok & ~excluded, int(np.count_nonzero(ok & excluded)))


def _sample_ratio(
    evidence: Evidence,
    versions: Sequence[str],
    weights: Mapping[str, int],
    *,
    step_started: datetime,
) -> Check | None:
    """The sample-ratio check over this step's intervals (without those in which a version's
    server restarted); None when fewer than two versions should receive traffic (mirroring,
    or a candidate at 0 %)."""
    shares = gates.current_weights(weights, versions)
    if len(shares) < 2:
        return None
    names = list(shares)
    series = [evidence.series[v] for v in names]
    ok = gates.usable(series)
    in_step = np.array([b >= step_started for b in evidence.boundaries[:-1]])
    use = ok & in_step
    for s in series:
        # A restart loses part of one version's interval, which would look like a skewed split.
        if s.reset.shape == use.shape:
            use &= ~s.reset
    counts = np.array([float(np.sum(np.where(use, s.requests, 0.0))) for s in series])
    expected = np.array([shares[v] for v in names])
    total = float(np.sum(counts))
    if total <= 0:
        return None
    log_e = float(gates.srm_log_evalue(counts, expected))
    failed = log_e >= math.log(1.0 / gates.SRM_ALPHA)
    observed = counts / total
    worst = int(np.argmax(np.abs(observed - expected)))
    note = (
        f"{names[worst]} received {100 * observed[worst]:.1f} % of {total:.0f} requests this "
        f"step, configured {100 * expected[worst]:.0f} %"
    )
    return Check(
        metric="traffic-split",
        version=names[worst],
        comparison=Comparison.TRAFFIC_SPLIT,
        verdict=CheckVerdict.FAIL if failed else CheckVerdict.PASS,
        unit="fraction of requests",
        baseline=float(expected[worst]),
        candidate=float(observed[worst]),
        lower=None,
        upper=None,
        limit=None,
        fail_at=None,
        tally=Tally(int(np.count_nonzero(use)), float(counts[0]), float(total - counts[0])),
        note=note,
    )


def _guardrail_checks(
    guardrails: Sequence[Guardrail],
    base: VersionCounts,
    cand: VersionCounts,
    version: str,
    analysis: Analysis,
    alpha_fail: float,
) -> list[Check]:
    out: list[Check] = []
    for g in guardrails:
        for test in evaluate(g, base, cand):
            verdict = _judge(
                float(test.log_e_fail),
                float(test.log_e_pass),
                available=test.available,
                alpha_fail=alpha_fail,
                alpha_pass=analysis.alpha,
            )
            out.append(
                summary.summarize(
                    g,
                    test,
                    base,
                    cand,
                    version=version,
                    verdict=verdict,
                    alpha_fail=alpha_fail,
                    alpha_pass=analysis.alpha,
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# Canary, progressive, mirror, blue-green: one verdict for all candidates


def _canary(ctx: _Context, checks: list[Check]) -> Verdict:
    guards = [c for c in checks if c.comparison is not Comparison.TRAFFIC_SPLIT]
    failed = [c for c in guards if c.verdict is CheckVerdict.FAIL]
    if failed:
        reasons = [summary.failure(c, baseline=ctx.baseline, alpha=ctx.alpha_fail) for c in failed]
        return Verdict(Action.ROLLBACK, (*reasons, "Rolling back."), tuple(checks))
    passed = all(c.verdict is CheckVerdict.PASS for c in guards)
    blind = [c for c in guards if c.verdict is CheckVerdict.NO_DATA]
    if passed:
        clauses = "; ".join(summary.passing(c) for c in guards)
        proof = f"Every guardrail passed at {confidence(ctx.analysis.alpha)}: {clauses}."
        action = Action.PROMOTE if ctx.last_step else Action.ADVANCE
        return _honour_minimums(ctx, Verdict(action, (proof,), tuple(checks)))
    pending = "; ".join(summary.waiting(c) for c in guards if c.verdict is not CheckVerdict.PASS)
    if not ctx.last_step and not blind:
        return _honour_minimums(
            ctx,
            Verdict(
                Action.ADVANCE,
                (
                    "No guardrail shows a deterioration, so the next step may start; the "
                    "tests keep running at the higher weight.",
                    f"Before promotion: {pending}.",
                ),
                tuple(checks),
            ),
        )
    return _deadline(
        ctx, Verdict(Action.HOLD, (f"Waiting for evidence: {pending}.",), tuple(checks))
    )


def _step_requests(ctx: _Context, version: str) -> float:
    series = ctx.evidence.series[version]
    in_step = np.array([b >= ctx.step_started for b in ctx.evidence.boundaries[:-1]])
    ok = gates.usable([series])
    return float(np.sum(np.where(in_step & ok, series.requests, 0.0)))


def _honour_minimums(ctx: _Context, verdict: Verdict) -> Verdict:
    elapsed = ctx.now - ctx.step_started
    if elapsed < ctx.min_duration:
        left = (ctx.min_duration - elapsed).total_seconds() / 60.0
        reason = f"The step's minimum duration is not reached yet ({left:.0f} min left)."
        return _deadline(
            ctx, replace(verdict, action=Action.HOLD, reasons=(*verdict.reasons, reason))
        )
    short = [c for c in ctx.candidates if _step_requests(ctx, c) < ctx.min_requests]
    if ctx.min_requests and short:
        reason = (
            f"{', '.join(short)} served fewer than the step's minimum of {ctx.min_requests} "
            "requests so far."
        )
        return _deadline(
            ctx, replace(verdict, action=Action.HOLD, reasons=(*verdict.reasons, reason))
        )
    return verdict


def _deadline(ctx: _Context, verdict: Verdict, *, best: str | None = None) -> Verdict:
    """A HOLD at or after the step's deadline becomes the policy's onInconclusive action."""
    deadline = ctx.analysis.deadline
    if verdict.action is not Action.HOLD or deadline is None:
        return verdict
    if ctx.now - ctx.step_started < deadline:
        return verdict
    choice = ctx.analysis.on_inconclusive
    minutes = deadline.total_seconds() / 60.0
    said = (
        f"Inconclusive: the step's deadline of {minutes:.0f} min passed without a verdict; "
        f"the policy's onInconclusive is {choice.value}."
    )
    if choice is InconclusiveAction.ROLLBACK:
        action = Action.ROLLBACK
    elif choice is InconclusiveAction.PROMOTE:
        action = Action.PROMOTE if ctx.last_step else Action.ADVANCE
        if best == ctx.baseline:
            action = Action.ROLLBACK
    else:
        action = Action.HOLD
    winner = verdict.winner if best is None else best
    return replace(
        verdict,
        action=action,
        reasons=(said, *verdict.reasons),
        inconclusive=True,
        winner=winner if action is not Action.HOLD else verdict.winner,
    )


# ---------------------------------------------------------------------------------------------
# A/B/n


def _abn(
    ctx: _Context,
    checks: list[Check],
    base: VersionCounts,
    counts: Mapping[str, VersionCounts],
    weights: Mapping[str, int],
    floor: float,
) -> Verdict:
    analysis = ctx.analysis
    arms = [ctx.baseline, *ctx.candidates]
    reward = analysis.rewards[0] if analysis.rewards else None
    by_arm = {ctx.baseline: base, **counts}
    data = [reward_counts(reward.metric, analysis, by_arm[a]) for a in arms] if reward else []
    guards = [c for c in checks if c.comparison is not Comparison.TRAFFIC_SPLIT]
    failed = {c.version for c in guards if c.verdict is CheckVerdict.FAIL}
    eligible = {
        a
        for a in ctx.candidates
        if all(c.verdict is CheckVerdict.PASS for c in guards if c.version == a)
    } | {ctx.baseline}
    reasons = [
        summary.failure(c, baseline=ctx.baseline, alpha=ctx.alpha_fail)
        for c in guards
        if c.verdict is CheckVerdict.FAIL
    ]
    if reward is None or not data or any(d is None for d in data):
        name = reward.metric if reward else "(none)"
        reasons.append(f"The reward {name} is not in the metrics; no winner can be chosen.")
        if set(ctx.candidates) <= failed:
            return Verdict(Action.ROLLBACK, (*reasons, "Rolling back."), tuple(checks))
        return _deadline(ctx, Verdict(Action.HOLD, tuple(reasons), tuple(checks)))

    numerator = np.stack([d[0] for d in data if d is not None])
    denominator = np.stack([d[1] for d in data if d is not None])
    spread = next(d[2] for d in data if d is not None)
    pw = abn.pairwise(
        numerator,
        denominator,
        alpha=analysis.alpha,
        spread=spread,
        prefer_higher=reward.prefer_higher,
    )
    failed_mask = np.array([a in failed for a in arms])
    better = pw.better(failed_mask)
    alive = abn.survivors(better, failed_mask)
    eligible_mask = np.array([a in eligible for a in arms])
    win = int(abn.winner(better, eligible_mask, failed_mask))
    p_best = abn.probability_best(
        pw.means, pw.std_errors, alive, prefer_higher=reward.prefer_higher
    )
    suggested = abn.allocate(p_best, alive, floor=floor)
    suggestion = {a: int(w) for a, w in zip(arms, suggested, strict=True)}
    checks = [
        *checks,
        *_reward_checks(ctx, reward.metric, arms, pw, alive, win, numerator, denominator),
    ]
    winner = arms[win] if win >= 0 else None
    out = [a for a, alive_ in zip(arms, alive, strict=True) if not alive_]
    if out:
        reasons.append(
            f"Eliminated: {', '.join(out)} (proven worse than another arm or failed a guardrail)."
        )

    if not any(alive[1:]):
        keep = ctx.baseline if alive[0] else None
        reasons.append(f"No candidate is left; rolling back to {ctx.baseline}.")
        return Verdict(Action.ROLLBACK, tuple(reasons), tuple(checks), winner=keep)
    if winner == ctx.baseline:
        reasons.append(
            f"{ctx.baseline} (the baseline) has the best {reward.metric}, proven against every "
            f"candidate at {confidence(analysis.alpha)}; rolling back."
        )
        return Verdict(Action.ROLLBACK, tuple(reasons), tuple(checks), winner=winner)
    if winner is not None:
        reasons.append(
            f"{winner} has the best {reward.metric}, proven against every other arm at "
            f"{confidence(analysis.alpha)}, and passed every guardrail."
        )
        action = Action.PROMOTE if ctx.last_step else Action.ADVANCE
        verdict = Verdict(action, tuple(reasons), tuple(checks), suggestion, winner)
        return _honour_minimums(ctx, verdict)
    leader = max(
        (a for a, alive_ in zip(arms, alive, strict=True) if alive_),
        key=lambda a: suggestion[a],
    )
    reasons.append(
        f"No winner yet; {leader} leads with P(best) {p_best[arms.index(leader)]:.2f}. "
        f"Suggested weights: {', '.join(f'{a} {w} %' for a, w in suggestion.items())}."
    )
    changed = any(suggestion.get(a, 0) != weights.get(a, 0) for a in arms)
    if not ctx.last_step and changed:
        return _honour_minimums(
            ctx, Verdict(Action.ADVANCE, tuple(reasons), tuple(checks), suggestion)
        )
    best = _best_estimate(arms, pw, alive, eligible_mask, prefer_higher=reward.prefer_higher)
    return _deadline(
        ctx, Verdict(Action.HOLD, tuple(reasons), tuple(checks), suggestion), best=best
    )


def _best_estimate(
    arms: Sequence[str],
    pw: abn.Pairwise,
    alive: BoolArray,
    eligible: BoolArray,
    *,
    prefer_higher: bool,
) -> str:
    """The arm a forced choice (onInconclusive: promote) takes: best point estimate among the
    arms still in play that passed their guardrails, else the baseline."""
    score = pw.means if prefer_higher else -pw.means
    ranked = [i for i in np.argsort(-score) if alive[i] and eligible[i]]
    return arms[int(ranked[0])] if ranked else arms[0]


def _reward_checks(
    ctx: _Context,
    metric: str,
    arms: Sequence[str],
    pw: abn.Pairwise,
    alive: BoolArray,
    win: int,
    numerator: FloatArray,
    denominator: FloatArray,
) -> list[Check]:
    out = []
    for i, arm in enumerate(arms):
        if i == 0:
            continue
        if i == win:
            verdict = CheckVerdict.PASS
        elif not alive[i]:
            verdict = CheckVerdict.FAIL
        else:
            verdict = CheckVerdict.UNDECIDED
        diff, radius = float(pw.difference[i, 0]), float(pw.radius[i, 0])
        known = math.isfinite(radius)
        out.append(
            Check(
                metric=metric,
                version=arm,
                comparison=Comparison.REWARD,
                verdict=verdict,
                unit="per unit",
                baseline=float(pw.means[0]),
                candidate=float(pw.means[i]),
                lower=diff - radius if known else None,
                upper=diff + radius if known else None,
                limit=0.0,
                fail_at=0.0,
                tally=Tally(
                    int(np.count_nonzero(ctx.include)),
                    float(np.sum(denominator[0])),
                    float(np.sum(denominator[i])),
                    float(np.sum(numerator[0])),
                    float(np.sum(numerator[i])),
                ),
                note="bounds are on candidate - baseline, oriented so that larger is better; "
                "simultaneous over all pairs",
            )
        )
    return out
