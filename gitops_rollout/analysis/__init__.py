"""Analysis: anytime-valid tests on per-interval counts and the pure `decide` function.

The reconciler calls `decide` once per rollout per pass with the policy's analysis section, the
evidence the metrics stage gathered and the current time, and renders the `Verdict` it returns.
The tests stay valid however often they are looked at (e-processes and confidence sequences), so
the error rates the policy's alpha promises hold at every reconcile; ANALYSIS.md summarises
them and research/statistics.md derives them. Modules, in the order the data flows:

- gates: usable intervals, warm-up exclusion, the sample-ratio e-process, the per-pass gate;
- eprocess / confseq / buckets: the statistics (rates, means, histogram edges);
- guardrails: the policy's objectives as tests; abn: rewards and traffic for A/B/n;
- summary: evidence-table rows and sentences; decide: the decision order; verdict: the result.

No module here does I/O or reads the clock.
"""

from gitops_rollout.analysis.verdict import (
    Action,
    Check,
    CheckVerdict,
    Comparison,
    Tally,
    Verdict,
)

__all__ = ["Action", "Check", "CheckVerdict", "Comparison", "Tally", "Verdict"]
