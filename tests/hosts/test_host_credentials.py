"""Tokens from the environment, files and a GitHub App, and that they never leak."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gitops_rollout.errors import HostError
from gitops_rollout.gitops.hosts import HostConfig, git_credentials, make_host
from gitops_rollout.gitops.hosts.auth import (
    FileToken,
    RedactingFilter,
    StaticToken,
    git_http_env,
    redact,
    register_secret,
    token_from_env,
)
from gitops_rollout.gitops.hosts.gitea import GiteaHost
from gitops_rollout.gitops.hosts.github import GitHubHost
from gitops_rollout.gitops.hosts.gitlab import GitLabHost
from gitops_rollout.gitops.hosts.transport import HttpPolicy

from .conftest import PREFIX, TOKEN, HostCase, Sleeps, draft, start_fake
from .fake_github import FakeGitHub

PREFIX_ENV = "GITOPS_ROLLOUT_GITHUB"


# -- tokens from the environment -------------------------------------------------------------


def test_token_from_the_variable() -> None:
    source = token_from_env(PREFIX_ENV, {"GITOPS_ROLLOUT_GITHUB_TOKEN": " tok-from-env-123 \n"})

    assert source.token() == "tok-from-env-123"


def test_token_from_a_file_is_reread_when_the_secret_rotates(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first-token-0123\n")
    source = token_from_env(PREFIX_ENV, {"GITOPS_ROLLOUT_GITHUB_TOKEN_FILE": str(path)})
    assert source.token() == "first-token-0123"

    path.write_text("second-token-0123\n")
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))

    assert source.token() == "second-token-0123"
    assert redact("was first-token-0123, now second-token-0123") == "was ***, now ***"


ENV_ERRORS = [
    pytest.param(
        {},
        "no API token: set GITOPS_ROLLOUT_GITHUB_TOKEN, or "
        "GITOPS_ROLLOUT_GITHUB_TOKEN_FILE to a file holding it",
        id="unset",
    ),
    pytest.param(
        {"GITOPS_ROLLOUT_GITHUB_TOKEN": "a-token-1234", "GITOPS_ROLLOUT_GITHUB_TOKEN_FILE": "/x"},
        "both GITOPS_ROLLOUT_GITHUB_TOKEN and GITOPS_ROLLOUT_GITHUB_TOKEN_FILE "
        "are set; keep one of them",
        id="both",
    ),
    pytest.param(
        {"GITOPS_ROLLOUT_GITHUB_TOKEN": "   "},
        "GITOPS_ROLLOUT_GITHUB_TOKEN is empty; set it to the API token",
        id="empty",
    ),
]


@pytest.mark.parametrize(("environ", "message"), ENV_ERRORS)
def test_token_configuration_errors_say_how_to_fix(environ: dict[str, str], message: str) -> None:
    with pytest.raises(HostError) as caught:
        token_from_env(PREFIX_ENV, environ)

    assert str(caught.value) == message


def test_a_missing_token_file_is_a_host_error(tmp_path: Path) -> None:
    source = FileToken(tmp_path / "absent", origin="GITOPS_ROLLOUT_GITEA_TOKEN_FILE")

    with pytest.raises(HostError) as caught:
        source.token()

    assert str(caught.value) == (
        f"GITOPS_ROLLOUT_GITEA_TOKEN_FILE: cannot read the token file {tmp_path / 'absent'}: "
        "No such file or directory"
    )


@pytest.mark.parametrize(
    ("build", "variable"),
    [
        pytest.param(
            lambda env: GitHubHost.from_env(repository="acme/gitops", environ=env),
            "GITOPS_ROLLOUT_GITHUB_TOKEN",
            id="github",
        ),
        pytest.param(
            lambda env: GitLabHost.from_env(project="acme/gitops", environ=env),
            "GITOPS_ROLLOUT_GITLAB_TOKEN",
            id="gitlab",
        ),
        pytest.param(
            lambda env: GiteaHost.from_env(
                repository="acme/gitops", api_url="https://gitea.example", environ=env
            ),
            "GITOPS_ROLLOUT_GITEA_TOKEN",
            id="gitea",
        ),
    ],
)
def test_each_host_reads_its_own_variables(build, variable: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HostError, match=f"set {variable}, or {variable}_FILE"):
        build({})

    host = build({variable: "env-token-0123456789"})

    assert host.credentials.token() == "env-token-0123456789"


# -- GitHub App installation tokens ----------------------------------------------------------


@pytest.fixture
def app_key() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_github_app_token_is_minted_for_the_repository_and_renewed_before_expiry(
    app_key: tuple[str, str], tmp_path: Path
) -> None:
    private, public = app_key
    key_file = tmp_path / "app.pem"
    key_file.write_text(private)
    fake = start_fake("github", set())
    assert isinstance(fake, FakeGitHub)
    fake.app_public_key = public
    now = [time.time()]
    fake.clock = lambda: now[0]
    policy = HttpPolicy(sleep=Sleeps(), clock=lambda: now[0], write_interval=0.0)
    try:
        host = GitHubHost.from_env(
            repository="acme/gitops",
            api_url=fake.url,
            policy=policy,
            environ={
                "GITOPS_ROLLOUT_GITHUB_APP_ID": "12345",
                "GITOPS_ROLLOUT_GITHUB_APP_INSTALLATION_ID": "678",
                "GITOPS_ROLLOUT_GITHUB_APP_PRIVATE_KEY_FILE": str(key_file),
            },
        )
        host.open_or_update(draft())
        host.pulls_for_prefix(PREFIX, base="main")
        assert len(fake.app_tokens_minted) == 1, "one token serves until near its expiry"
        [minted] = fake.app_tokens_minted
        assert minted["claims"]["iss"] == "12345"
        assert minted["body"] == {"repositories": ["gitops"]}
        api_calls = [r for r in fake.requests if not r.path.startswith("/app/")]
        assert {r.headers["authorization"] for r in api_calls} == {f"Bearer {minted['token']}"}

        now[0] += 3600 - 299  # within five minutes of the one-hour expiry
        host.pulls_for_prefix(PREFIX, base="main")

        assert len(fake.app_tokens_minted) == 2
        assert fake.requests[-1].headers["authorization"] == (
            f"Bearer {fake.app_tokens_minted[1]['token']}"
        )
        assert "ghs_installation_1_abcdefghijkl" not in redact("ghs_installation_1_abcdefghijkl")
    finally:
        fake.stop()


def test_github_app_with_a_wrong_key_is_a_host_error(app_key: tuple[str, str]) -> None:
    private, _ = app_key
    other_public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    fake = start_fake("github", set())
    assert isinstance(fake, FakeGitHub)
    fake.app_public_key = other_public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    try:
        host = GitHubHost.from_env(
            repository="acme/gitops",
            api_url=fake.url,
            policy=HttpPolicy(sleep=Sleeps(), write_interval=0.0),
            environ={
                "GITOPS_ROLLOUT_GITHUB_APP_ID": "12345",
                "GITOPS_ROLLOUT_GITHUB_APP_INSTALLATION_ID": "678",
                "GITOPS_ROLLOUT_GITHUB_APP_PRIVATE_KEY": private,
            },
        )
        with pytest.raises(HostError) as caught:
            host.pulls_for_prefix(PREFIX, base="main")
    finally:
        fake.stop()

    assert str(caught.value) == (
        "GitHub App 12345 installation 678: minting a token failed: HTTP 401 A JSON web token "
        "could not be decoded; the host rejected the token; check the app id and private key"
    )


# -- redaction -------------------------------------------------------------------------------


def test_the_token_goes_only_into_the_authorization_header(
    case: HostCase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="github")  # PyGithub holds its logger at INFO
    leaky = f"push failed: https://x-access-token:{TOKEN}@example.com/acme/gitops.git"
    errors: list[str] = []

    with caplog.at_level(logging.DEBUG):
        pull = case.host.open_or_update(draft(title=f"rollout {TOKEN}", body=leaky))
        case.host.comment(pull.number, leaky)
        case.host.merge(pull.number, message=f"rollout(wisdom): step 1\n\n{leaky}")
        # A misbehaving proxy echoes the request's credentials in its error answer.
        comments = {"github": r"/comments$", "gitlab": r"/notes$", "gitea": r"/comments$"}
        case.fake.fail("POST", comments[case.kind], 422, body={"message": f"bad: {TOKEN}"})
        with pytest.raises(HostError) as caught:
            case.host.comment(pull.number, "hello")
        errors.append(str(caught.value))
        with pytest.raises(HostError) as caught:
            case.build(token=TOKEN + "-wrong").pulls_for_prefix(PREFIX, base="main")
        errors.append(str(caught.value))

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logged = "\n".join(handler.format(record) for record in caplog.records)
    assert TOKEN not in logged
    if case.kind == "github":  # PyGithub logs answers at DEBUG: the filter scrubbed this one
        assert "bad: ***" in logged
    assert all(TOKEN not in message for message in errors), errors
    assert "bad: ***" in errors[0]
    stored = case.store.pulls[pull.number]
    assert TOKEN not in stored.title + stored.body + "".join(stored.comments)
    assert TOKEN not in stored.merge_message
    assert "x-access-token:***@example.com" in stored.body
    for request in case.fake.requests:
        outside = [v for k, v in request.headers.items() if k != "authorization"]
        assert TOKEN not in request.path + str(request.query) + "".join(outside)
        assert TOKEN.encode() not in request.body
    authorizations = {r.headers.get("authorization", "") for r in case.fake.requests}
    assert any(value.endswith(f" {TOKEN}") for value in authorizations)


def test_redacting_filter_scrubs_arguments_and_tracebacks() -> None:
    register_secret("filter-secret-0123")
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "got %s", ("filter-secret-0123",), None
    )
    try:
        raise RuntimeError("boom filter-secret-0123")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()

    assert RedactingFilter().filter(record)

    assert record.getMessage() == "got ***"
    assert record.exc_text is not None
    assert "boom ***" in record.exc_text and "filter-secret-0123" not in record.exc_text


# -- git over HTTPS --------------------------------------------------------------------------


def test_git_http_env_gives_git_the_token_without_argv_or_url(tmp_path: Path) -> None:
    remote = "https://github.com/acme/gitops.git"
    env = git_http_env(
        remote_url=remote,
        username="x-access-token",
        credentials=StaticToken("ghs_git_token_0123456789", origin="test"),
    )

    shown = subprocess.run(
        ["git", "config", "--get-urlmatch", "http.extraheader", remote],
        env={**os.environ, **env, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    elsewhere = subprocess.run(
        ["git", "config", "--get-urlmatch", "http.extraheader", "https://evil.example/x.git"],
        env={**os.environ, **env, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"},
        capture_output=True,
        text=True,
    ).stdout.strip()

    scheme, _, encoded = shown.removeprefix("Authorization: ").partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == "x-access-token:ghs_git_token_0123456789"
    assert elsewhere == "", "the header is sent to that remote only"
    assert "ghs_git_token_0123456789" not in " ".join(env.values())
    assert redact(shown) == "Authorization: Basic ***"


# -- the registry's entry point ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "user"),
    [("github", "x-access-token"), ("gitlab", "oauth2"), ("gitea", "gitops-rollout")],
)
def test_registry_builds_each_forge_from_the_environment(kind: str, user: str) -> None:
    token = f"{kind}-registry-token-0123456789"
    config = HostConfig(
        remote=f"https://{kind}.example/acme/gitops.git",
        api_url=f"https://{kind}.example/api",
        environ={f"GITOPS_ROLLOUT_{kind.upper()}_TOKEN": token},
    )
    host = make_host(kind, config)

    assert str(host) == f"{kind} acme/gitops"
    environment = git_credentials(host, "https://bot:old@" + f"{kind}.example/acme/gitops.git")
    assert environment is not None
    env = environment()
    # Keyed on the URL git is given once the workspace moved credentials out of it.
    assert env["GIT_CONFIG_KEY_0"] == f"http.https://{kind}.example/acme/gitops.git.extraHeader"
    header = env["GIT_CONFIG_VALUE_0"].removeprefix("Authorization: Basic ")
    assert base64.b64decode(header).decode() == f"{user}:{token}"


def test_registry_takes_the_repository_from_the_config() -> None:
    host = make_host(
        "gitlab",
        HostConfig(
            remote="git@gitlab-deploy:mirror.git",
            api_url="https://gitlab.example.com",
            repository="platform/ml/gitops",
            token="cfg-token-0123456789",
        ),
    )

    assert str(host) == "gitlab platform/ml/gitops"


@pytest.mark.parametrize(
    "remote",
    ["git@github.com:acme/gitops.git", "ssh://git@github.com/acme/gitops.git"],
    ids=["scp", "ssh-url"],
)
def test_ssh_remotes_get_no_token_from_us(remote: str) -> None:
    host = make_host("github", HostConfig(remote=remote, token="cfg-token-0123456789"))

    assert git_credentials(host, remote) is None


FROM_CONFIG = [
    pytest.param(
        GitHubHost,
        "https://github.com/acme/gitops.git",
        None,
        "acme/gitops",
        "https://api.github.com",
        id="github-https",
    ),
    pytest.param(
        GitHubHost,
        "git@github.com:acme/gitops.git",
        None,
        "acme/gitops",
        "https://api.github.com",
        id="github-scp",
    ),
    pytest.param(
        GitHubHost,
        "https://ghe.example.com/acme/gitops",
        None,
        "acme/gitops",
        "https://ghe.example.com/api/v3",
        id="github-enterprise",
    ),
    pytest.param(
        GitLabHost,
        "https://gitlab.example.com/platform/ml/gitops.git",
        None,
        "platform/ml/gitops",
        "https://gitlab.example.com",
        id="gitlab-subgroups",
    ),
    pytest.param(
        GiteaHost,
        "http://gitea.local:3000/acme/gitops.git",
        None,
        "acme/gitops",
        "http://gitea.local:3000",
        id="gitea-port",
    ),
    pytest.param(
        GiteaHost,
        "ssh://git@gitea.local:2222/acme/gitops.git",
        "https://gitea.local/git",
        "acme/gitops",
        "https://gitea.local/git",
        id="gitea-api-url-given",
    ),
]


@pytest.mark.parametrize(("cls", "remote", "api_url", "repository", "expected_api"), FROM_CONFIG)
def test_from_config_finds_the_repository_and_api(
    cls: type[GitHubHost | GitLabHost | GiteaHost],
    remote: str,
    api_url: str | None,
    repository: str,
    expected_api: str,
) -> None:
    host = cls.from_config(HostConfig(remote=remote, token="cfg-token-0123456789", api_url=api_url))

    assert str(host).split(" ", 1)[1] == repository
    assert host.api_url == expected_api
    assert host.credentials.token() == "cfg-token-0123456789"


def test_from_config_refuses_a_remote_without_a_repository_and_hides_its_password() -> None:
    with pytest.raises(HostError) as caught:
        GitHubHost.from_config(
            HostConfig(remote="https://bot:pass-w0rd-123@github.com/", token="t")
        )

    assert str(caught.value) == (
        "cannot tell the host and repository from the remote 'https://github.com/'; "
        "use a clone URL such as https://host/owner/name.git"
    )
