"""A fake GitLab REST API (v4) for the merge request endpoints the GitLab host uses.

Shapes follow GitLab's docs: merge requests with detailed_merge_status and head_pipeline,
offset pagination with X-Page / X-Next-Page / X-Total-Pages and Link headers, 409 "Another open
merge request already exists", merge answers 405/406/409, and merge_when_pipeline_succeeds.
"""

from __future__ import annotations

import re
from typing import Any

from .fake_pulls import FakePull, PullStore
from .fake_server import FakeServer, Reply, Request

PROJECT_ID = 42
PROJECT = "acme/gitops"
MRS = rf"/api/v4/projects/(?:acme%2Fgitops|{PROJECT_ID})/merge_requests"
STATES = {"open": "opened", "closed": "closed", "merged": "merged"}
USERS = {"alice": 11, "bob": 12}


class FakeGitLab(FakeServer):
    auth_schemes = ("Bearer",)

    def __init__(self, *, tokens: set[str]) -> None:
        super().__init__(tokens=tokens)
        self.store = PullStore()
        n = r"(\d+)"
        self.route("GET", MRS, self._list)
        self.route("POST", MRS, self._create)
        self.route("GET", f"{MRS}/{n}", lambda r, m: self._get(m))
        self.route("PUT", f"{MRS}/{n}", self._update)
        self.route("PUT", f"{MRS}/{n}/merge", self._merge)
        self.route("POST", f"{MRS}/{n}/cancel_merge_when_pipeline_succeeds", self._cancel_mwps)
        self.route("POST", f"{MRS}/{n}/notes", self._note)
        self.route("GET", f"{MRS}/{n}/notes", self._notes)
        self.route("GET", "/api/v4/users", self._users)

    def refresh(self) -> None:
        self.store.sync()

    def unauthorized(self) -> Reply:
        return Reply(401, {"message": "401 Unauthorized"})

    def authorized(self, request: Request) -> bool:
        return request.headers.get("private-token") in self.tokens or super().authorized(request)

    def _detailed_status(self, pull: FakePull) -> str:
        return {
            "": "mergeable",
            "closed": "not_open",
            "draft": "draft_status",
            "checking": "checking",
            "conflict": "conflict",
            "pending": "ci_still_running",
            "failure": "ci_must_pass",
            "approval": "not_approved",
        }[pull.blocked()]

    def mr_json(self, pull: FakePull, *, detailed: bool) -> dict[str, Any]:
        state = STATES[pull.state]
        data: dict[str, Any] = {
            "id": 5000 + pull.number,
            "iid": pull.number,
            "project_id": PROJECT_ID,
            "title": pull.title,
            "description": pull.body or None,
            "state": state,
            "created_at": "2024-05-01T10:00:00.000Z",
            "updated_at": "2024-05-01T10:00:00.000Z",
            "merged_at": "2024-05-02T10:00:00.000Z" if pull.state == "merged" else None,
            "closed_at": "2024-05-02T10:00:00.000Z" if pull.state == "closed" else None,
            "target_branch": pull.base,
            "source_branch": pull.head,
            "source_project_id": 77 if pull.fork else PROJECT_ID,
            "target_project_id": PROJECT_ID,
            "author": {"id": 7, "username": "gitops-rollout-bot"},
            "reviewers": [{"id": USERS.get(r, 0), "username": r} for r in pull.reviewers],
            "labels": list(pull.labels),
            "draft": pull.draft,
            "work_in_progress": pull.draft,
            "merge_when_pipeline_succeeds": pull.auto_merge,
            "merge_status": "can_be_merged" if pull.mergeable else "cannot_be_merged",
            "detailed_merge_status": self._detailed_status(pull),
            "has_conflicts": pull.mergeable is False,
            "sha": pull.head_sha,
            "merge_commit_sha": pull.merge_sha,
            "squash_commit_sha": None,
            "web_url": f"https://gitlab.example/{PROJECT}/-/merge_requests/{pull.number}",
        }
        if detailed:
            status = {"pending": "running", "success": "success", "failure": "failed"}
            pipeline = (
                {
                    "id": 900 + pull.number,
                    "sha": pull.head_sha,
                    "ref": pull.head,
                    "status": status[pull.checks],
                }
                if pull.checks in status
                else None
            )
            data |= {"head_pipeline": pipeline, "pipeline": pipeline, "user": {"can_merge": True}}
        return data

    def _pull(self, number: str) -> FakePull | None:
        return self.store.pulls.get(int(number))

    def _not_found(self) -> Reply:
        return Reply(404, {"message": "404 Not found"})

    def _list(self, request: Request, _: re.Match[str]) -> Reply:
        state = request.param("state", "all")
        source, target = request.param("source_branch"), request.param("target_branch")
        pulls = [
            p
            for p in self.store.pulls.values()
            if state == "all" or STATES[p.state] == state
            if source is None or p.head == source
            if target is None or p.base == target
        ]
        pulls.sort(key=lambda p: p.number, reverse=request.param("sort", "desc") == "desc")
        items, number, count = self.page(request, pulls, size_param="per_page", default_size=20)
        headers = {
            "X-Page": str(number),
            "X-Per-Page": request.param("per_page", "20") or "20",
            "X-Next-Page": str(number + 1) if number < count else "",
            "X-Prev-Page": str(number - 1) if number > 1 else "",
            "X-Total": str(len(pulls)),
            "X-Total-Pages": str(count),
        }
        link = self.link_header(request, number, count)
        if link:
            headers["Link"] = link
        return Reply(200, [self.mr_json(p, detailed=False) for p in items], headers)

    def _create(self, request: Request, _: re.Match[str]) -> Reply:
        body = request.json()
        missing = [k for k in ("source_branch", "target_branch", "title") if not body.get(k)]
        if missing:
            return Reply(400, {"error": f"{missing[0]} is missing"})
        pull, created = self.store.create(
            body["source_branch"],
            body["target_branch"],
            body["title"],
            body.get("description") or "",
        )
        if not created:
            return Reply(
                409,
                {
                    "message": [
                        "Another open merge request already exists for this source branch: "
                        f"!{pull.number}"
                    ]
                },
            )
        labels = body.get("labels") or ""
        pull.labels = [x for x in (labels.split(",") if isinstance(labels, str) else labels) if x]
        ids = {v: k for k, v in USERS.items()}
        pull.reviewers = [ids[i] for i in body.get("reviewer_ids") or [] if i in ids]
        return Reply(201, self.mr_json(pull, detailed=True))

    def _get(self, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        return self._not_found() if pull is None else Reply(200, self.mr_json(pull, detailed=True))

    def _update(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        body = request.json()
        pull.title = body.get("title", pull.title)
        pull.body = body.get("description", pull.body)
        pull.base = body.get("target_branch", pull.base)
        for label in (body.get("add_labels") or "").split(","):
            if label and label not in pull.labels:
                pull.labels.append(label)
        if body.get("state_event") == "close" and pull.state == "open":
            pull.state = "closed"
        return Reply(200, self.mr_json(pull, detailed=True))

    def _merge(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        sha = request.arg("sha")
        if pull.state != "open":
            return Reply(405, {"message": "405 Method Not Allowed"})
        if sha and sha != pull.head_sha:
            return Reply(
                409, {"message": "SHA does not match HEAD of source branch: " + pull.head_sha}
            )
        reason = pull.blocked()
        if reason == "conflict":
            return Reply(406, {"message": "Branch cannot be merged"})
        if (
            reason == "pending"
            and str(request.arg("merge_when_pipeline_succeeds")).lower() == "true"
        ):
            pull.auto_merge = True
            return Reply(200, self.mr_json(pull, detailed=True))
        if reason:
            return Reply(405, {"message": "405 Method Not Allowed"})
        self.store.merge(
            pull, str(request.arg("merge_commit_message") or ""), by=self.login(request)
        )
        return Reply(200, self.mr_json(pull, detailed=True))

    def _cancel_mwps(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        if not pull.auto_merge:
            return Reply(406, {"message": "406 Not Acceptable"})
        pull.auto_merge = False
        return Reply(201, self.mr_json(pull, detailed=True))

    def _note(self, request: Request, match: re.Match[str]) -> Reply:
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
                "author": {"username": "gitops-rollout-bot"},
                "created_at": "2024-05-01T10:00:00.000Z",
                "system": False,
                "noteable_id": 5000 + pull.number,
                "noteable_type": "MergeRequest",
                "noteable_iid": pull.number,
            },
        )

    def _notes(self, request: Request, match: re.Match[str]) -> Reply:
        pull = self._pull(match[1])
        if pull is None:
            return self._not_found()
        # GitLab adds its own system notes; the host must leave them out.
        every = [
            {"id": 1, "body": "added 1 commit", "system": True, "author": {"username": "bot"}}
        ] + [
            {"id": i + 2, "body": text, "system": False, "author": {"username": "bot"}}
            for i, text in enumerate(pull.comments)
        ]
        if request.param("sort", "desc") == "desc":
            every.reverse()
        items, number, count = self.page(request, every, size_param="per_page", default_size=20)
        headers = {
            "X-Page": str(number),
            "X-Total-Pages": str(count),
            "X-Next-Page": str(number + 1) if number < count else "",
        }
        link = self.link_header(request, number, count)
        if link:
            headers["Link"] = link
        return Reply(200, items, headers)

    def _users(self, request: Request, _: re.Match[str]) -> Reply:
        name = request.param("username")
        found = [
            {"id": uid, "username": user, "name": user.title(), "state": "active"}
            for user, uid in USERS.items()
            if user == name
        ]
        return Reply(200, found, {"X-Page": "1", "X-Total-Pages": "1", "X-Next-Page": ""})
