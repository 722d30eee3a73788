"""Credentials for the Git hosts; `redaction` keeps them out of logs and messages.

A `TokenSource` hands out the current token: a fixed one from the environment, one read from a
file (re-read when a mounted secret rotates), or a GitHub App installation token minted with
the app's private key, scoped to one repository and renewed before it expires. Every token and
JWT a source hands out is registered with the process-wide redactor (`redaction`, re-exported
here): `redact()` scrubs them from any text, and `RedactingFilter` from log records. The
hosts send tokens only in the Authorization header. For git over HTTPS, `git_http_env()`
passes the token to git through environment variables, never through its argument list or the
remote URL. Which host uses which variables is the hosts' business (`github`, `gitlab`,
`gitea`).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Protocol

import jwt
import requests

from gitops_rollout.errors import HostError
from gitops_rollout.gitops.hosts.redaction import MASK as MASK
from gitops_rollout.gitops.hosts.redaction import MIN_SECRET_LENGTH as MIN_SECRET_LENGTH
from gitops_rollout.gitops.hosts.redaction import RedactingFilter as RedactingFilter
from gitops_rollout.gitops.hosts.redaction import protect_library_loggers as protect_library_loggers
from gitops_rollout.gitops.hosts.redaction import redact as redact
from gitops_rollout.gitops.hosts.redaction import register_secret as register_secret
from gitops_rollout.gitops.hosts.transport import HttpPolicy, TokenAuth, make_session, status_hint

log = logging.getLogger(__name__)

APP_TOKEN_REFRESH_MARGIN = 300.0
"""Seconds before expiry at which an installation token is renewed (tokens live one hour)."""
APP_JWT_LIFETIME = 540
"""Seconds an app JWT is valid; GitHub accepts at most ten minutes."""
APP_JWT_BACKDATE = 60
"""Seconds the JWT's issue time is moved back, against clock drift (GitHub's advice)."""


class TokenSource(Protocol):
    """Where a host's API token comes from."""

    def token(self) -> str:
        """The token to use now; raises HostError when it cannot be had."""
        ...


# -- token sources --------------------------------------------------------------------------


class StaticToken:
    """A token given once, e.g. from an environment variable."""

    def __init__(self, value: str, *, origin: str) -> None:
        value = value.strip()
        if not value:
            raise HostError(f"{origin} is empty; set it to the API token")
        register_secret(value)
        self._value = value
        self.origin = origin

    def token(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"StaticToken(from {self.origin})"


class FileToken:
    """A token read from a file, re-read when the file changes (a rotated Kubernetes secret)."""

    def __init__(self, path: Path, *, origin: str) -> None:
        self.path = path
        self.origin = origin
        self._stamp: int | None = None
        self._value = ""
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            try:
                stamp = self.path.stat().st_mtime_ns
                if stamp != self._stamp:
                    value = self.path.read_text(encoding="utf-8").strip()
                    if not value:
                        raise HostError(
                            f"{self.origin}: {self.path} is empty; write the token to it"
                        )
                    register_secret(value)
                    self._value, self._stamp = value, stamp
            except OSError as err:
                raise HostError(
                    f"{self.origin}: cannot read the token file {self.path}: {err.strerror}"
                ) from err
            return self._value

    def __repr__(self) -> str:
        return f"FileToken({self.path})"


def token_from_env(prefix: str, environ: Mapping[str, str]) -> TokenSource:
    """The token named by ``<prefix>_TOKEN`` or ``<prefix>_TOKEN_FILE`` (exactly one of them)."""
    direct, file_name = f"{prefix}_TOKEN", f"{prefix}_TOKEN_FILE"
    value, path = environ.get(direct), environ.get(file_name)
    if value and path:
        raise HostError(f"both {direct} and {file_name} are set; keep one of them")
    if path:
        return FileToken(Path(path), origin=file_name)
    if value:
        return StaticToken(value, origin=direct)
    raise HostError(f"no API token: set {direct}, or {file_name} to a file holding it")


class GitHubAppToken:
    """Installation tokens of a GitHub App, minted on demand and renewed before they expire.

    The app authenticates with a JWT signed by its private key (RS256) and exchanges it for an
    installation token (``POST /app/installations/{id}/access_tokens``), scoped to
    `repositories` when given so that a leaked token opens only the repository we write to.
    """

    def __init__(
        self,
        *,
        app_id: str,
        installation_id: int,
        private_key: str,
        api_url: str = "https://api.github.com",
        repositories: tuple[str, ...] = (),
        policy: HttpPolicy | None = None,
    ) -> None:
        self.app_id = app_id
        self.installation_id = installation_id
        self.repositories = repositories
        self._private_key = private_key
        self._url = f"{api_url.rstrip('/')}/app/installations/{installation_id}/access_tokens"
        self._policy = policy or HttpPolicy()
        self._jwt = ""
        self._session = make_session(self._policy, TokenAuth("Bearer", lambda: self._jwt))
        self._value = ""
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if self._policy.clock() >= self._expires_at - APP_TOKEN_REFRESH_MARGIN:
                self._value, self._expires_at = self._mint()
            return self._value

    def _mint(self) -> tuple[str, float]:
        now = int(self._policy.clock())
        claims = {"iat": now - APP_JWT_BACKDATE, "exp": now + APP_JWT_LIFETIME, "iss": self.app_id}
        try:
            self._jwt = jwt.encode(claims, self._private_key, algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as err:
            raise HostError(
                f"GitHub App {self.app_id}: cannot sign a JWT with the private key "
                f"({type(err).__name__}); check that it is the app's PEM key"
            ) from err
        register_secret(self._jwt)
        body: dict[str, object] = {}
        if self.repositories:
            body["repositories"] = list(self.repositories)
        where = f"GitHub App {self.app_id} installation {self.installation_id}"
        try:
            response = self._session.post(
                self._url,
                json=body,
                headers={"Accept": "application/vnd.github+json"},
                timeout=self._policy.timeout,
            )
        except requests.RequestException as err:
            raise HostError(redact(f"{where}: cannot mint a token: {err}")) from err
        if response.status_code != 201:
            hint = status_hint(response.status_code, credentials="the app id and private key")
            if response.status_code == 404:
                hint = "installation not found: check the installation id"
            raise HostError(
                redact(
                    f"{where}: minting a token failed: HTTP {response.status_code} "
                    f"{_message(response)}; {hint}"
                )
            )
        try:
            answer = response.json()
            value = str(answer["token"])
            expires = datetime.fromisoformat(str(answer["expires_at"])).timestamp()
        except (ValueError, KeyError, TypeError) as err:
            raise HostError(f"{where}: unexpected answer when minting a token") from err
        register_secret(value)
        log.info("minted a GitHub App installation token for %s", where)
        return value, expires


def _message(response: requests.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        return response.reason or ""
    if isinstance(answer, dict) and "message" in answer:
        return str(answer["message"])
    return response.reason or ""


def github_app_from_env(
    prefix: str, environ: Mapping[str, str], *, api_url: str, repository: str, policy: HttpPolicy
) -> GitHubAppToken | None:
    """A GitHub App token source from ``<prefix>_APP_*`` variables, or None when unset.

    ``_APP_ID`` and ``_APP_INSTALLATION_ID``, plus ``_APP_PRIVATE_KEY_FILE`` (a PEM file) or
    ``_APP_PRIVATE_KEY`` (the PEM text).
    """
    app_id = environ.get(f"{prefix}_APP_ID")
    if not app_id:
        return None
    installation = environ.get(f"{prefix}_APP_INSTALLATION_ID", "")
    if not installation.isdigit():
        raise HostError(
            f"{prefix}_APP_ID is set but {prefix}_APP_INSTALLATION_ID is not a number "
            f"({installation!r}); set it to the installation id of the app on {repository}"
        )
    key_file = environ.get(f"{prefix}_APP_PRIVATE_KEY_FILE")
    key = environ.get(f"{prefix}_APP_PRIVATE_KEY", "")
    if key_file:
        try:
            key = Path(key_file).read_text(encoding="utf-8")
        except OSError as err:
            raise HostError(
                f"{prefix}_APP_PRIVATE_KEY_FILE: cannot read {key_file}: {err.strerror}"
            ) from err
    if not key.strip():
        raise HostError(
            f"{prefix}_APP_ID is set but no key: set {prefix}_APP_PRIVATE_KEY_FILE to the app's "
            "PEM private key"
        )
    return GitHubAppToken(
        app_id=app_id,
        installation_id=int(installation),
        private_key=key,
        api_url=api_url,
        repositories=(repository.split("/")[-1],),
        policy=policy,
    )


# -- git over HTTPS -------------------------------------------------------------------------


def git_http_env(*, remote_url: str, username: str, credentials: TokenSource) -> dict[str, str]:
    """Environment variables that make git send the token to `remote_url`, and only there.

    Uses git's ``GIT_CONFIG_COUNT`` (git 2.31+) to set ``http.<remote_url>.extraHeader`` to a
    Basic authorization: the token appears neither in git's argument list (visible in ``ps``)
    nor in the remote URL (stored in .git/config and printed in errors). Merge the result into
    the environment of the git process; call again before each push, as app tokens rotate.
    """
    token = credentials.token()
    basic = base64.b64encode(f"{username}:{token}".encode()).decode("ascii")
    register_secret(basic)
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"http.{remote_url}.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        "GIT_TERMINAL_PROMPT": "0",
    }
