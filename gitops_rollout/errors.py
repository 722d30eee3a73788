"""The exception hierarchy of gitops-rollout.

Every error a stage raises is a `RolloutError`. The subclasses sort failures by what the caller
should do (house style 13):

- `PolicyError` / `ManifestError`: bad input in the repository. It stalls that policy until the
  file changes; the message names the file, the line, the field and the fix. Exit code 1.
- `InventoryError`, `MetricsError`, `GitWriteError`, `HostError`: I/O against a cluster,
  Prometheus, Git or a Git host. Retried on the next pass. Exit code 2.

Library errors are chained (`raise ... from err`) and never leak past the stage that caught them.
"""

from __future__ import annotations

from dataclasses import dataclass


class RolloutError(Exception):
    """Root of every error gitops-rollout raises on purpose."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one input file, located as precisely as we can.

    Rendered as ``file:line: field.path: reason (fix: how)``, the format editors and CI
    annotations understand.
    """

    file: str
    line: int | None
    path: str
    reason: str
    fix: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        field = f" {self.path}:" if self.path else ""
        fix = f" (fix: {self.fix})" if self.fix else ""
        return f"{where}:{field} {self.reason}{fix}"


class InputError(RolloutError):
    """Bad input in the repository; carries one or more located problems."""

    exit_code = 1

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class PolicyError(InputError):
    """A RolloutPolicy file is invalid."""


class ManifestError(InputError):
    """A model manifest under clusters/ (or an inventory snapshot) is invalid."""


class InventoryError(RolloutError):
    """The live inventory could not be read (cluster unreachable, access denied)."""


class MetricsError(RolloutError):
    """The metrics backend failed (unreachable, rejected a query, malformed answer)."""


class GitWriteError(RolloutError):
    """A Git operation failed (fetch, commit, push)."""


class HostError(RolloutError):
    """The Git host API failed (open, update, merge or read a pull request)."""
