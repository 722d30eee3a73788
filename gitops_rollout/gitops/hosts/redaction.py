"""A process-wide redactor: every token a host uses is scrubbed from text and log records.

`auth`'s token sources register each token and JWT they hand out; `redact()` scrubs them from
any text (PR bodies, comments, errors) and `RedactingFilter` from log records. A module of its
own, importing no HTTP client, so that the command line can install the filter on its log
handlers without loading the forges' libraries.
"""

from __future__ import annotations

import logging
import threading

MASK = "***"
MIN_SECRET_LENGTH = 8
"""Shorter strings are not redacted: scrubbing them would mangle ordinary words."""

# Library loggers that print request or response details at DEBUG level.
LIBRARY_LOGGERS = (
    "github.Requester",
    "github.GithubRetry",
    "urllib3.connectionpool",
    "urllib3.util.retry",
    "gitops_rollout.gitops.hosts",
)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Remember `value` so that `redact` scrubs it from now on."""
    if len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """`text` with every registered secret replaced by ``***``."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Scrubs registered secrets from a record's message and traceback.

    The hosts attach it to the chatty library loggers; the CLI should also add it to its
    handlers so that records from any logger are covered.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_filter = RedactingFilter()


def protect_library_loggers() -> None:
    """Attach the redacting filter to the loggers that see our HTTP traffic (idempotent)."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)
