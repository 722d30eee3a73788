"""A fake GitHub REST (and a sliver of GraphQL) API for the endpoints the GitHub host uses.

Shapes follow GitHub's REST docs: pull objects with head/base/labels/auto_merge, list
pagination through Link headers, 422 "Validation Failed" with an errors list, 405/409 on merge,
combined commit status and check runs, and POST /app/installations/{id}/access_tokens, which
checks the app's RS256 JWT.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jwt

from .fake_pulls import FakePull, PullStore
from .fake_server import FakeServer, Reply, Request

OWNER, NAME = "acme", "gitops"
REPO = f"/repos/{OWNER}/{NAME}"
DOCS = "https://docs.github.com/rest"


class FakeGitHub(FakeServer):
    auth_schemes = ("Bearer", "token")

    def __init__(self, *, tokens: set[str]) -> None:
        super().__init__(tokens=tokens)
        self.store = PullStore()
        self.allow_auto_merge = True
        self.unknown_reviewers: set[str] = set()
        self.app_public_key: str | None = None
        self.app_tokens_minted: list[dict[str, Any]] = []
        self.app_token_lifetime = 3600
        self.clock: Callable[[], float] = time.time
        """GitHub's clock, against which app JWTs are checked."""
        n = r"(\d+)"
        self.route("GET", f"{REPO}/pulls", self._list)
        self.route("POST", f"{REPO}/pulls", self._create)
        self.route("GET", f"{REPO}/pulls/{n}", lambda r, m: self._get(m))
        self.route("PATCH", f"{REPO}/pulls/{n}", self._edit)
        self.route("PUT", f"{REPO}/pulls/{n}/merge", self._merge)
        self.route("POST", f"{REPO}/pulls/{n}/requested_reviewers", self._reviewers)
        self.route("POST", f"{REPO}/issues/{n}/labels", self._labels)
        self.route("POST", f"{REPO}/issues/{n}/comments", self._comment)
        self.route("GET", f"{REPO}/issues/{n}/comments", self._comments)
        self.route("GET", f"{REPO}/commits/([0-9a-f]+)/status", self._status)
        self.route("GET", f"{REPO}/commits/([0-9a-f]+)/check-runs", self._check_runs)
        self.route("POST", "/graphql", self._graphql)
        self.route("POST", r"/app/installations/(\d+)/access_tokens", self._mint)

    def refresh(self) -> None:
        self.store.sync()

    def unauthorized(self) -> Reply:
        return Reply(401, {"message": "Bad credentials", "documentation_url": DOCS})

    def authorized(self, request: Request) -> bool:
        if request.path.startswith("/app/"):
            return True  # checked by _mint against the app's key
        return super().authorized(request)

    # -- JSON -----------------------------------------------------------------------------

    def _ref(self, pull: FakePull, side: str) -> dict[str, Any]:
        owner = "mallory" if pull.fork and side == "head" else OWNER
        ref = pull.head if side == "head" else pull.base
        repo = {"id": 2 if owner != OWNER else 1, "name": NAME, "full_name": f"{owner}/{NAME}"}
        return {
            "label": f"{owner}:{ref}",
            "ref": ref,
            "sha": pull.head_sha if side == "head" else "0" * 40,
            "user": {"login": owner, "id": 1, "type": "Organization"},
            "repo": repo,
        }

    def _mergeable_state(self, pull: FakePull) -> str:
        reason = pull.blocked()
        return {
            "": "clean",
            "draft": "draft",
            "checking": "unknown",
            "conflict": "dirty",
            "closed": "unknown",
        }.get(reason, "blocked")

    def pull_json(self, pull: FakePull, *, detailed: bool) -> dict[str, Any]:
        api = f"{self.url}{REPO}"
        data: dict[str, Any] = {
            "url": f"{api}/pulls/{pull.number}",
            "id": 1000 + pull.number,
            "node_id": f"PR_{pull.number}",
            "html_url": f"https://github.example/{OWNER}/{NAME}/pull/{pull.number}",
            "issue_url": f"{api}/issues/{pull.number}",
            "number": pull.number,
            "state": "open" if pull.state == "open" else "closed",
            "locked": False,
            "title": pull.title,
            "user": {"login": "gitops-rollout[bot]", "id": 7, "type": "Bot"},
            "body": pull.body or None,
            "labels": [self._label(name) for name in pull.labels],
            "created_at": "2024-05-01T10:00:00Z",
            "updated_at": "2024-05-01T10:00:00Z",
            "closed_at": None if pull.state == "open" else "2024-05-02T10:00:00Z",
            "merged_at": "2024-05-02T10:00:00Z" if pull.state == "merged" else None,
            # GitHub fills this for open pull requests too (a test merge); hosts must not trust it.
            "merge_commit_sha": pull.merge_sha or "f" * 40,
            "requested_reviewers": [{"login": r, "id": 9} for r in pull.reviewers],
            "head": self._ref(pull, "head"),
            "base": self._ref(pull, "base"),
            "draft": pull.draft,
            "auto_merge": (
                {"enabled_by": {"login": "gitops-rollout[bot]"}, "merge_method": "merge"}
                if pull.auto_merge
                else None
            ),
        }
        if detailed:
            state = self._mergeable_state(pull) if pull.state == "open" else "unknown"
            data |= {
                "merged": pull.state == "merged",
                "mergeable": None if state == "unknown" else pull.mergeable,
                "rebaseable": pull.mergeable,
                "mergeable_state": state,
                "merged_by": None,
                "comments": len(pull.comments),
                "commits": 1,
                "additions": 3,
                "deletions": 1,
                "changed_files": 1,
            }
        return data

    def _label(self, name: str) -> dict[str, Any]:
        return {"id": hash(name) % 10_000, "name": name, "color": "ededed", "default": False}

    def _pull(self, number: str) -> FakePull | None:
        return self.store.pulls.get(int(number))

    def _not_found(self) -> Reply:
        return Reply(404, {"message": "Not Found", "documentation_url": DOCS})

    # -- routes ---------------------------------------------------------------------------

    def _list(self, request: Request, _: re.Match[str]) -> Reply:
        state = request.param("state", "open")
        head, base = request.param("head"), request.param("base")
        pulls = [
            p
            for p in self.store.pulls.values()
            if state == "all" or (p.state == "open") == (state == "open")
            if head is None or f"{'mallory' if p.fork else OWNER}:{p.head}" == head
            if base is None or p.base == base
        ]
        pulls.sort(key=lambda p: p.number, reverse=request.param("direction", "desc") == "desc")
        items, number, count = self.page(request, pulls, size_param="per_page", default_size=30)
        headers = {"Link": self.link_header(request, number, count)} if count > 1 else {}
        return Reply(200, [self.pull_json(p, detailed=False) for p in items], headers)

    def _create(self, request: Request, _: re.Match[str]) -> Reply:
        body = request.json()
        missing = [key for key in ("head", "base", "title") if not body.get(key)]
        if missing:
            return self._invalid(f"{missing[0]} is missing", code="missing_field")
        pull, created = self.store.create(
            body["head"], body["base"], body["title"], body.get("body") or ""
        )
        if not created:
            return self._invalid(f"A pull request already exists for {OWNER}:{body['head']}.")
        return Reply(201, self.pull_json(pull, detailed=True))

    def _invalid(self, message: str, *, code: str = "custom") -> Reply:
        error = {"resource": "PullRequest", "code": code, "message": message}
        return Reply(
            422,
            {"message": "Validation Failed", "errors": [error], "documentation_url": DOCS},
        )

    def _get(self, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        return Reply(200, self.pull_json(pull, detailed=True))

    def _edit(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        body = request.json()
        pull.title = body.get("title", pull.title)
        pull.body = body.get("body", pull.body)
        pull.base = body.get("base", pull.base)
        if body.get("state") == "closed" and pull.state == "open":
            pull.state = "closed"
        return Reply(200, self.pull_json(pull, detailed=True))

    def _merge(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        body = request.json()
        if body.get("sha") and body["sha"] != pull.head_sha:
            return Reply(
                409,
                {
                    "message": "Head branch was modified. Review and try the merge again.",
                    "documentation_url": DOCS,
                },
            )
        if pull.blocked():
            return Reply(
                405, {"message": "Pull Request is not mergeable", "documentation_url": DOCS}
            )
        message = f"{body.get('commit_title', '')}\n\n{body.get('commit_message', '')}"
        sha = self.store.merge(pull, message.strip(), by=self.login(request))
        return Reply(
            200, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}
        )

    def _reviewers(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        body = request.json()
        wanted = [*body.get("reviewers", []), *body.get("team_reviewers", [])]
        if any(name in self.unknown_reviewers for name in wanted):
            return Reply(
                422,
                {
                    "message": "Reviews may only be requested from collaborators. One or more of "
                    "the users or teams you specified is not a collaborator of the "
                    f"{OWNER}/{NAME} repository.",
                    "documentation_url": DOCS,
                },
            )
        pull.reviewers.extend(wanted)
        return Reply(201, self.pull_json(pull, detailed=False))

    def _labels(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        body = request.json()
        # GitHub takes {"labels": [...]} or a bare list of names.
        for name in body if isinstance(body, list) else body.get("labels", []):
            if name not in pull.labels:
                pull.labels.append(name)
        return Reply(200, [self._label(name) for name in pull.labels])

    def _comment(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        text = request.json()["body"]
        pull.comments.append(text)
        return Reply(
            201,
            {
                "id": len(pull.comments),
                "body": text,
                "user": {"login": "gitops-rollout[bot]"},
                "html_url": f"https://github.example/{OWNER}/{NAME}/pull/{pull.number}",
                "created_at": "2024-05-01T10:00:00Z",
                "updated_at": "2024-05-01T10:00:00Z",
            },
        )

    def _comment_json(self, pull: FakePull, index: int) -> dict[str, Any]:
        return {
            "id": index + 1,
            "body": pull.comments[index],
            "user": {"login": "gitops-rollout[bot]"},
            "html_url": f"https://github.example/{OWNER}/{NAME}/pull/{pull.number}",
            "created_at": "2024-05-01T10:00:00Z",
            "updated_at": "2024-05-01T10:00:00Z",
        }

    def _comments(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        every = [self._comment_json(pull, i) for i in range(len(pull.comments))]
        items, number, count = self.page(request, every, size_param="per_page", default_size=30)
        headers = {"Link": self.link_header(request, number, count)} if count > 1 else {}
        return Reply(200, items, headers)

    def _status(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self.store.by_sha(match[1])
        checks = pull.checks if pull else "none"
        # Pending checks show up as a running check run below; statuses carry the rest.
        state = {"none": "pending", "pending": "success"}.get(checks, checks)
        statuses = [] if checks == "none" else [{"context": "ci/build", "state": state, "id": 1}]
        return Reply(
            200,
            {"state": state, "sha": match[1], "total_count": len(statuses), "statuses": statuses},
        )

    def _check_runs(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self.store.by_sha(match[1])
        runs = []
        if pull is not None and pull.checks == "pending":
            runs.append(
                {
                    "id": 5,
                    "name": "kustomize build",
                    "head_sha": match[1],
                    "status": "in_progress",
                    "conclusion": None,
                }
            )
        return Reply(200, {"total_count": len(runs), "check_runs": runs})

    def _graphql(self, request: Request, _: re.Match[str]) -> Reply:
        query = request.json()
        if "disablePullRequestAutoMerge" in query.get("query", ""):
            node = query["variables"]["input"]["pullRequestId"]
            pull = self._pull(node.removeprefix("PR_"))
            if pull is not None:
                pull.auto_merge = False
            actor = {"avatarUrl": "", "login": "x", "resourcePath": "/x", "url": "https://x"}
            return Reply(
                200,
                {
                    "data": {
                        "disablePullRequestAutoMerge": {"actor": actor, "clientMutationId": None}
                    }
                },
            )
        if "enablePullRequestAutoMerge" not in query.get("query", ""):
            return Reply(200, {"errors": [{"message": "unsupported query in the fake"}]})
        node = query["variables"]["input"]["pullRequestId"]
        pull = self._pull(node.removeprefix("PR_"))
        if pull is None or not self.allow_auto_merge:
            message = "Pull request Auto merge is not allowed for this repository"
            return Reply(
                200,
                {
                    "data": {"enablePullRequestAutoMerge": None},
                    "errors": [
                        {
                            "type": "UNPROCESSABLE",
                            "message": message,
                            "path": ["enablePullRequestAutoMerge"],
                        }
                    ],
                },
            )
        pull.auto_merge = True
        return Reply(
            200,
            {
                "data": {
                    "enablePullRequestAutoMerge": {
                        "actor": {
                            "avatarUrl": "",
                            "login": "gitops-rollout",
                            "resourcePath": "/x",
                            "url": "https://github.example/x",
                        },
                        "clientMutationId": None,
                    }
                }
            },
        )

    def _mint(self, request: Request, match: re.Match[str]) -> Reply:
        header = request.headers.get("authorization", "")
        try:
            assert self.app_public_key is not None
            claims = jwt.decode(
                header.removeprefix("Bearer "),
                self.app_public_key,
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_iat": False},
            )
            # GitHub's rules: issued in the past, not expired, valid for at most ten minutes.
            now = self.clock()
            assert claims["iat"] <= now < claims["exp"] <= claims["iat"] + 660
        except (AssertionError, KeyError, jwt.PyJWTError):
            return Reply(
                401,
                {"message": "A JSON web token could not be decoded", "documentation_url": DOCS},
            )
        token = f"ghs_installation_{len(self.app_tokens_minted)}_abcdefghijkl"
        self.tokens.add(token)
        body = request.json()
        self.app_tokens_minted.append({"claims": claims, "body": body, "token": token})
        expires = datetime.fromtimestamp(claims["iat"] + 60 + self.app_token_lifetime, UTC)
        return Reply(
            201,
            {
                "token": token,
                "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "permissions": {"pull_requests": "write", "contents": "write"},
                "repository_selection": "selected" if body.get("repositories") else "all",
            },
        )
