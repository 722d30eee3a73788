"""Command line: the composition root. Flags and environment become Settings; clients are built here.

The command names, flags and exit codes are a stable contract (DESIGN.md): 0 ok, 1 invalid input
(``file:line: path: reason``), 2 runtime failure (Git, host, metrics unreachable). Output is for
humans by default and JSON with ``--json``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from gitops_rollout import __version__, policy
from gitops_rollout.errors import InputError, Problem, RolloutError
from gitops_rollout.tree import DirTree

F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _parse_now(value: str | None) -> datetime:
    if not value:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not ISO 8601; write e.g. 2026-11-22T10:00:00Z", param_hint="--now"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def repo_option(func: F) -> F:
    return click.option(
        "--repo",
        "repo",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("."),
        show_default=True,
        help="The GitOps repository checkout (policies/ and clusters/).",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(func)


def _print_problems(problems: list[Problem]) -> None:
    for problem in problems:
        err.print(str(problem), markup=False)


def _fail(error: RolloutError) -> None:
    err.print(f"error: {error}", markup=False)
    sys.exit(error.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gitops-rollout")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Roll out new versions of ML models safely, through Git pull requests."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@main.command()
def schema() -> None:
    """Print the JSON Schema of RolloutPolicy (for editors and CI)."""
    click.echo(json.dumps(policy.json_schema(), indent=2, sort_keys=True))


@main.command()
@repo_option
@json_option
def validate(repo: Path, as_json: bool) -> None:
    """Lint policies and the manifests they reference; exit 1 on any problem."""
    from gitops_rollout import repository

    view = repository.load(DirTree(repo))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "valid": not view.problems,
                    "policies": len(view.policies.policies) + len(view.held),
                    "problems": [
                        {
                            "file": p.file,
                            "line": p.line,
                            "path": p.path,
                            "reason": p.reason,
                            "fix": p.fix,
                        }
                        for p in view.problems
                    ],
                },
                indent=2,
            )
        )
    else:
        _print_problems(view.problems)
        count = len(view.policies.policies)
        if view.problems:
            err.print(f"{len(view.problems)} problem(s); {count} policies valid", markup=False)
        else:
            out.print(f"{count} policies valid", markup=False)
    sys.exit(1 if view.problems else 0)


def _inventory_option(func: F) -> F:
    return click.option(
        "--inventory",
        "inventory",
        multiple=True,
        help="kubectl-style snapshot with status: FILE (all clusters), CLUSTER=FILE, or a "
        "directory of <cluster>.yaml files. Repeatable.",
    )(func)


def _now_option(func: F) -> F:
    return click.option(
        "--now", "now", default=None, help="The time to decide at (ISO 8601); default: now."
    )(func)


def _metrics_option(func: F) -> F:
    return click.option(
        "--metrics",
        "metrics",
        default=None,
        help="Per-interval metric counts from a YAML file (instead of Prometheus).",
    )(func)


@main.command()
@repo_option
@_inventory_option
@_metrics_option
@_now_option
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write every desired file below this folder.",
)
@json_option
def plan(
    repo: Path,
    inventory: tuple[str, ...],
    metrics: str | None,
    now: str | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Show each rollout's decision and the diff it would make; writes nothing to Git."""
    from gitops_rollout import reconcile

    try:
        result = reconcile.plan_only(
            repo=repo,
            inventory=list(inventory),
            metrics_file=metrics,
            now=_parse_now(now),
        )
    except RolloutError as error:
        _fail(error)
        return
    if output is not None:
        result.write(output)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    else:
        _print_problems(result.problems)
        result.print(out)
    sys.exit(1 if result.problems else 0)


@main.command()
@repo_option
@_inventory_option
@_now_option
@json_option
def status(repo: Path, inventory: tuple[str, ...], now: str | None, as_json: bool) -> None:
    """One row per rollout: cluster, model, phase, weights, reason, PR."""
    from gitops_rollout import reconcile

    try:
        rows = reconcile.status_rows(repo=repo, inventory=list(inventory), now=_parse_now(now))
    except RolloutError as error:
        _fail(error)
        return
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("cluster", "namespace", "model", "phase", "weights", "next", "PR")
    for row in rows:
        table.add_row(
            row["cluster"],
            row["namespace"],
            row["model"],
            row["phase"],
            row["weights"],
            row["next"],
            row["pr"],
        )
    out.print(table)


def run() -> None:
    """Entry point that turns our errors into exit codes instead of tracebacks."""
    try:
        main(standalone_mode=True)
    except InputError as error:
        _print_problems(error.problems)
        sys.exit(1)
    except RolloutError as error:
        _fail(error)
