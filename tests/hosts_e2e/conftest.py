"""Fixtures: a `World` per host kind, and a check that no token ever left where it belongs.

Every test here runs with every log record captured at DEBUG, every top-level git command
line recorded (a ``git`` wrapper first on PATH), and ends by scanning all of it, plus every
pull request title, body and comment, every reported error, every URL the fake hosts were
asked for, and the bot's clone on disk, for the tokens in any form git or the hosts use them.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from .world import BOT_TOKEN, KINDS, REVIEWER_TOKEN, World, git_recorder


def _forms(token: str) -> list[str]:
    """The token, and the Basic credentials git sends, as the user names the hosts use."""
    forms = [token]
    for user in ("x-access-token", "oauth2", "gitops-rollout"):
        forms.append(base64.b64encode(f"{user}:{token}".encode()).decode())
    return forms


SECRETS = _forms(BOT_TOKEN) + _forms(REVIEWER_TOKEN)


@pytest.fixture
def git_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where every git command line of the test is appended (what ``ps`` would show)."""
    log = tmp_path / "git-argv.log"
    log.touch()
    shim = git_recorder(tmp_path / "shim", log)
    import os

    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ.get('PATH', '')}")
    return log


@pytest.fixture(params=KINDS)
def world(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    git_argv: Path,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[World]:
    caplog.set_level(logging.DEBUG)
    w = World(tmp_path / "world", request.param)
    try:
        yield w
    finally:
        w.stop()
    assert_no_secret_leaked(w, caplog, git_argv)
    if w.fake is not None:
        assert not w.fake.errors, f"the fake API failed: {w.fake.errors!r}"


def assert_no_secret_leaked(w: World, caplog: pytest.LogCaptureFixture, git_argv: Path) -> None:
    places: list[tuple[str, str]] = []
    # caplog.records holds the current phase only: this runs in teardown.
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    assert records or w.outputs, "neither a log record nor a command's output was captured"
    for record in records:
        places.append((f"log {record.name}", record.getMessage()))
        if record.exc_text:
            places.append((f"traceback {record.name}", record.exc_text))
    places += [("pull request or report", text) for text in w.texts()]
    places.append(("git command lines", git_argv.read_text()))
    if w.fake is not None:
        for r in w.fake.requests:
            places.append((f"URL {r.method} {r.path}", f"{r.path}?{r.query}"))
    for path in w.cache.rglob("*"):
        if path.is_file():
            places.append((f"clone file {path}", path.read_bytes().decode(errors="replace")))
    assert places, "nothing was scanned"
    leaks = [where for where, text in places for secret in SECRETS if secret in text]
    assert not leaks, f"a token leaked into: {sorted(set(leaks))}"
