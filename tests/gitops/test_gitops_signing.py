"""Signed bot commits: what Flux ``verify`` and Argo CD's signature keys check, with real keys.

The SSH key is made by ssh-keygen in a tmp dir, the OpenPGP key by gpg in a tmp home; git signs
and `git verify-commit` checks, as Flux and Argo CD would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from gitops_helpers import BOT, T0, Remote

from gitops_rollout.errors import GitWriteError
from gitops_rollout.gitops.changeset import ChangeSet
from gitops_rollout.gitops.repo import (
    CommitMessage,
    CommitRequest,
    PushOutcome,
    Signing,
    SigningFormat,
    Workspace,
    branch_name,
)

ROUTING = "clusters/prod/ml/wisdom/rollout/routing.yaml"
BRANCHES = [branch_name(cluster="prod", namespace="ml", model=m) for m in ("wisdom", "iris")]


def _needs(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing: apt-get install openssh-client gnupg")
        pytest.skip(f"{tool} is not installed")


def requests(ws: Workspace, weight: int) -> list[CommitRequest]:
    out = []
    for branch in BRANCHES:
        model = branch.rsplit("/", 1)[1]
        path = f"clusters/prod/ml/{model}/rollout/routing.yaml"
        message = CommitMessage(
            f"rollout({model}): prod step -> {weight}%",
            "- candidate healthy",
            (("Rollout-Decision", f"{model}-{weight}"),),
        )
        desired: dict[str, bytes | None] = {path: f"w: {weight}\n".encode()}
        out.append(CommitRequest(branch, ChangeSet.build(ws.tree(), desired), message))
    return out


@pytest.fixture
def ssh_key(tmp_path: Path) -> Path:
    _needs("ssh-keygen")
    key = tmp_path / "keys" / "bot"
    key.parent.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bot", "-f", str(key)],
        check=True,
    )
    return key


def test_ssh_signed_commits_verify_and_reruns_keep_them(
    remote: Remote, tmp_path: Path, ssh_key: Path
) -> None:
    signing = Signing(str(ssh_key), SigningFormat.SSH)
    with Workspace.open(
        str(remote.path), cache_dir=tmp_path / "cache", identity=BOT, signing=signing
    ) as ws:
        ws.fetch()
        results = ws.publish(requests(ws, 10), now=T0)
        assert [r.outcome for r in results] == [PushOutcome.PUSHED] * 2

        allowed = tmp_path / "allowed_signers"
        allowed.write_text(f"{BOT.email} {Path(f'{ssh_key}.pub').read_text()}")
        for result in results:
            assert result.sha is not None
            verified = subprocess.run(
                [
                    "git",
                    "--git-dir",
                    str(remote.path),
                    "-c",
                    f"gpg.ssh.allowedSignersFile={allowed}",
                    "verify-commit",
                    result.sha,
                ],
                capture_output=True,
                text=True,
            )
            assert verified.returncode == 0, verified.stderr
            assert f'Good "git" signature for {BOT.email}' in verified.stderr
            # The same commit as unsigned, but for the signature: identity, date, message.
            [line] = remote.log(result.sha, "%an <%ae>|%cn <%ce>|%ct|%P|%s", "-1")
            assert line == (
                f"gitops-rollout <{BOT.email}>|gitops-rollout <{BOT.email}>|"
                f"{int(T0.timestamp())}|{remote.sha('main')}|"
                f"rollout({result.branch.rsplit('/', 1)[1]}): prod step -> 10%"
            )

        # A rerun recognises its own signed commits: nothing is rebuilt or force-pushed.
        ws.fetch()
        again = ws.publish(requests(ws, 10), now=T0 + timedelta(minutes=5))
        assert [r.outcome for r in again] == [PushOutcome.UNCHANGED] * 2
        assert [r.sha for r in again] == [r.sha for r in results]
        assert ws.human_edits() == {}


def test_an_unsigned_commit_fails_verification(remote: Remote, tmp_path: Path) -> None:
    """The check the test above relies on does reject the fast path's unsigned commits."""
    with Workspace.open(str(remote.path), cache_dir=tmp_path / "cache", identity=BOT) as ws:
        ws.fetch()
        [result, _] = ws.publish(requests(ws, 10), now=T0)
    assert result.sha is not None
    code = subprocess.run(
        ["git", "--git-dir", str(remote.path), "verify-commit", result.sha], capture_output=True
    ).returncode
    assert code != 0


def test_openpgp_signed_commit_verifies(remote: Remote, tmp_path: Path) -> None:
    _needs("gpg")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-generate-key",
            f"gitops-rollout <{BOT.email}>",
            "ed25519",
            "sign",
            "never",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    signing = Signing(BOT.email, SigningFormat.OPENPGP)
    with Workspace.open(
        str(remote.path),
        cache_dir=tmp_path / "cache",
        identity=BOT,
        signing=signing,
        env={"GNUPGHOME": str(home)},
    ) as ws:
        ws.fetch()
        [result, _] = ws.publish(requests(ws, 10), now=T0)
    assert result.sha is not None
    verified = subprocess.run(
        ["git", "--git-dir", str(remote.path), "verify-commit", result.sha],
        env=env,
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stderr
    assert "Good signature" in verified.stderr
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)


def test_a_key_git_cannot_use_is_an_error_naming_the_setting(
    remote: Remote, tmp_path: Path
) -> None:
    _needs("ssh-keygen")
    missing = tmp_path / "no-such-key"
    with Workspace.open(
        str(remote.path),
        cache_dir=tmp_path / "cache",
        identity=BOT,
        signing=Signing(str(missing), SigningFormat.SSH),
    ) as ws:
        ws.fetch()
        with pytest.raises(GitWriteError) as caught:
            ws.publish(requests(ws, 10), now=T0)
    message = str(caught.value)
    assert message.startswith(f"cannot sign the commit for {BRANCHES[0]} with the ssh key")
    assert message.endswith("check GITOPS_ROLLOUT_SIGNING_KEY and GITOPS_ROLLOUT_SIGNING_FORMAT")
    assert remote.head(BRANCHES[0]) is None


@pytest.mark.parametrize(
    ("key", "form", "expected"),
    [
        pytest.param("", "ssh", None, id="no-key-unsigned"),
        pytest.param("/keys/bot", "ssh", Signing("/keys/bot", SigningFormat.SSH), id="ssh"),
        pytest.param("ABCD1234", "OpenPGP", Signing("ABCD1234"), id="openpgp-any-case"),
    ],
)
def test_signing_from_the_settings(key: str, form: str, expected: Signing | None) -> None:
    from gitops_rollout.composition import signing_of
    from gitops_rollout.settings import GitSettings

    assert signing_of(GitSettings(signing_key=key, signing_format=form)) == expected


def test_an_unknown_signing_format_is_bad_input() -> None:
    from gitops_rollout.composition import SettingError, signing_of
    from gitops_rollout.settings import GitSettings

    with pytest.raises(SettingError) as caught:
        signing_of(GitSettings(signing_key="k", signing_format="x509"))

    assert str(caught.value) == (
        "GITOPS_ROLLOUT_SIGNING_FORMAT is 'x509'; use one of: openpgp, ssh"
    )
    assert caught.value.exit_code == 1
