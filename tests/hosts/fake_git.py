"""A real bare Git repository behind a fake host: served over smart HTTP, merged into for real.

`GitRemote` lets a fake forge (fake_github, fake_gitlab, fake_gitea) act on the repository the
test uses as the bot's remote, as the forge would: pull requests follow their head branch,
mergeability is git's own (``merge-tree``), a merge moves the base branch with a real merge
commit dated by the test's clock, and clones, fetches and pushes go through ``git
http-backend`` behind the fake's HTTP server, with HTTP Basic authentication checked against
the fake's tokens (as GitHub, GitLab and Gitea accept a token as the password).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .fake_server import Reply, Request

FORGE = ("Forge", "noreply@forge.example")
"""Committer of merge commits, like GitHub's web-flow account."""


@dataclass
class GitRemote:
    """One bare repository, reachable as ``<fake url><url_path>``."""

    path: Path
    url_path: str
    """``/acme/gitops.git``: where clients find it on the fake's server."""
    clock: Callable[[], datetime]

    # -- the repository --------------------------------------------------------------------

    def git(self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            ["git", "--git-dir", str(self.path), *args],
            input=stdin,
            capture_output=True,
            env={**os.environ, **(env or {})},
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"git {args[0]} failed: {done.stderr.decode()}")
        return done.stdout.decode()

    def head(self, branch: str) -> str | None:
        out = self.git("for-each-ref", "--format=%(objectname)", f"refs/heads/{branch}")
        return out.strip() or None

    def contains(self, base: str, sha: str) -> bool:
        """`sha` is already part of `base` (merged, or pushed straight to it)."""
        code = subprocess.run(
            ["git", "--git-dir", str(self.path), "merge-base", "--is-ancestor", sha, base],
            capture_output=True,
            check=False,
        ).returncode
        return code == 0

    def _merge_tree(self, base: str, head_sha: str) -> str | None:
        """The merged tree, or None on a conflict."""
        done = subprocess.run(
            [
                "git",
                "--git-dir",
                str(self.path),
                "merge-tree",
                "--write-tree",
                "--no-messages",
                f"refs/heads/{base}",
                head_sha,
            ],
            capture_output=True,
            check=False,
        )
        if done.returncode == 1:
            return None
        if done.returncode != 0:
            raise RuntimeError(f"git merge-tree failed: {done.stderr.decode()}")
        return done.stdout.decode().split()[0]

    def mergeable(self, base: str, head_sha: str) -> bool:
        return self._merge_tree(base, head_sha) is not None

    def merge(self, *, base: str, head_sha: str, message: str, by: str) -> str | None:
        """Merge `head_sha` into `base` with a merge commit; its sha, or None on a conflict."""
        tree = self._merge_tree(base, head_sha)
        if tree is None:
            return None
        old = self.head(base) or ""
        stamp = f"{int(self.clock().timestamp())} +0000"
        env = {
            "GIT_AUTHOR_NAME": by,
            "GIT_AUTHOR_EMAIL": f"{by}@users.forge.example",
            "GIT_AUTHOR_DATE": stamp,
            "GIT_COMMITTER_NAME": FORGE[0],
            "GIT_COMMITTER_EMAIL": FORGE[1],
            "GIT_COMMITTER_DATE": stamp,
        }
        sha = self.git(
            "commit-tree",
            tree,
            "-p",
            old,
            "-p",
            head_sha,
            "-F",
            "-",
            stdin=message.encode(),
            env=env,
        ).strip()
        self.git("update-ref", f"refs/heads/{base}", sha, old)
        return sha

    # -- smart HTTP ------------------------------------------------------------------------

    def serves(self, path: str) -> bool:
        return path == self.url_path or path.startswith(self.url_path + "/")

    def serve(self, request: Request, *, user: str) -> Reply:
        """Answer one smart-HTTP request through ``git http-backend`` (CGI)."""
        query = "&".join(f"{k}={v}" for k, values in request.query.items() for v in values)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "GIT_PROJECT_ROOT": str(self.path.parent),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": "/" + self.path.name + request.path[len(self.url_path) :],
            "QUERY_STRING": query,
            "REQUEST_METHOD": request.method,
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(request.body)),
            "REMOTE_USER": user,
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_CONTENT_ENCODING": request.headers.get("content-encoding", ""),
            "HTTP_GIT_PROTOCOL": request.headers.get("git-protocol", ""),
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(self.path.parent),
        }
        done = subprocess.run(
            ["git", "http-backend"], input=request.body, capture_output=True, env=env, check=False
        )
        head, _, body = done.stdout.partition(b"\r\n\r\n")
        if not _ and b"\n\n" in done.stdout:
            head, _, body = done.stdout.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        if done.returncode != 0 and status == 200:
            status, body = 500, done.stderr
        return Reply(status, body, headers)
