"""One Settings object, in small groups, built from command-line flags and environment variables.

Every field says its unit and why its default was chosen. The CLI is the only place that builds
Settings; stages receive the group they need, never the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "GITOPS_ROLLOUT_"


def env(name: str, default: str = "") -> str:
    """An environment variable of ours (``GITOPS_ROLLOUT_<NAME>``)."""
    return os.environ.get(ENV_PREFIX + name, default)


@dataclass(frozen=True)
class GitSettings:
    remote: str = ""
    """URL or path of the GitOps repository's remote. Empty: the --repo checkout's origin."""
    base: str = "main"
    """Branch Argo CD / Flux sync from; PRs target it."""
    branch_prefix: str = "gitops-rollout/"
    """Prefix of the bot's branches: one per (cluster, namespace, model)."""
    author_name: str = "gitops-rollout"
    author_email: str = "gitops-rollout@users.noreply.local"
    cache_dir: Path = field(
        default_factory=lambda: Path(env("CACHE", "~/.cache/gitops-rollout")).expanduser()
    )
    """Where the bot keeps its clone of the remote and parse caches (reused across passes)."""
    push_attempts: int = 4
    """Tries for a push rejected because the branch moved (fetch, rebuild, retry, with jitter)."""
    signing_key: str = field(default_factory=lambda: env("SIGNING_KEY"))
    """$GITOPS_ROLLOUT_SIGNING_KEY: signs the bot's commits for Flux ``verify`` / Argo CD
    signature checks; an OpenPGP key id, or an SSH private key file. Empty: unsigned (signing
    costs one gpg or ssh-keygen process per commit)."""
    signing_format: str = field(default_factory=lambda: env("SIGNING_FORMAT", "openpgp"))
    """$GITOPS_ROLLOUT_SIGNING_FORMAT: ``openpgp`` (git's default) or ``ssh``."""


@dataclass(frozen=True)
class HostSettings:
    kind: str = "local"
    """local, github, gitlab or gitea."""
    url: str = ""
    """API base URL (GitHub Enterprise, self-hosted GitLab or Gitea). Empty: the public default."""
    repository: str = ""
    """owner/name (GitHub, Gitea) or group/project (GitLab)."""


@dataclass(frozen=True)
class MetricsSettings:
    provider: str = ""
    """prometheus or file; empty means none (policies with analysis then hold)."""
    url: str = ""
    """Prometheus base URL, or the metrics file path for the file provider."""
    timeout_s: float = 10.0
    """Per-request timeout, seconds: long enough for a range query over a day of 1m steps."""


@dataclass(frozen=True)
class ScheduleSettings:
    interval_s: float = 60.0
    """Default pass interval per policy, seconds (a policy's analysis.interval overrides it)."""
    jitter_s: float = 5.0
    """Random delay added to each run, seconds, so replicas and policies do not align."""
    listen: str = "0.0.0.0:8080"
    """Address of /healthz, /readyz and /metrics."""


@dataclass(frozen=True)
class Settings:
    repo: Path = Path(".")
    git: GitSettings = GitSettings()
    host: HostSettings = HostSettings()
    metrics: MetricsSettings = MetricsSettings()
    schedule: ScheduleSettings = ScheduleSettings()
