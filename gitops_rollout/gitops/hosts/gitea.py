"""Gitea (and Forgejo) pull requests through the REST API (/api/v1) over requests.

Implements `GitHost` for one repository. No maintained Python client exists, so this module
speaks the documented endpoints directly and parses each answer once into our models. Gitea
reports conflicts in ``mergeable`` and leaves checks to the head commit's combined status;
approvals are enforced by the merge endpoint itself. Labels are sent as ids, so missing ones
are created. Pushing the branch is `gitops.repo`'s job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import requests

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
    HttpPolicy,
    RateLimited,
    RemoteConfig,
    TokenAuth,
    locate,
    make_session,
    status_hint,
)

log = logging.getLogger(__name__)

ENV_PREFIX = "GITOPS_ROLLOUT_GITEA"
MAX_PAGE_SIZE = 50
"""Gitea's default MAX_RESPONSE_ITEMS; larger limits are cut to it."""
NEW_LABEL_COLOR = "#ededed"
COMMIT_STATES = {"success": Checks.PASSED, "pending": Checks.PENDING}


class _Refused(Exception):
    """Gitea answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status} {message}".strip())
        self.status = status
        self.message = message


class GiteaHost:
    """Pull requests on one Gitea repository ``owner/name``."""

    git_username = "gitops-rollout"
    """User name for git over HTTPS; Gitea identifies the user by the token alone."""

    def __init__(
        self,
        *,
        repository: str,
        credentials: TokenSource,
        api_url: str,
        policy: HttpPolicy | None = None,
        auto_merge: bool = True,
    ) -> None:
        owner, _, name = repository.partition("/")
        if not owner or not name or "/" in name:
            raise HostError(f"Gitea repository {repository!r} must be written owner/name")
        self._policy = policy or HttpPolicy()
        protect_library_loggers()
        self.repository = repository
        self.credentials = credentials
        self.auto_merge = auto_merge
        self.capabilities = HostCapabilities(comments=True, auto_merge=auto_merge)
        root = api_url.rstrip("/")
        self.api_url = api_url
        if not root.endswith("/api/v1"):
            root += "/api/v1"
        self._repo_url = f"{root}/repos/{quote(owner, safe='')}/{quote(name, safe='')}"
        self._session = make_session(self._policy, TokenAuth("token", credentials.token))
        self._session.headers["Accept"] = "application/json"
        self._page_size = min(self._policy.page_size, MAX_PAGE_SIZE)

    @classmethod
    def from_env(
        cls,
        *,
        repository: str,
        api_url: str,
        environ: Mapping[str, str] | None = None,
        policy: HttpPolicy | None = None,
        auto_merge: bool = True,
    ) -> GiteaHost:
        """Credentials from ``GITOPS_ROLLOUT_GITEA_TOKEN`` or ``..._TOKEN_FILE``."""
        environ = os.environ if environ is None else environ
        return cls(
            repository=repository,
            credentials=token_from_env(ENV_PREFIX, environ),
            api_url=api_url,
            policy=policy,
            auto_merge=auto_merge,
        )

    @classmethod
    def from_config(cls, config: RemoteConfig) -> GiteaHost:
        """The registry's entry: repository from the config or the clone URL, API on the same
        host (set `api_url` when Gitea is served below a path); token from the config, else the
        environment."""
        repository, api_url = locate(
            config,
            api_of=lambda remote: (
                f"{'http' if remote.scheme == 'http' else 'https'}://{remote.host}"
            ),
        )
        if config.token is None:
            return cls.from_env(
                repository=repository, api_url=api_url, environ=config.environ, policy=config.http
            )
        return cls(
            repository=repository,
            credentials=StaticToken(config.token, origin="the configured Gitea token"),
            api_url=api_url,
            policy=config.http,
        )

    def __str__(self) -> str:
        return f"gitea {self.repository}"

    # -- GitHost ------------------------------------------------------------------------------

    def pulls_for_prefix(self, prefix: str, *, base: str) -> list[PullRequest]:
        with self._failures(f"list pull requests of {prefix}*"):
            found = [
                _parse(item)
                for item in self._pages("/pulls", {"state": "all", "base_branch": base})
                if _ref(item, "head").startswith(prefix)
                and _ref(item, "base") == base
                and _own(item)
            ]
        return sorted(found, key=lambda pull: pull.number, reverse=True)

    def open_or_update(self, draft: PullRequestDraft) -> PullRequest:
        draft = replace(draft, title=redact(draft.title), body=redact(draft.body))
        with self._failures(f"open the pull request for {draft.head}"):
            existing = self._find_open(draft.head)
            if existing is not None:
                return self._update(existing, draft)
            request: dict[str, Any] = {
                "head": draft.head,
                "base": draft.base,
                "title": draft.title,
                "body": draft.body,
            }
            if draft.labels:
                request["labels"] = self._label_ids(draft.labels)
            try:
                created = self._call("POST", "/pulls", json=request).json()
            except _Refused as err:
                if err.status != 409:
                    raise
                # Another writer opened it between our look and our create: adopt theirs.
                existing = self._find_open(draft.head)
                if existing is None:
                    raise HostError(
                        f"{self}: Gitea says a pull request for {draft.head} exists, "
                        "but none is open from this repository"
                    ) from err
                log.info(
                    "%s: adopted pull request #%s for %s", self, existing["number"], draft.head
                )
                return self._update(existing, draft)
            pull = _parse(created)
            self._request_reviewers(pull.number, draft.reviewers)
            log.info(
                "%s: opened pull request #%d %s -> %s", self, pull.number, draft.head, draft.base
            )
            return pull

    def mergeable(self, number: int) -> bool | None:
        with self._failures(f"read pull request #{number}"):
            # Gitea says false while it is still checking too: it cannot answer None.
            return _parse(self._call("GET", f"/pulls/{number}").json()).mergeable

    def comment(self, number: int, body: str) -> None:
        with self._failures(f"comment on pull request #{number}"):
            self._call("POST", f"/issues/{number}/comments", json={"body": redact(body)})

    def comments(self, number: int) -> list[str]:
        with self._failures(f"read the comments of pull request #{number}"):
            return [
                str(item.get("body") or "")
                for item in self._pages(f"/issues/{number}/comments", {})
            ]

    def merge(self, number: int, *, message: str) -> MergeResult:
        with self._failures(f"merge pull request #{number}"):
            data = self._call("GET", f"/pulls/{number}").json()
            current = _parse(data)
            if current.state is PullState.MERGED:
                return MergeResult(
                    merged=True, merge_sha=current.merge_sha, reason="already merged"
                )
            readiness = Readiness(
                base=current.base,
                state=current.state,
                draft=bool(data.get("draft")),
                # Gitea says false both for conflicts and while it is still checking.
                conflicts=not data.get("mergeable"),
                checks=self._checks(current.head_sha)
                if current.state is PullState.OPEN
                else Checks.NONE,
                # Required approvals are enforced by the merge endpoint (405 with the reason).
                approved=None,
                detail=f"mergeable={str(bool(data.get('mergeable'))).lower()}",
            )
            verdict = judge(readiness, auto_merge=self.auto_merge)
            if verdict.action is Action.WAIT:
                log.info("%s: not merging #%d: %s", self, number, verdict.reason)
                return MergeResult(merged=False, reason=verdict.reason)
            title, _, rest = redact(message).partition("\n")
            request: dict[str, Any] = {
                "Do": "merge",
                "MergeTitleField": title,
                "MergeMessageField": rest.strip(),
                # Merge exactly the commit we judged; Gitea answers 409 if the head moved.
                "head_commit_id": current.head_sha,
            }
            if verdict.action is Action.QUEUE:
                request["merge_when_checks_succeed"] = True
            try:
                answer = self._call("POST", f"/pulls/{number}/merge", json=request)
            except _Refused as err:
                if err.status == 409 and "scheduled" in err.message:
                    return MergeResult(merged=False, queued=True, reason=verdict.reason)
                if err.status not in (405, 409):
                    raise
                return MergeResult(merged=False, reason=f"Gitea refused: {err.message}")
            if answer.status_code == 201:
                log.info("%s: merge of #%d scheduled: %s", self, number, verdict.reason)
                return MergeResult(merged=False, queued=True, reason=verdict.reason)
            # The merge answer is empty; the merge commit is on the pull request.
            merged = _parse(self._call("GET", f"/pulls/{number}").json())
            log.info("%s: merged #%d as %s", self, number, merged.merge_sha)
            return MergeResult(merged=True, merge_sha=merged.merge_sha)

    def close(self, number: int, *, comment: str = "") -> None:
        with self._failures(f"close pull request #{number}"):
            if comment:
                self._call("POST", f"/issues/{number}/comments", json={"body": redact(comment)})
            self._call("PATCH", f"/pulls/{number}", json={"state": "closed"})
            log.info("%s: closed #%d", self, number)

    # -- helpers ------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Mapping[str, Any] | None = None,
    ) -> requests.Response:
        response = self._session.request(
            method, self._repo_url + path, params=params, json=json, timeout=self._policy.timeout
        )
        if response.status_code >= 400:
            raise _Refused(response.status_code, _message(response))
        return response

    def _pages(self, path: str, params: Mapping[str, str | int]) -> Iterator[Mapping[str, Any]]:
        page = 1
        while True:
            response = self._call(
                "GET", path, params={**params, "page": page, "limit": self._page_size}
            )
            items = response.json()
            if not isinstance(items, list):
                raise HostError(
                    f"{self}: GET {path}: expected a JSON list, got {type(items).__name__}"
                )
            yield from items
            if not items or "next" not in response.links:
                return
            page += 1

    def _find_open(self, head: str) -> Mapping[str, Any] | None:
        for item in self._pages("/pulls", {"state": "open"}):
            if _ref(item, "head") == head and _own(item):
                return item
        return None

    def _update(self, data: Mapping[str, Any], draft: PullRequestDraft) -> PullRequest:
        number = int(data["number"])
        changes: dict[str, str] = {}
        if data.get("title") != draft.title:
            changes["title"] = draft.title
        if (data.get("body") or "") != draft.body:
            changes["body"] = draft.body
        if _ref(data, "base") != draft.base:
            changes["base"] = draft.base
        if changes:
            data = self._call("PATCH", f"/pulls/{number}", json=changes).json()
            log.info("%s: updated #%d (%s)", self, number, ", ".join(sorted(changes)))
            self._cancel_scheduled_merge(number)
        pull = _parse(data)
        # Add the missing labels; never remove one (a human may have added it).
        missing = tuple(label for label in draft.labels if label not in pull.labels)
        if missing:
            self._call(
                "POST", f"/issues/{number}/labels", json={"labels": self._label_ids(missing)}
            )
            pull = replace(pull, labels=(*pull.labels, *missing))
        return pull

    def _cancel_scheduled_merge(self, number: int) -> None:
        """Cancel a merge scheduled for the pull request's previous content; `merge` schedules
        it again if the new content may be merged. Gitea's pull request does not say whether
        one is scheduled: 404 means none was."""
        try:
            self._call("DELETE", f"/pulls/{number}/merge")
        except _Refused as err:
            if err.status != 404:
                raise
            return
        log.info("%s: cancelled the scheduled merge of #%d", self, number)

    def _label_ids(self, names: tuple[str, ...]) -> list[int]:
        known = {str(label["name"]): int(label["id"]) for label in self._pages("/labels", {})}
        ids = []
        for name in names:
            if name not in known:
                created = self._call(
                    "POST", "/labels", json={"name": name, "color": NEW_LABEL_COLOR}
                ).json()
                known[name] = int(created["id"])
            ids.append(known[name])
        return ids

    def _request_reviewers(self, number: int, reviewers: tuple[str, ...]) -> None:
        if not reviewers:
            return
        users = [r for r in reviewers if "/" not in r]
        teams = [r.split("/", 1)[1] for r in reviewers if "/" in r]
        try:
            self._call(
                "POST",
                f"/pulls/{number}/requested_reviewers",
                json={"reviewers": users, "team_reviewers": teams},
            )
        except _Refused as err:
            if err.status not in (404, 422):
                raise
            # The pull request exists; a reviewer Gitea cannot add must not fail the pass.
            log.warning(
                "%s: could not request reviewers %s on #%d: %s",
                self,
                ", ".join(reviewers),
                number,
                err.message,
            )

    def _checks(self, sha: str) -> Checks:
        combined = self._call("GET", f"/commits/{quote(sha, safe='')}/status").json()
        if not combined.get("total_count") and not combined.get("statuses"):
            return Checks.NONE
        return COMMIT_STATES.get(str(combined.get("state")), Checks.FAILED)

    @contextmanager
    def _failures(self, action: str) -> Iterator[None]:
        """Turn every failure into a HostError naming the action, without secrets."""
        try:
            yield
        except RateLimited as err:
            raise HostError(redact(f"{self}: {action}: {err}")) from err
        except HostError:
            raise
        except _Refused as err:
            hint = status_hint(err.status, credentials=f"{ENV_PREFIX}_TOKEN")
            raise HostError(redact(f"{self}: {action}: {err}; {hint}".rstrip("; "))) from err
        except requests.RequestException as err:
            raise HostError(redact(f"{self}: {action}: cannot reach Gitea: {err}")) from err
        except (KeyError, TypeError, ValueError) as err:
            raise HostError(
                f"{self}: {action}: unexpected answer from Gitea ({type(err).__name__}: {err})"
            ) from err


def _ref(data: Mapping[str, Any], side: str) -> str:
    return str(data[side]["ref"])


def _own(data: Mapping[str, Any]) -> bool:
    """From a branch of this repository, not a fork's branch that happens to share the name."""
    return bool(data["head"].get("repo_id") == data["base"].get("repo_id"))


def _parse(data: Mapping[str, Any]) -> PullRequest:
    """Our model of a Gitea pull request."""
    if data.get("merged"):
        state = PullState.MERGED
    elif data.get("state") == "open":
        state = PullState.OPEN
    else:
        state = PullState.CLOSED
    merge_sha = str(data.get("merge_commit_sha") or "") if state is PullState.MERGED else ""
    return PullRequest(
        number=int(data["number"]),
        head=_ref(data, "head"),
        base=_ref(data, "base"),
        title=str(data.get("title") or ""),
        body=str(data.get("body") or ""),
        state=state,
        head_sha=str(data["head"].get("sha") or ""),
        merge_sha=merge_sha or None,
        url=str(data.get("html_url") or ""),
        labels=tuple(str(label["name"]) for label in data.get("labels") or ()),
        mergeable=bool(data.get("mergeable")) if state is PullState.OPEN else None,
    )


def _message(response: requests.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        return response.reason or ""
    if isinstance(answer, dict) and answer.get("message"):
        return str(answer["message"])
    return response.reason or ""
