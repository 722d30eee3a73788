"""Command line: the composition root. Flags and environment become Settings; clients built here.

The command names, flags and exit codes are a stable contract (DESIGN.md): 0 ok, 1 invalid input
(``file:line: path: reason``), 2 runtime failure (Git, host, metrics unreachable). Output is for
humans by default and JSON with ``--json``.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from gitops_rollout import __version__
from gitops_rollout.errors import InputError, Problem, RolloutError
from gitops_rollout.tree import DirTree

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])


class _Console:
    """A rich Console made at first use: ``--json`` runs (scripts, CI, the benchmark) never
    need rich, and importing it is a twentieth of a no-op pass."""

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr, highlight=False, soft_wrap=True)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console(), name)


def _table(*columns: str) -> Any:
    from rich.table import Table

    return Table(*columns)


out = _Console()
err = _Console(stderr=True)


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
    from gitops_rollout.gitops.hosts.redaction import RedactingFilter

    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Tokens the hosts use are scrubbed from every record, whichever logger wrote it.
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())


@main.command()
def schema() -> None:
    """Print the JSON Schema of RolloutPolicy (for editors and CI)."""
    from gitops_rollout import policy

    click.echo(json.dumps(policy.json_schema(), indent=2, sort_keys=True))


@main.command()
@repo_option
@click.option(
    "--prometheus",
    default=None,
    metavar="URL",
    help="Also have this Prometheus evaluate every custom query (analysis.metrics).",
)
@json_option
def validate(repo: Path, prometheus: str | None, as_json: bool) -> None:
    """Lint policies and the manifests they reference; exit 1 on any problem."""
    from gitops_rollout import repository
    from gitops_rollout.validation import check_primaries

    tree = DirTree(repo)
    view = repository.load(tree)
    view.problems += check_primaries(view.policies.policies, view.inventory, tree)
    if prometheus:
        from gitops_rollout.metrics.prometheus import PrometheusClient
        from gitops_rollout.validation import check_queries

        try:
            view.problems += check_queries(
                [*view.policies.policies, *view.held],
                view.inventory,
                PrometheusClient(prometheus),
                now=datetime.now(UTC),
            )
        except RolloutError as error:
            _fail(error)
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
    from gitops_rollout import composition
    from gitops_rollout.settings import GitSettings

    _one_shot()
    try:
        result = composition.plan_only(
            repo=repo,
            inventory=list(inventory),
            metrics_file=metrics,
            now=_parse_now(now),
            cache_dir=GitSettings().cache_dir,
        )
        _keep_heap_to_exit()
    except RolloutError as error:
        _fail(error)
        return
    if output is not None:
        result.write(output)
    if as_json:
        click.echo(_json_lines(result.as_json()))
    else:
        _print_problems(result.problems)
        result.print(out)
    sys.exit(1 if result.problems else 0)


@main.command()
@repo_option
@_inventory_option
@_now_option
@json_option
@click.option("--remote", default=None, help="Bare repository of the local host, for PR numbers.")
def status(
    repo: Path, inventory: tuple[str, ...], now: str | None, as_json: bool, remote: str | None
) -> None:
    """One row per rollout: cluster, model, phase, weights, reason, PR."""
    from gitops_rollout import composition
    from gitops_rollout.gitops.repo import origin_url
    from gitops_rollout.settings import GitSettings, env

    origin = None if remote or env("REMOTE") else origin_url(repo)
    if origin is not None and "://" not in origin and not Path(origin, "objects").is_dir():
        # The checkout was cloned from another checkout, not from the local host's bare
        # repository: there are no pull request numbers to show (as for a forge's URL).
        origin = None
    try:
        rows = composition.status_rows(
            repo=repo,
            inventory=list(inventory),
            now=_parse_now(now),
            cache_dir=GitSettings().cache_dir,
            remote=remote or env("REMOTE") or origin,
        )
    except RolloutError as error:
        _fail(error)
        return
    if as_json:
        click.echo(_json_lines(rows))
        return
    table = _table("cluster", "namespace", "model", "phase", "weights", "next", "PR")
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


# -- passes that write -----------------------------------------------------------------------


def _remote_of(repo: Path, remote: str | None) -> str:
    """The remote to act on: --remote, $GITOPS_ROLLOUT_REMOTE, or the checkout's origin."""
    from gitops_rollout.gitops.repo import origin_url
    from gitops_rollout.settings import env

    chosen = remote or env("REMOTE")
    if chosen:
        return chosen
    found = origin_url(repo)
    if found is None:
        raise click.UsageError(
            f"{repo} has no 'origin' remote; pass --remote (a URL, or a bare repository path for "
            "--host local)"
        )
    return found


def _settings(
    *,
    repo: Path,
    remote: str | None,
    host: str,
    base: str,
    cache_dir: Path | None,
    api_url: str | None = None,
    repository: str | None = None,
) -> Any:
    from gitops_rollout.settings import GitSettings, HostSettings, Settings

    git = GitSettings(remote=_remote_of(repo, remote), base=base)
    if cache_dir is not None:
        git = GitSettings(remote=git.remote, base=base, cache_dir=cache_dir)
    hosting = HostSettings(kind=host, url=api_url or "", repository=repository or "")
    return Settings(repo=repo, git=git, host=hosting)


def pass_options(func: F) -> F:
    for option in reversed(
        [
            repo_option,
            click.option(
                "--remote",
                default=None,
                help="The GitOps repository's remote (URL or bare repo path).",
            ),
            click.option(
                "--host",
                type=click.Choice(["local", "github", "gitlab", "gitea"]),
                default=lambda: __import__("os").environ.get("GITOPS_ROLLOUT_HOST", "local"),
                show_default="local",
                help="Where pull requests live ($GITOPS_ROLLOUT_HOST). Tokens: "
                "$GITOPS_ROLLOUT_<HOST>_TOKEN or _TOKEN_FILE (GitHub: or a GitHub App).",
            ),
            click.option(
                "--api-url",
                envvar="GITOPS_ROLLOUT_API_URL",
                default=None,
                help="API base URL of a self-hosted GitHub Enterprise, GitLab or Gitea "
                "($GITOPS_ROLLOUT_API_URL); default: derived from --remote.",
            ),
            click.option(
                "--repository",
                envvar="GITOPS_ROLLOUT_REPOSITORY",
                default=None,
                help="owner/name (GitLab: group/project) on the host "
                "($GITOPS_ROLLOUT_REPOSITORY); default: the path of --remote.",
            ),
            click.option(
                "--base", default="main", show_default=True, help="Branch Argo CD/Flux sync."
            ),
            click.option(
                "--cache-dir",
                type=click.Path(file_okay=False, path_type=Path),
                default=None,
                help="Where the bot keeps its clone (default ~/.cache/gitops-rollout).",
            ),
            _inventory_option,
            _metrics_option,
            click.option("--prometheus", default=None, help="Prometheus base URL for analysis."),
            _now_option,
            click.option("--cluster", "clusters", multiple=True, help="Only these clusters."),
            json_option,
        ]
    ):
        func = option(func)
    return func


def _one_shot() -> None:
    """A command that runs one pass and exits: no cyclic garbage collection at all (reference
    counting frees the rest). The pass pauses the collector itself (`reconcile`), but turning
    it back on afterwards ran a full collection over the pass's heap, 0.3-0.8 s at 10,000
    models, to free nothing the exit would not. (The daemon runs many passes and collects.)"""
    gc.disable()


def _keep_heap_to_exit() -> None:
    """After the pass of a one-shot command: the collection the interpreter runs at exit
    skips what the pass left (`gc.freeze`)."""
    gc.freeze()


def _run_pass(
    *,
    repo: Path,
    remote: str | None,
    host: str,
    base: str,
    cache_dir: Path | None,
    inventory: tuple[str, ...],
    metrics: str | None,
    prometheus: str | None,
    now: str | None,
    clusters: tuple[str, ...],
    as_json: bool,
    api_url: str | None = None,
    repository: str | None = None,
    policies: frozenset[str] | None = None,
    commands: dict[tuple[str, str], Any] | None = None,
    command: tuple[str, Any] | None = None,
) -> None:
    """One pass; `command` is an operator's (policy name, Command) for the policy's clusters
    (or --cluster), looked up on the base branch of the remote the pass acts on."""
    from gitops_rollout import composition

    _one_shot()

    settings = _settings(
        repo=repo,
        remote=remote,
        host=host,
        base=base,
        cache_dir=cache_dir,
        api_url=api_url,
        repository=repository,
    )
    when = _parse_now(now)
    try:
        with composition.pass_context(
            settings,
            inventory=list(inventory),
            metrics_file=metrics,
            prometheus=prometheus,
            now=when,
        ) as ctx:
            # The planning stages are imported while git fetches (`pass_context`).
            from gitops_rollout import reconcile

            commands = dict(commands or {})
            if command is not None:
                policy_name, action = command
                ctx.workspace.fetch()
                for c in _clusters_of(ctx.workspace.tree(), policy_name, clusters):
                    commands[(policy_name, c)] = action
            report = reconcile.run_once(
                workspace=ctx.workspace,
                host=ctx.host,
                options=reconcile.PassOptions(
                    now=when,
                    commands=commands,
                    policies=policies,
                    clusters=frozenset(clusters) if clusters else None,
                ),
                inventory=ctx.inventory,
                judge=ctx.judge,
            )
            _keep_heap_to_exit()
    except RolloutError as error:
        _fail(error)
        return
    _print_report(report, as_json=as_json)
    if report.errors:
        sys.exit(2)
    if report.problems:
        sys.exit(1)


def _json_lines(document: Mapping[str, Any] | Sequence[Any]) -> str:
    """`document` as JSON with one item of each top-level list per line: readable, diffable,
    and written by json's C encoder (``indent=`` takes the pure-Python one: 0.2 s for the
    report of a 10,000-rollout pass)."""

    def items(values: Sequence[Any], pad: str) -> str:
        if not values:
            return "[]"
        rows = ",\n".join(f"{pad}  {json.dumps(v)}" for v in values)
        return f"[\n{rows}\n{pad}]"

    if not isinstance(document, Mapping):
        return items(document, "")
    fields = ",\n".join(
        f"  {json.dumps(key)}: "
        + (items(value, "  ") if isinstance(value, list) else json.dumps(value))
        for key, value in document.items()
    )
    return f"{{\n{fields}\n}}"


def _print_report(report: Any, *, as_json: bool) -> None:
    if as_json:
        click.echo(
            _json_lines(
                {
                    "decisions": [d.as_json() for d in report.decisions],
                    "problems": [str(p) for p in report.problems],
                    "errors": report.errors,
                }
            )
        )
        return
    _print_problems(report.problems)
    for stage, messages in report.errors.items():
        for message in messages:
            err.print(f"error ({stage}): {message}", markup=False)
    table = _table("cluster", "model", "decision", "PR", "outcome", "why")
    for d in report.decisions:
        table.add_row(
            d.cluster,
            d.model,
            f"{d.action}: {d.title}",
            f"#{d.pr}" if d.pr else "",
            d.outcome,
            d.reason,
        )
    out.print(table)


@main.command()
@pass_options
def reconcile(**kwargs: Any) -> None:
    """One pass: decide every rollout and open, update or merge its pull request."""
    _run_pass(**kwargs)


def _operator(command_name: str) -> Callable[..., None]:
    def action(policy_name: str, **kwargs: Any) -> None:
        from gitops_rollout.transitions import Command

        _run_pass(
            **kwargs,
            policies=frozenset({policy_name}),
            command=(policy_name, Command(command_name)),
        )

    action.__doc__ = {
        "promote": "Open a PR promoting POLICY's candidate now, skipping remaining steps.",
        "abort": "Open a PR rolling POLICY back to its primary now.",
        "pause": "Open a PR pausing POLICY: no further steps until resumed.",
        "resume": "Open a PR resuming POLICY (also rewrites hand-edited generated files).",
    }[command_name]
    return action


def _clusters_of(tree: Any, policy_name: str, clusters: tuple[str, ...]) -> list[str]:
    """The clusters an operator command applies to: --cluster, checked against the policy as
    the remote's base branch has it (not a local checkout, which may be stale or absent)."""
    from gitops_rollout import repository

    policies, _ = repository.load_policies(tree, repository.Caches())
    for loaded in policies.policies:
        if loaded.policy.name == policy_name:
            names = [c.name for c in loaded.policy.spec.clusters]
            unknown = sorted(set(clusters) - set(names))
            if unknown:
                raise click.UsageError(
                    f"policy {policy_name} has no cluster {', '.join(unknown)} "
                    f"(it has {', '.join(names)})"
                )
            return list(clusters) or names
    raise click.UsageError(f"no valid policy named {policy_name!r} in policies/ on the remote")


for _name in ("promote", "abort", "pause", "resume"):
    main.command(name=_name)(
        pass_options(click.argument("policy_name", metavar="POLICY")(_operator(_name)))
    )


@main.group()
def pr() -> None:
    """Pull requests on the local host (a bare repository on disk)."""


def _local_host(repo: Path, remote: str | None) -> Any:
    from gitops_rollout.gitops.hosts.local import LocalHost

    return LocalHost(Path(_remote_of(repo, remote).removeprefix("file://")), user="human")


def _pr_options(func: F) -> F:
    func = click.option(
        "--remote", default=None, help="The bare repository (default: origin of --repo)."
    )(func)
    return repo_option(func)


@pr.command(name="list")
@_pr_options
@json_option
@click.option(
    "--state",
    type=click.Choice(["open", "merged", "closed", "all"]),
    default="open",
    show_default=True,
)
def pr_list(repo: Path, remote: str | None, as_json: bool, state: str) -> None:
    """List pull requests."""
    from gitops_rollout.gitops.hosts.base import PullState

    host = _local_host(repo, remote)
    records = host.list_pulls(state=None if state == "all" else PullState(state))
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2, default=str))
        return
    table = _table("#", "state", "title", "branch")
    for r in records:
        table.add_row(str(r.number), r.state.value, r.title, r.head)
    out.print(table)


@pr.command(name="show")
@_pr_options
@click.argument("number", type=int)
def pr_show(repo: Path, remote: str | None, number: int) -> None:
    """Show one pull request: title, state, body and files."""
    host = _local_host(repo, remote)
    record = host.show(number)
    out.print(f"#{record.number} [{record.state.value}] {record.title}", markup=False)
    out.print(f"{record.head} -> {record.base}", markup=False)
    out.print(host.diffstat(number), markup=False)
    out.print(record.body, markup=False)
    for comment in record.comments:
        out.print(f"\n--- {comment.author}: {comment.body}", markup=False)


@pr.command(name="merge")
@_pr_options
@click.argument("number", type=int)
def pr_merge(repo: Path, remote: str | None, number: int) -> None:
    """Merge a pull request (as a human reviewer)."""
    host = _local_host(repo, remote)
    record = host.show(number)
    result = host.merge(number, message=f"{record.title} (#{number})")
    if not result.merged:
        err.print(f"#{number} not merged: {result.reason}", markup=False)
        sys.exit(1)
    out.print(f"#{number} merged as {result.merge_sha}", markup=False)


@pr.command(name="close")
@_pr_options
@click.argument("number", type=int)
@click.option("--comment", default="", help="Why (recorded on the pull request).")
def pr_close(repo: Path, remote: str | None, number: int, comment: str) -> None:
    """Close a pull request without merging: a veto that pauses the rollout."""
    host = _local_host(repo, remote)
    host.close(number, comment=comment)
    out.print(f"#{number} closed", markup=False)


@main.command()
@click.option(
    "--example",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="The example GitOps repository (default: the one bundled with this project).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".demo"),
    show_default=True,
    help="Where the demo puts its bare remote, caches and snapshots (recreated).",
)
def demo(example: Path | None, workdir: Path) -> None:
    """Run the example's five scenarios through every pull request on a local remote."""
    from gitops_rollout import demo as demo_module

    root = example or Path(__file__).resolve().parents[1]
    if not (root / "policies").is_dir() or not (root / "clusters").is_dir():
        raise click.UsageError(
            f"{root} has no policies/ and clusters/; pass --example with the example repository"
        )
    ok = demo_module.run(root, workdir.resolve(), console=out.console())
    remote = workdir.resolve() / "remote.git"
    out.print(f"\nInspect it: gitops-rollout pr list --state all --remote {remote}")
    sys.exit(0 if ok else 2)


# -- the daemon (`run`) --------------------------------------------------------------------------
# Everything below belongs to `gitops-rollout run`; gitops_rollout.daemon builds what it runs.


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, str]:
    """``CLUSTER=VALUE`` flags as a dict (the last one for a cluster wins)."""
    out: dict[str, str] = {}
    for value in values:
        cluster, sep, rest = value.partition("=")
        if not sep or not cluster.strip() or not rest.strip():
            raise click.BadParameter(f"{value!r} is not CLUSTER=VALUE", param_hint=flag)
        out[cluster.strip()] = rest.strip()
    return out


def _sync_refs(values: tuple[str, ...], flag: str) -> dict[str, Any]:
    from gitops_rollout.daemon import ObjectName

    out: dict[str, Any] = {}
    for cluster, text in _pairs(values, flag).items():
        try:
            out[cluster] = ObjectName.parse(text)
        except ValueError as error:
            raise click.BadParameter(
                f"{cluster}={text}: {error}; write CLUSTER=NAMESPACE/NAME", param_hint=flag
            ) from None
    return out


def _seconds(name: str) -> Any:
    return click.FloatRange(min=0.0, min_open=name in ("--interval", "--reload-interval"))


@main.command(name="run")
@repo_option
@click.option(
    "--remote",
    default=None,
    help="The GitOps repository's remote (URL or bare repo path; $GITOPS_ROLLOUT_REMOTE).",
)
@click.option(
    "--host",
    type=click.Choice(["local", "github", "gitlab", "gitea"]),
    default=lambda: __import__("os").environ.get("GITOPS_ROLLOUT_HOST", "local"),
    show_default="local",
    help="Where pull requests live ($GITOPS_ROLLOUT_HOST). Tokens: "
    "$GITOPS_ROLLOUT_<HOST>_TOKEN or _TOKEN_FILE (GitHub: or a GitHub App).",
)
@click.option(
    "--api-url",
    envvar="GITOPS_ROLLOUT_API_URL",
    default=None,
    help="API base URL of a self-hosted forge ($GITOPS_ROLLOUT_API_URL).",
)
@click.option(
    "--repository",
    envvar="GITOPS_ROLLOUT_REPOSITORY",
    default=None,
    help="owner/name (GitLab: group/project) on the host ($GITOPS_ROLLOUT_REPOSITORY).",
)
@click.option("--base", default="main", show_default=True, help="Branch Argo CD/Flux sync.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the bot keeps its clone (default ~/.cache/gitops-rollout).",
)
@_inventory_option
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Kubeconfig of the live clusters (default: $KUBECONFIG or ~/.kube/config).",
)
@click.option(
    "--context",
    "contexts",
    multiple=True,
    metavar="CLUSTER=CONTEXT",
    help="Kubeconfig context of a cluster (default: the context named like the cluster). "
    "Repeatable.",
)
@click.option(
    "--in-cluster",
    is_flag=True,
    help="Read the cluster this pod runs in (named by --cluster) with its ServiceAccount.",
)
@click.option(
    "--cluster",
    "clusters",
    multiple=True,
    envvar="GITOPS_ROLLOUT_CLUSTER",
    help="Only these clusters ($GITOPS_ROLLOUT_CLUSTER); with --in-cluster, the one it runs in.",
)
@_metrics_option
@click.option(
    "--prometheus",
    envvar="GITOPS_ROLLOUT_PROMETHEUS",
    default=None,
    help="Prometheus base URL for analysis ($GITOPS_ROLLOUT_PROMETHEUS).",
)
@click.option(
    "--argocd-app",
    "argocd_apps",
    multiple=True,
    metavar="CLUSTER=NAMESPACE/NAME",
    help="The Argo CD Application syncing a cluster: a step's clock starts when it applied "
    "the step's commit. Repeatable.",
)
@click.option(
    "--flux-kustomization",
    "flux_kustomizations",
    multiple=True,
    metavar="CLUSTER=NAMESPACE/NAME",
    help="The Flux Kustomization syncing a cluster (as --argocd-app). Repeatable.",
)
@click.option(
    "--sync-context",
    default=None,
    help="Kubeconfig context of the cluster where Argo CD / Flux run (hub and spoke); "
    "default: each cluster's own.",
)
@click.option(
    "--sync-from-routing/--no-sync-from-routing",
    default=True,
    show_default=True,
    help="With live clusters: a step's change is applied once the live routing object carries "
    "its Git file's content hash.",
)
@click.option(
    "--listen",
    envvar="GITOPS_ROLLOUT_LISTEN",
    default=None,
    help="host:port of /healthz, /readyz and /metrics ($GITOPS_ROLLOUT_LISTEN; default "
    "127.0.0.1:9090; empty: serve nothing).",
)
@click.option(
    "--interval",
    type=_seconds("--interval"),
    default=60.0,
    show_default=True,
    help="Seconds between passes of a policy without analysis.interval.",
)
@click.option(
    "--jitter",
    type=_seconds("--jitter"),
    default=5.0,
    show_default=True,
    help="Largest random delay of a pass, seconds.",
)
@click.option(
    "--reload-interval",
    type=_seconds("--reload-interval"),
    default=30.0,
    show_default=True,
    help="Seconds between re-reads of the policy set from the main branch.",
)
@click.option(
    "--grace",
    type=_seconds("--grace"),
    default=30.0,
    show_default=True,
    help="On SIGTERM, seconds running passes may take to finish (below the pod's "
    "terminationGracePeriodSeconds).",
)
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    default=None,
    help="How many replicas share the policies (default $GITOPS_ROLLOUT_SHARDS, else 1).",
)
@click.option(
    "--shard",
    type=click.IntRange(min=0),
    default=None,
    help="This replica's shard (default $GITOPS_ROLLOUT_SHARD, else the pod name ordinal).",
)
@click.option(
    "--no-leases",
    is_flag=True,
    help="Do not guard the shard with a Kubernetes Lease (only for a single replica).",
)
@click.option(
    "--lease-namespace",
    envvar=["GITOPS_ROLLOUT_LEASE_NAMESPACE", "POD_NAMESPACE"],
    default="gitops-system",
    show_default=True,
    help="Namespace of the shard Leases ($GITOPS_ROLLOUT_LEASE_NAMESPACE or $POD_NAMESPACE).",
)
@click.option(
    "--lease-context",
    default=None,
    help="Kubeconfig context of the cluster holding the Leases (default: the current one).",
)
def run_command(
    repo: Path,
    remote: str | None,
    host: str,
    api_url: str | None,
    repository: str | None,
    base: str,
    cache_dir: Path | None,
    inventory: tuple[str, ...],
    kubeconfig: Path | None,
    contexts: tuple[str, ...],
    in_cluster: bool,
    clusters: tuple[str, ...],
    metrics: str | None,
    prometheus: str | None,
    argocd_apps: tuple[str, ...],
    flux_kustomizations: tuple[str, ...],
    sync_context: str | None,
    sync_from_routing: bool,
    listen: str | None,
    interval: float,
    jitter: float,
    reload_interval: float,
    grace: float,
    shards: int | None,
    shard: int | None,
    no_leases: bool,
    lease_namespace: str,
    lease_context: str | None,
) -> None:
    """The scheduled daemon: every policy at its interval, until SIGTERM.

    Serves /healthz, /readyz and /metrics. Exit 0 after a clean stop, 1 for bad flags or
    environment, 2 when it could not start or a pass had to be abandoned on shutdown.
    """
    import os
    from datetime import timedelta

    from gitops_rollout import daemon
    from gitops_rollout.lease import SHARD_ENV, SHARDS_ENV, LeaseSettings, ShardAssignment
    from gitops_rollout.observability import DEFAULT_LISTEN
    from gitops_rollout.schedule import DaemonSettings
    from gitops_rollout.settings import GitSettings, HostSettings, ScheduleSettings, Settings

    # A daemon reports every decision: INFO unless -v asked for more. The scheduler's per-job
    # lines and urllib3's per-retry warnings stay quiet (the inventory reports an unreachable
    # cluster once, with the reason) unless -vv.
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    if root.level > logging.DEBUG:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        logging.getLogger("urllib3").setLevel(logging.ERROR)

    git = GitSettings(remote=_remote_of(repo, remote), base=base)
    if cache_dir is not None:
        git = GitSettings(remote=git.remote, base=base, cache_dir=cache_dir)
    settings = Settings(
        repo=repo,
        git=git,
        host=HostSettings(kind=host, url=api_url or "", repository=repository or ""),
        schedule=ScheduleSettings(
            interval_s=interval,
            jitter_s=jitter,
            listen=DEFAULT_LISTEN if listen is None else listen,
        ),
    )
    environ = dict(os.environ)
    if shards is not None:
        environ[SHARDS_ENV] = str(shards)
    if shard is not None:
        environ[SHARD_ENV] = str(shard)
    try:
        config = daemon.DaemonConfig(
            settings=settings,
            inventory_files=inventory,
            kubeconfig=kubeconfig,
            contexts=_pairs(contexts, "--context"),
            in_cluster=in_cluster,
            clusters=frozenset(clusters) if clusters else None,
            metrics_file=metrics,
            prometheus=prometheus,
            argocd_apps=_sync_refs(argocd_apps, "--argocd-app"),
            flux_kustomizations=_sync_refs(flux_kustomizations, "--flux-kustomization"),
            sync_context=sync_context,
            sync_from_routing=sync_from_routing,
            leases=not no_leases,
            lease=LeaseSettings(namespace=lease_namespace),
            lease_context=lease_context,
            shards=ShardAssignment.from_env(environ),
            schedule=DaemonSettings.from_settings(
                settings.schedule,
                reload_interval=timedelta(seconds=reload_interval),
                grace=timedelta(seconds=grace),
            ),
        )
        clean = daemon.serve(config)
    except RolloutError as error:
        _fail(error)
        return
    if not clean:
        # A pass thread is still running after the grace period: leave without waiting for it
        # (passes are crash-safe; the next start picks up from Git).
        logging.shutdown()
        os._exit(2)
    sys.exit(0)
