"""GitLab merge requests through python-gitlab.

Implements `GitHost` for one project (``group/project`` path or numeric id). Mergeability comes
from ``detailed_merge_status`` and the head pipeline; while a pipeline runs, the merge is queued
with ``merge_when_pipeline_succeeds``. python-gitlab's own retries are switched off: the
session it is given retries per `HttpPolicy` (transport), like the other hosts. Pushing the
branch is `gitops.repo`'s job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import gitlab
import requests
from gitlab.exceptions import GitlabError

from gitops_rollout.errors import HostError
from gitops_rollout.gitops.hosts.auth import (
    StaticToken,
    TokenSource,
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
    USER_AGENT,
    HttpPolicy,
    RateLimited,
    RemoteConfig,
    TokenAuth,
    locate,
    make_session,
    status_hint,
)

log = logging.getLogger(__name__)

ENV_PREFIX = "GITOPS_ROLLOUT_GITLAB"
DEFAULT_API_URL = "https://gitlab.com"
STATES = {
    "opened": PullState.OPEN,
    "locked": PullState.OPEN,
    "merged": PullState.MERGED,
    "closed": PullState.CLOSED,
}
CHECKING = frozenset({"checking", "unchecked", "preparing", "approvals_syncing"})
RUNNING_PIPELINE = frozenset(
    {"created", "waiting_for_resource", "preparing", "pending", "running", "scheduled"}
)
FAILED_PIPELINE = frozenset({"failed", "canceled"})
REFUSED_MERGE = (405, 406, 409, 422)
"""GitLab's answers to a merge it will not do now: not allowed, conflicts, head moved, failed."""


class GitLabHost:
    """Merge requests on one GitLab project."""

    git_username = "oauth2"
    """User name for git over HTTPS with this host's token."""

    def __init__(
        self,
        *,
        project: str,
        credentials: TokenSource,
        api_url: str = DEFAULT_API_URL,
        policy: HttpPolicy | None = None,
        auto_merge: bool = True,
    ) -> None:
        policy = policy or HttpPolicy()
        protect_library_loggers()
        self.project = project
        self.credentials = credentials
        self.auto_merge = auto_merge
        self.capabilities = HostCapabilities(comments=True, auto_merge=auto_merge)
        self.api_url = api_url
        base_url = api_url.rstrip("/").removesuffix("/api/v4")
        # A personal or project access token works as a Bearer token too, which keeps the
        # token in the Authorization header on every host.
        session = make_session(policy, TokenAuth("Bearer", credentials.token))
        self._gitlab = gitlab.Gitlab(
            url=base_url,
            session=session,
            timeout=policy.timeout,
            per_page=min(policy.page_size, 100),
            retry_transient_errors=False,
            keep_base_url=True,
            user_agent=USER_AGENT,
        )
        self._project = self._gitlab.projects.get(project, lazy=True)
        self._mrs = self._project.mergerequests

    @classmethod
    def from_env(
        cls,
        *,
        project: str,
        api_url: str = DEFAULT_API_URL,
        environ: Mapping[str, str] | None = None,
        policy: HttpPolicy | None = None,
        auto_merge: bool = True,
    ) -> GitLabHost:
        """Credentials from ``GITOPS_ROLLOUT_GITLAB_TOKEN`` or ``..._TOKEN_FILE``."""
        environ = os.environ if environ is None else environ
        return cls(
            project=project,
            credentials=token_from_env(ENV_PREFIX, environ),
            api_url=api_url,
            policy=policy,
            auto_merge=auto_merge,
        )

    @classmethod
    def from_config(cls, config: RemoteConfig) -> GitLabHost:
        """The registry's entry: project path from the config or the clone URL, API on the
        same host; token from the config, else from the environment."""
        project, api_url = locate(config, api_of=lambda remote: f"https://{remote.host}")
        if config.token is None:
            return cls.from_env(
                project=project, api_url=api_url, environ=config.environ, policy=config.http
            )
        return cls(
            project=project,
            credentials=StaticToken(config.token, origin="the configured GitLab token"),
            api_url=api_url,
            policy=config.http,
        )

    def __str__(self) -> str:
        return f"gitlab {self.project}"

    # -- GitHost ------------------------------------------------------------------------------

    def pulls_for_prefix(self, prefix: str, *, base: str) -> list[PullRequest]:
        with self._failures(f"list merge requests of {prefix}*"):
            found = [
                _parse(mr.attributes)
                for mr in self._mrs.list(
                    target_branch=base, order_by="created_at", sort="desc", iterator=True
                )
                if str(mr.attributes["source_branch"]).startswith(prefix) and _own(mr.attributes)
            ]
        return sorted(found, key=lambda pull: pull.number, reverse=True)

    def open_or_update(self, draft: PullRequestDraft) -> PullRequest:
        draft = replace(draft, title=redact(draft.title), body=redact(draft.body))
        with self._failures(f"open the merge request for {draft.head}"):
            existing = self._find_open(draft.head)
            if existing is not None:
                return self._update(existing, draft)
            request: dict[str, Any] = {
                "source_branch": draft.head,
                "target_branch": draft.base,
                "title": draft.title,
                "description": draft.body,
            }
            if draft.labels:
                request["labels"] = ",".join(draft.labels)
            reviewer_ids = self._user_ids(draft.reviewers)
            if reviewer_ids:
                request["reviewer_ids"] = reviewer_ids
            try:
                created = self._mrs.create(request)
            except GitlabError as err:
                if err.response_code != 409 or "already exists" not in str(err.error_message):
                    raise
                # Another writer opened it between our look and our create: adopt theirs.
                existing = self._find_open(draft.head)
                if existing is None:
                    raise HostError(
                        f"{self}: GitLab says a merge request for {draft.head} exists, "
                        "but none is open from this project"
                    ) from err
                log.info("%s: adopted merge request !%d for %s", self, existing["iid"], draft.head)
                return self._update(existing, draft)
            pull = _parse(created.attributes)
            log.info(
                "%s: opened merge request !%d %s -> %s", self, pull.number, draft.head, draft.base
            )
            return pull

    def mergeable(self, number: int) -> bool | None:
        with self._failures(f"read merge request !{number}"):
            return _parse(self._mrs.get(number).attributes).mergeable

    def comment(self, number: int, body: str) -> None:
        with self._failures(f"comment on merge request !{number}"):
            self._mrs.get(number, lazy=True).notes.create({"body": redact(body)})

    def comments(self, number: int) -> list[str]:
        with self._failures(f"read the comments of merge request !{number}"):
            notes = self._mrs.get(number, lazy=True).notes.list(
                sort="asc", order_by="created_at", iterator=True
            )
            # System notes ("added 1 commit") are GitLab's, not anyone's comment.
            return [
                str(note.attributes.get("body") or "")
                for note in notes
                if not note.attributes.get("system")
            ]

    def merge(self, number: int, *, message: str) -> MergeResult:
        with self._failures(f"merge merge request !{number}"):
            mr = self._mrs.get(number)
            attrs: Mapping[str, Any] = mr.attributes
            current = _parse(attrs)
            if current.state is PullState.MERGED:
                return MergeResult(
                    merged=True, merge_sha=current.merge_sha, reason="already merged"
                )
            verdict = judge(_readiness(attrs, current), auto_merge=self.auto_merge)
            if verdict.action is Action.WAIT:
                log.info("%s: not merging !%d: %s", self, number, verdict.reason)
                return MergeResult(merged=False, reason=verdict.reason)
            queue = verdict.action is Action.QUEUE
            if queue and attrs.get("merge_when_pipeline_succeeds"):
                return MergeResult(merged=False, queued=True, reason=verdict.reason)
            try:
                answer = mr.merge(
                    merge_commit_message=redact(message),
                    merge_when_pipeline_succeeds=True if queue else None,
                    # Merge exactly the commit we judged; GitLab answers 409 if the head moved.
                    sha=current.head_sha,
                )
            except GitlabError as err:
                if err.response_code not in REFUSED_MERGE:
                    raise
                return MergeResult(merged=False, reason=f"GitLab refused: {err.error_message}")
            result = _parse(answer)
            if result.state is PullState.MERGED:
                log.info("%s: merged !%d as %s", self, number, result.merge_sha)
                return MergeResult(merged=True, merge_sha=result.merge_sha)
            log.info("%s: merge of !%d queued: %s", self, number, verdict.reason)
            return MergeResult(merged=False, queued=True, reason=verdict.reason)

    def close(self, number: int, *, comment: str = "") -> None:
        with self._failures(f"close merge request !{number}"):
            if comment:
                self._mrs.get(number, lazy=True).notes.create({"body": redact(comment)})
            self._mrs.update(number, {"state_event": "close"})
            log.info("%s: closed !%d", self, number)

    # -- helpers ------------------------------------------------------------------------------

    def _find_open(self, head: str) -> Mapping[str, Any] | None:
        for mr in self._mrs.list(state="opened", source_branch=head, iterator=True):
            attrs: Mapping[str, Any] = mr.attributes
            if attrs["source_branch"] == head and _own(attrs):
                return attrs
        return None

    def _update(self, attrs: Mapping[str, Any], draft: PullRequestDraft) -> PullRequest:
        changes: dict[str, str] = {}
        if attrs.get("title") != draft.title:
            changes["title"] = draft.title
        if (attrs.get("description") or "") != draft.body:
            changes["description"] = draft.body
        if attrs.get("target_branch") != draft.base:
            changes["target_branch"] = draft.base
        have = [str(label) for label in attrs.get("labels") or ()]
        # Add the missing labels; never remove one (a human may have added it).
        missing = [label for label in draft.labels if label not in have]
        if missing:
            changes["add_labels"] = ",".join(missing)
        if not changes:
            return _parse(attrs)
        answer = self._mrs.update(attrs["iid"], changes)
        log.info("%s: updated !%d (%s)", self, attrs["iid"], ", ".join(sorted(changes)))
        if attrs.get("merge_when_pipeline_succeeds") and changes.keys() - {"add_labels"}:
            # Queued for the previous decision; `merge` queues it again if the new one may be
            # merged (a promotion that replaced a step may not).
            self._mrs.get(attrs["iid"], lazy=True).cancel_merge_when_pipeline_succeeds()
            log.info("%s: cancelled the merge when pipeline succeeds of !%d", self, attrs["iid"])
            answer = {**answer, "merge_when_pipeline_succeeds": False}
        return _parse(answer)

    def _user_ids(self, usernames: tuple[str, ...]) -> list[int]:
        ids: list[int] = []
        for name in usernames:
            users = self._gitlab.users.list(username=name, iterator=True)
            match = [int(user.attributes["id"]) for user in users]
            if match:
                ids.append(match[0])
            else:
                log.warning("%s: reviewer %s is not a GitLab user; not requested", self, name)
        return ids

    @contextmanager
    def _failures(self, action: str) -> Iterator[None]:
        """Turn every library failure into a HostError naming the action, without secrets."""
        try:
            yield
        except RateLimited as err:
            raise HostError(redact(f"{self}: {action}: {err}")) from err
        except HostError:
            raise
        except GitlabError as err:
            hint = status_hint(err.response_code, credentials=f"{ENV_PREFIX}_TOKEN")
            detail = f"HTTP {err.response_code} {err.error_message}; {hint}".rstrip("; ")
            raise HostError(redact(f"{self}: {action}: {detail}")) from err
        except requests.RequestException as err:
            raise HostError(redact(f"{self}: {action}: cannot reach GitLab: {err}")) from err


def _own(attrs: Mapping[str, Any]) -> bool:
    """From a branch of this project, not a fork's branch that happens to share the name."""
    return bool(attrs.get("source_project_id") == attrs.get("target_project_id"))


def _parse(attrs: Mapping[str, Any]) -> PullRequest:
    """Our model of a GitLab merge request (list item or single read)."""
    state = STATES.get(str(attrs["state"]), PullState.CLOSED)
    merge_sha: str | None = None
    if state is PullState.MERGED:
        # Fast-forward merges have no merge commit: the head itself lands on the base.
        merge_sha = attrs.get("merge_commit_sha") or attrs.get("squash_commit_sha") or attrs["sha"]
    status = attrs.get("detailed_merge_status")
    mergeable: bool | None = None
    checks_passed: bool | None = None
    if state is PullState.OPEN and status and status not in CHECKING:
        mergeable = not (status in ("conflict", "need_rebase") or attrs.get("has_conflicts"))
        checks_passed = status == "mergeable"
    return PullRequest(
        number=int(attrs["iid"]),
        head=str(attrs["source_branch"]),
        base=str(attrs["target_branch"]),
        title=str(attrs["title"]),
        body=str(attrs.get("description") or ""),
        state=state,
        head_sha=str(attrs.get("sha") or ""),
        merge_sha=merge_sha,
        url=str(attrs.get("web_url") or ""),
        labels=tuple(str(label) for label in attrs.get("labels") or ()),
        mergeable=mergeable,
        checks_passed=checks_passed,
    )


def _readiness(attrs: Mapping[str, Any], current: PullRequest) -> Readiness:
    status = str(attrs.get("detailed_merge_status") or "unchecked")
    pipeline = attrs.get("head_pipeline") or {}
    pipeline_status = str(pipeline.get("status") or "") if isinstance(pipeline, dict) else ""
    detail = f"detailed_merge_status={status}"
    base = current.base
    if current.state is not PullState.OPEN:
        return Readiness(base=base, state=current.state, detail=detail)
    if attrs.get("draft") or status == "draft_status":
        return Readiness(base=base, draft=True, detail=detail)
    if status in CHECKING:
        return Readiness(base=base, conflicts=None, detail=detail)
    if status == "conflict" or attrs.get("has_conflicts"):
        return Readiness(base=base, conflicts=True, detail=detail)
    if status == "need_rebase":
        return Readiness(base=base, behind=True, detail=detail)
    if status == "ci_still_running" or pipeline_status in RUNNING_PIPELINE:
        checks = Checks.PENDING
    elif status == "ci_must_pass" or pipeline_status in FAILED_PIPELINE:
        checks = Checks.FAILED
    elif pipeline_status:
        checks = Checks.PASSED
    else:
        checks = Checks.NONE
    known = {"mergeable", "ci_still_running", "ci_must_pass", "not_approved"}
    return Readiness(
        base=base,
        checks=checks,
        approved=status != "not_approved",
        queued=bool(attrs.get("merge_when_pipeline_succeeds")),
        blocked_by="" if status in known else status,
        detail=detail,
    )
