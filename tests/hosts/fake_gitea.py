"""A fake Gitea REST API (/api/v1) for the pull request endpoints the Gitea host uses.

Shapes follow Gitea's swagger: pull requests with head/base repo ids, page/limit pagination with
Link and X-Total-Count headers, 409 "pull request already exists for these targets", labels by
id, merge answers 200 (merged), 201 (scheduled when checks succeed), 405 and 409, and the
combined commit status.
"""

from __future__ import annotations

import re
from typing import Any

from .fake_pulls import FakePull, PullStore
from .fake_server import FakeServer, Reply, Request

REPO = "/api/v1/repos/acme/gitops"
KNOWN_USERS = {"alice", "bob"}


class FakeGitea(FakeServer):
    auth_schemes = ("token",)

    def __init__(self, *, tokens: set[str]) -> None:
        super().__init__(tokens=tokens)
        self.store = PullStore()
        self.labels: dict[str, int] = {"existing": 1}
        n = r"(\d+)"
        self.route("GET", f"{REPO}/pulls", self._list)
        self.route("POST", f"{REPO}/pulls", self._create)
        self.route("GET", f"{REPO}/pulls/{n}", lambda r, m: self._get(m))
        self.route("PATCH", f"{REPO}/pulls/{n}", self._edit)
        self.route("POST", f"{REPO}/pulls/{n}/merge", self._merge)
        self.route("DELETE", f"{REPO}/pulls/{n}/merge", self._cancel_merge)
        self.route("POST", f"{REPO}/pulls/{n}/requested_reviewers", self._reviewers)
        self.route("GET", f"{REPO}/labels", self._list_labels)
        self.route("POST", f"{REPO}/labels", self._create_label)
        self.route("POST", f"{REPO}/issues/{n}/labels", self._add_labels)
        self.route("POST", f"{REPO}/issues/{n}/comments", self._comment)
        self.route("GET", f"{REPO}/issues/{n}/comments", self._comments)
        self.route("GET", f"{REPO}/commits/([0-9a-f]+)/status", self._status)

    def refresh(self) -> None:
        self.store.sync()

    def unauthorized(self) -> Reply:
        return Reply(401, {"message": "token is required", "url": f"{self.url}/api/swagger"})

    def _label(self, name: str) -> dict[str, Any]:
        label_id = self.labels.setdefault(name, max(self.labels.values(), default=0) + 1)
        return {"id": label_id, "name": name, "color": "ededed", "description": ""}

    def _ref(self, pull: FakePull, side: str) -> dict[str, Any]:
        ref = pull.head if side == "head" else pull.base
        repo_id = 2 if pull.fork and side == "head" else 1
        return {
            "label": ref,
            "ref": ref,
            "sha": pull.head_sha if side == "head" else "0" * 40,
            "repo_id": repo_id,
            "repo": {"id": repo_id, "name": "gitops", "full_name": "acme/gitops"},
        }

    def pull_json(self, pull: FakePull) -> dict[str, Any]:
        return {
            "id": 3000 + pull.number,
            "url": f"https://gitea.example/acme/gitops/pulls/{pull.number}",
            "number": pull.number,
            "user": {"id": 7, "login": "gitops-rollout"},
            "title": pull.title,
            "body": pull.body,
            "labels": [self._label(name) for name in pull.labels],
            "milestone": None,
            "assignees": None,
            "requested_reviewers": [{"login": r} for r in pull.reviewers],
            "state": "open" if pull.state == "open" else "closed",
            "draft": pull.draft,
            "is_locked": False,
            "comments": len(pull.comments),
            "html_url": f"https://gitea.example/acme/gitops/pulls/{pull.number}",
            "diff_url": f"https://gitea.example/acme/gitops/pulls/{pull.number}.diff",
            "patch_url": f"https://gitea.example/acme/gitops/pulls/{pull.number}.patch",
            # Gitea says false while it is still checking, as for conflicts.
            "mergeable": bool(pull.mergeable) and pull.state == "open",
            "merged": pull.state == "merged",
            "merged_at": "2024-05-02T10:00:00Z" if pull.state == "merged" else None,
            "merge_commit_sha": pull.merge_sha,
            "merged_by": None,
            "base": self._ref(pull, "base"),
            "head": self._ref(pull, "head"),
            "merge_base": "0" * 40,
            "created_at": "2024-05-01T10:00:00Z",
            "updated_at": "2024-05-01T10:00:00Z",
            "closed_at": None if pull.state == "open" else "2024-05-02T10:00:00Z",
        }

    def _paged(self, request: Request, items: list[Any]) -> Reply:
        page, number, count = self.page(request, items, size_param="limit", default_size=30)
        headers = {"X-Total-Count": str(len(items))}
        link = self.link_header(request, number, count)
        if link:
            headers["Link"] = link
        return Reply(200, page, headers)

    def _pull(self, number: str) -> FakePull | None:
        return self.store.pulls.get(int(number))

    def _not_found(self) -> Reply:
        return Reply(404, {"message": "The target couldn't be found.", "errors": []})

    def _list(self, request: Request, _: re.Match[str]) -> Reply:
        state = request.param("state", "open")
        pulls = [
            p
            for p in self.store.pulls.values()
            if state == "all" or (p.state == "open") == (state == "open")
        ]
        pulls.sort(key=lambda p: p.number, reverse=True)
        return self._paged(request, [self.pull_json(p) for p in pulls])

    def _create(self, request: Request, _: re.Match[str]) -> Reply:
        body = request.json()
        if body.get("head") == body.get("base"):
            return Reply(
                422,
                {
                    "message": "Invalid PullRequest: There are no changes between the head and "
                    "the base"
                },
            )
        pull, created = self.store.create(
            body["head"], body["base"], body.get("title", ""), body.get("body", "")
        )
        if not created:
            return Reply(
                409,
                {
                    "message": "pull request already exists for these targets [id: "
                    f"{3000 + pull.number}, issue_id: {pull.number}, head_repo_id: 1, "
                    f"base_repo_id: 1, head_branch: {pull.head}, base_branch: {pull.base}]",
                    "url": f"{self.url}/api/swagger",
                },
            )
        names = {v: k for k, v in self.labels.items()}
        pull.labels = [names[i] for i in body.get("labels") or []]
        return Reply(201, self.pull_json(pull))

    def _get(self, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        return self._not_found() if pull is None else Reply(200, self.pull_json(pull))

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
        return Reply(201, self.pull_json(pull))

    def _merge(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        body = request.json()
        if pull.state != "open":
            return self._not_found()
        if body.get("head_commit_id") and body["head_commit_id"] != pull.head_sha:
            return Reply(409, {"message": "head out of date"})
        reason = pull.blocked()
        if reason == "pending" and body.get("merge_when_checks_succeed"):
            if pull.auto_merge:
                return Reply(409, {"message": "pull request is already scheduled to auto merge"})
            pull.auto_merge = True
            return Reply(201)
        refusals = {
            "draft": "Work in progress PRs cannot be merged",
            "checking": "Please try again later",
            "conflict": "Please try again later",
            "pending": "Not all required status checks successful",
            "failure": "Not all required status checks successful",
            "approval": "Does not have enough approvals",
        }
        if reason:
            return Reply(405, {"message": refusals[reason]})
        message = f"{body.get('MergeTitleField', '')}\n\n{body.get('MergeMessageField', '')}"
        self.store.merge(pull, message.strip(), by=self.login(request))
        return Reply(200)

    def _cancel_merge(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None or not pull.auto_merge:
            return self._not_found()
        pull.auto_merge = False
        return Reply(204)

    def _reviewers(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        body = request.json()
        for name in body.get("reviewers") or []:
            if name not in KNOWN_USERS:
                return Reply(422, {"message": f"user does not exist [uid: 0, name: {name}]"})
        pull.reviewers.extend(body.get("reviewers") or [])
        pull.reviewers.extend(body.get("team_reviewers") or [])
        return Reply(
            201, [{"id": i, "state": "REQUEST_REVIEW"} for i, _ in enumerate(pull.reviewers)]
        )

    def _list_labels(self, request: Request, _: re.Match[str]) -> Reply:
        return self._paged(request, [self._label(name) for name in self.labels])

    def _create_label(self, request: Request, _: re.Match[str]) -> Reply:
        body = request.json()
        name = body["name"]
        if not re.fullmatch(r"#?[0-9a-fA-F]{6}", body.get("color", "")):
            return Reply(422, {"message": "Color is invalid"})
        self.labels.setdefault(name, max(self.labels.values(), default=0) + 1)
        return Reply(201, self._label(name))

    def _add_labels(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        names = {v: k for k, v in self.labels.items()}
        for label_id in request.json().get("labels", []):
            if names[label_id] not in pull.labels:
                pull.labels.append(names[label_id])
        return Reply(200, [self._label(name) for name in pull.labels])

    def _comment(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        text = request.json()["body"]
        pull.comments.append(text)
        return Reply(201, {"id": len(pull.comments), "body": text, "user": {"login": "bot"}})

    def _comments(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        # Gitea lists every comment of an issue in one answer (since/before, no pages).
        return Reply(
            200,
            [
                {"id": i + 1, "body": text, "user": {"login": "bot"}}
                for i, text in enumerate(pull.comments)
            ],
        )

    def _status(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self.store.by_sha(match[1])
        checks = pull.checks if pull else "none"
        statuses = (
            []
            if checks == "none"
            else [{"id": 1, "context": "ci/build", "status": checks, "target_url": ""}]
        )
        return Reply(
            200,
            {
                "state": "" if checks == "none" else checks,
                "sha": match[1],
                "total_count": len(statuses),
                "statuses": statuses,
            },
        )
