"""GitHub (and GitHub Enterprise Server) pull requests through PyGithub.

Implements `GitHost` for one repository. Mergeability comes from GitHub's ``mergeable`` and
``mergeable_state``, and, when GitHub says "blocked", from the head commit's statuses and check
runs, so that pending checks (auto-merge requested) are told apart from failed ones. Retries
use PyGithub's own `GithubRetry` (which reads GitHub's 403 rate-limit messages), configured
from our `HttpPolicy` and sleeping through it. Pushing the branch is `gitops.repo`'s job.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from types import TracebackType
from typing import Any, Self, cast

import github
import requests
from github import Auth, GithubException, GithubRetry
from github.Issue import Issue
from github.PullRequest import PullRequest as GhPull
from urllib3 import BaseHTTPResponse
from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import MaxRetryError
from urllib3.response import HTTPResponse

from gitops_rollout.errors import HostError
from gitops_rollout.gitops.hosts.auth import (
    StaticToken,
    TokenSource,
    github_app_from_env,
    protect_library_loggers,
    redact,
    token_from_env,
)
from gitops_rollout.gitops.hosts.base import (
    HostCapabilities,
    MergeResult,
    PullRequest,
    PullRequestDraft,
    PullState,
)
from gitops_rollout.gitops.hosts.readiness import Action, Checks, Readiness, judge
from gitops_rollout.gitops.hosts.transport import (
    TRANSIENT_STATUSES,
    USER_AGENT,
    HttpPolicy,
    RateLimited,
    RemoteConfig,
    locate,
    pause,
    raise_if_rate_limited,
    retry_arguments,
    status_hint,
)

log = logging.getLogger(__name__)

ENV_PREFIX = "GITOPS_ROLLOUT_GITHUB"
DEFAULT_API_URL = "https://api.github.com"
READY_STATES = frozenset({"clean", "has_hooks"})
"""mergeable_state values in which GitHub would merge now with nothing missing."""
CHECK_GATED_STATES = frozenset({"blocked", "unstable"})
FAILED_CONCLUSIONS = frozenset(
    {"failure", "cancelled", "timed_out", "action_required", "startup_failure", "stale"}
)


class _GitHubRetry(GithubRetry):
    """PyGithub's retry (403 rate-limit detection) with our backoff, caps and injected sleep."""

    def __init__(self, *, policy: HttpPolicy | None = None, **kwargs: Any) -> None:
        self.policy = policy or HttpPolicy()
        super().__init__(**kwargs)

    @classmethod
    def from_policy(cls, policy: HttpPolicy) -> Self:
        return cls(
            policy=policy,
            secondary_rate_wait=policy.secondary_rate_wait,
            # The cap is ours (`pause`), measured with the injected clock.
            max_rate_limit_wait=None,
            # GithubRetry adds 403 and looks at its body to tell rate limits from refusals.
            **retry_arguments(policy, [*TRANSIENT_STATUSES, 429]),
        )

    def new(self, **kw: Any) -> Self:
        kw["policy"] = self.policy
        return super().new(**kw)

    def get_backoff_time(self) -> float:
        return self.policy.backoff(len(self.history))

    def increment(  # type: ignore[override]
        self,
        method: str | None = None,
        url: str | None = None,
        response: HTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        try:
            return cast(Self, super().increment(method, url, response, error, _pool, _stacktrace))
        except MaxRetryError:
            raise_if_rate_limited(response)
            raise

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        # For a secondary limit GithubRetry replaced get_backoff_time with its own wait.
        pause(self.policy, response, self.get_backoff_time())


class _SourceAuth(Auth.Auth):
    """PyGithub authentication that asks a `TokenSource` on every request (tokens rotate)."""

    def __init__(self, credentials: TokenSource) -> None:
        self._credentials = credentials

    @property
    def token_type(self) -> str:
        return "Bearer"

    @property
    def token(self) -> str:
        return self._credentials.token()

    @property
    def _masked_token(self) -> str:
        return "Bearer ***"


class GitHubHost:
    """Pull requests on one GitHub repository ``owner/name``."""

    git_username = "x-access-token"
    """User name for git over HTTPS with this host's token (works for PATs and app tokens)."""

    def __init__(
        self,
        *,
        repository: str,
        credentials: TokenSource,
        api_url: str = DEFAULT_API_URL,
        policy: HttpPolicy | None = None,
        auto_merge: bool = True,
    ) -> None:
        owner, _, name = repository.partition("/")
        if not owner or not name or "/" in name:
            raise HostError(f"GitHub repository {repository!r} must be written owner/name")
        policy = policy or HttpPolicy()
        protect_library_loggers()
        self.repository = repository
        self.credentials = credentials
        self.auto_merge = auto_merge
        self.capabilities = HostCapabilities(comments=True, auto_merge=auto_merge)
        self._owner = owner
        self.api_url = api_url
        self._github = github.Github(
            base_url=api_url.rstrip("/"),
            auth=_SourceAuth(credentials),
            timeout=max(1, math.ceil(policy.timeout)),
            retry=_GitHubRetry.from_policy(policy),
            per_page=policy.page_size,
            # Reads are not paced; writes are, as GitHub asks.
            seconds_between_requests=None,
            seconds_between_writes=policy.write_interval or None,
            user_agent=USER_AGENT,
            lazy=True,
        )
        self._repo = self._github.get_repo(repository)

    @classmethod
    def from_env(
        cls,
        *,
        repository: str,
        api_url: str = DEFAULT_API_URL,
        environ: Mapping[str, str] | None = None,
        policy: HttpPolicy | None = None,
        auto_merge: bool = True,
    ) -> GitHubHost:
        """Credentials from ``GITOPS_ROLLOUT_GITHUB_APP_*`` (a GitHub App) when set, else from
        ``GITOPS_ROLLOUT_GITHUB_TOKEN`` / ``GITOPS_ROLLOUT_GITHUB_TOKEN_FILE``."""
        environ = os.environ if environ is None else environ
        policy = policy or HttpPolicy()
        credentials: TokenSource | None = github_app_from_env(
            ENV_PREFIX, environ, api_url=api_url, repository=repository, policy=policy
        )
        if credentials is None:
            credentials = token_from_env(ENV_PREFIX, environ)
        return cls(
            repository=repository,
            credentials=credentials,
            api_url=api_url,
            policy=policy,
            auto_merge=auto_merge,
        )

    @classmethod
    def from_config(cls, config: RemoteConfig) -> GitHubHost:
        """The registry's entry: repository from the config or the clone URL, API on
        github.com or the Enterprise server's ``/api/v3``; token from the config, else from the
        environment."""
        repository, api_url = locate(
            config,
            api_of=lambda remote: (
                DEFAULT_API_URL if remote.host == "github.com" else f"https://{remote.host}/api/v3"
            ),
        )
        if config.token is None:
            return cls.from_env(
                repository=repository, api_url=api_url, environ=config.environ, policy=config.http
            )
        return cls(
            repository=repository,
            credentials=StaticToken(config.token, origin="the configured GitHub token"),
            api_url=api_url,
            policy=config.http,
        )

    def __str__(self) -> str:
        return f"github {self.repository}"

    # -- GitHost ------------------------------------------------------------------------------

    def pulls_for_prefix(self, prefix: str, *, base: str) -> list[PullRequest]:
        with self._failures(f"list pull requests of {prefix}*"):
            pulls = self._repo.get_pulls(state="all", base=base, sort="created", direction="desc")
            found = [
                _parse(pr) for pr in pulls if pr.head.ref.startswith(prefix) and self._ours(pr)
            ]
        return sorted(found, key=lambda pull: pull.number, reverse=True)

    def open_or_update(self, draft: PullRequestDraft) -> PullRequest:
        draft = replace(draft, title=redact(draft.title), body=redact(draft.body))
        with self._failures(f"open the pull request for {draft.head}"):
            existing = self._find_open(draft.head)
            if existing is not None:
                return self._update(existing, draft)
            try:
                pr = self._repo.create_pull(
                    base=draft.base, head=draft.head, title=draft.title, body=draft.body
                )
            except GithubException as err:
                if err.status != 422 or "already exists" not in _message(err):
                    raise
                # Another writer opened it between our look and our create: adopt theirs.
                existing = self._find_open(draft.head)
                if existing is None:
                    raise HostError(
                        f"{self}: GitHub says a pull request for {draft.head} exists, "
                        "but none is open from this repository"
                    ) from err
                log.info("%s: adopted pull request #%d for %s", self, existing.number, draft.head)
                return self._update(existing, draft)
            labels = self._add_labels(pr.number, draft.labels, have=())
            self._request_reviewers(pr, draft.reviewers)
            log.info(
                "%s: opened pull request #%d %s -> %s", self, pr.number, draft.head, draft.base
            )
            return replace(_parse(pr), labels=labels)

    def mergeable(self, number: int) -> bool | None:
        with self._failures(f"read pull request #{number}"):
            # A single read: GitHub starts computing it on the first and says null until then.
            return _parse(self._repo.get_pull(number), detailed=True).mergeable

    def comment(self, number: int, body: str) -> None:
        with self._failures(f"comment on pull request #{number}"):
            self._issue(number).create_comment(redact(body))

    def comments(self, number: int) -> list[str]:
        with self._failures(f"read the comments of pull request #{number}"):
            return [c.body or "" for c in self._issue(number).get_comments()]

    def merge(self, number: int, *, message: str) -> MergeResult:
        with self._failures(f"merge pull request #{number}"):
            pr = self._repo.get_pull(number)
            current = _parse(pr, detailed=True)
            if current.state is PullState.MERGED:
                return MergeResult(
                    merged=True, merge_sha=current.merge_sha, reason="already merged"
                )
            verdict = judge(self._readiness(pr, current), auto_merge=self.auto_merge)
            title, _, rest = redact(message).partition("\n")
            if verdict.action is Action.WAIT:
                log.info("%s: not merging #%d: %s", self, number, verdict.reason)
                return MergeResult(merged=False, reason=verdict.reason)
            if verdict.action is Action.QUEUE:
                if pr.auto_merge is None:
                    try:
                        pr.enable_automerge(
                            merge_method="MERGE",
                            commit_headline=title,
                            commit_body=rest.strip(),
                            expected_head_oid=current.head_sha,
                        )
                    except GithubException as err:
                        reason = f"checks pending; GitHub refused auto-merge: {_message(err)}"
                        return MergeResult(merged=False, reason=reason)
                log.info("%s: auto-merge of #%d: %s", self, number, verdict.reason)
                return MergeResult(merged=False, queued=True, reason=verdict.reason)
            try:
                status = pr.merge(
                    commit_title=title,
                    commit_message=rest.strip(),
                    merge_method="merge",
                    # Merge exactly the commit we judged; GitHub answers 409 if the head moved.
                    sha=current.head_sha,
                )
            except GithubException as err:
                if err.status not in (405, 409):
                    raise
                return MergeResult(merged=False, reason=f"GitHub refused: {_message(err)}")
            log.info("%s: merged #%d as %s", self, number, status.sha)
            return MergeResult(merged=True, merge_sha=status.sha)

    def close(self, number: int, *, comment: str = "") -> None:
        with self._failures(f"close pull request #{number}"):
            if comment:
                self._issue(number).create_comment(redact(comment))
            self._repo.get_pull(number).edit(state="closed")
            log.info("%s: closed #%d", self, number)

    # -- helpers ------------------------------------------------------------------------------

    def _ours(self, pr: GhPull) -> bool:
        """From a branch of this repository, not a fork's branch that happens to share the name."""
        return bool(pr.head.label == f"{self._owner}:{pr.head.ref}")

    def _find_open(self, head: str) -> GhPull | None:
        for pr in self._repo.get_pulls(state="open", head=f"{self._owner}:{head}"):
            if pr.head.ref == head and self._ours(pr):
                return pr
        return None

    def _update(self, pr: GhPull, draft: PullRequestDraft) -> PullRequest:
        changed = [
            name
            for name, old, new in (
                ("title", pr.title, draft.title),
                ("body", pr.body or "", draft.body),
                ("base", pr.base.ref, draft.base),
            )
            if old != new
        ]
        if changed:
            queued = pr.auto_merge is not None
            pr.edit(title=draft.title, body=draft.body, base=draft.base)
            log.info("%s: updated #%d (%s)", self, pr.number, ", ".join(changed))
            if queued:
                # The auto-merge was for the previous decision; `merge` queues it again if the
                # new one may be merged (a promotion that replaced a step may not).
                pr.disable_automerge()
                log.info("%s: cancelled the auto-merge of #%d", self, pr.number)
        labels = self._add_labels(pr.number, draft.labels, have=tuple(lb.name for lb in pr.labels))
        return replace(_parse(pr), labels=labels)

    def _add_labels(
        self, number: int, wanted: tuple[str, ...], *, have: tuple[str, ...]
    ) -> tuple[str, ...]:
        """Add the missing labels; never remove one (a human may have added it)."""
        missing = [label for label in wanted if label not in have]
        if missing:
            self._issue(number).add_to_labels(*missing)
        return (*have, *missing)

    def _request_reviewers(self, pr: GhPull, reviewers: tuple[str, ...]) -> None:
        if not reviewers:
            return
        users = [r for r in reviewers if "/" not in r]
        teams = [r.split("/", 1)[1] for r in reviewers if "/" in r]
        try:
            pr.create_review_request(reviewers=users, team_reviewers=teams)
        except GithubException as err:
            if err.status != 422:
                raise
            # The pull request exists; a reviewer GitHub cannot add must not fail the pass.
            log.warning(
                "%s: could not request reviewers %s on #%d: %s",
                self,
                ", ".join(reviewers),
                pr.number,
                _message(err),
            )

    def _issue(self, number: int) -> Issue:
        return self._repo.get_issue(number)

    def _readiness(self, pr: GhPull, current: PullRequest) -> Readiness:
        state = pr.mergeable_state
        detail = f"mergeable_state={state}"
        queued = pr.auto_merge is not None
        if pr.state != "open":
            return Readiness(base=current.base, state=current.state, detail=detail)
        if pr.draft or state == "draft":
            return Readiness(base=current.base, draft=True, detail=detail)
        if pr.mergeable is None or state == "unknown":
            return Readiness(base=current.base, conflicts=None, detail=detail)
        if not pr.mergeable or state == "dirty":
            return Readiness(base=current.base, conflicts=True, detail=detail)
        if state == "behind":
            return Readiness(base=current.base, behind=True, detail=detail)
        if state in READY_STATES:
            return Readiness(base=current.base, checks=Checks.PASSED, queued=queued, detail=detail)
        if state in CHECK_GATED_STATES:
            checks = self._checks(current.head_sha)
            # "blocked" with every check green leaves the required reviews as the blocker.
            approved = not (state == "blocked" and checks in (Checks.PASSED, Checks.NONE))
            return Readiness(
                base=current.base, checks=checks, approved=approved, queued=queued, detail=detail
            )
        return Readiness(base=current.base, blocked_by=state, detail=detail)

    def _checks(self, sha: str) -> Checks:
        """Commit statuses and check runs of `sha`, combined."""
        commit = self._repo.get_commit(sha)
        combined = commit.get_combined_status()
        states: list[Checks] = []
        if combined.total_count:
            states.append(
                {"success": Checks.PASSED, "pending": Checks.PENDING}.get(
                    combined.state, Checks.FAILED
                )
            )
        for run in commit.get_check_runs():
            if run.status != "completed":
                states.append(Checks.PENDING)
            elif run.conclusion in FAILED_CONCLUSIONS:
                states.append(Checks.FAILED)
            else:
                states.append(Checks.PASSED)
        for verdict in (Checks.FAILED, Checks.PENDING, Checks.PASSED):
            if verdict in states:
                return verdict
        return Checks.NONE

    @contextmanager
    def _failures(self, action: str) -> Iterator[None]:
        """Turn every library failure into a HostError naming the action, without secrets."""
        try:
            yield
        except RateLimited as err:
            raise HostError(redact(f"{self}: {action}: {err}")) from err
        except HostError:
            raise
        except GithubException as err:
            hint = status_hint(err.status, credentials=f"{ENV_PREFIX}_TOKEN")
            raise HostError(
                redact(f"{self}: {action}: HTTP {err.status} {_message(err)}; {hint}".rstrip("; "))
            ) from err
        except requests.RequestException as err:
            raise HostError(redact(f"{self}: {action}: cannot reach GitHub: {err}")) from err


def _parse(pr: GhPull, *, detailed: bool = False) -> PullRequest:
    """Our model of a PyGithub pull request. List items lack the merge fields: `detailed` only
    after a single-PR read, or PyGithub would fetch each one."""
    if pr.state == "open":
        state = PullState.OPEN
    elif pr.merged_at is not None:
        state = PullState.MERGED
    else:
        state = PullState.CLOSED
    mergeable: bool | None = None
    checks_passed: bool | None = None
    if detailed and state is PullState.OPEN:
        mergeable = pr.mergeable
        if pr.mergeable_state in READY_STATES:
            checks_passed = True
        elif pr.mergeable_state in CHECK_GATED_STATES:
            checks_passed = False
    return PullRequest(
        number=pr.number,
        head=pr.head.ref,
        base=pr.base.ref,
        title=pr.title,
        body=pr.body or "",
        state=state,
        head_sha=pr.head.sha,
        merge_sha=pr.merge_commit_sha if state is PullState.MERGED else None,
        url=pr.html_url,
        labels=tuple(label.name for label in pr.labels),
        mergeable=mergeable,
        checks_passed=checks_passed,
    )


def _message(err: GithubException) -> str:
    """GitHub's error message and its validation errors, in one line."""
    data = err.data
    if not isinstance(data, dict):
        return str(data or err.message or "")
    parts = [str(data.get("message", ""))]
    for item in data.get("errors") or ():
        if isinstance(item, dict):
            parts.append(str(item.get("message") or item.get("code") or ""))
        else:
            parts.append(str(item))
    return ": ".join(part for part in parts if part)
