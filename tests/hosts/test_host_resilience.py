"""Transient failures, timeouts and rate limits, the same on every host; GitHub's own limits."""

from __future__ import annotations

import pytest

from gitops_rollout.errors import HostError

from .conftest import HEAD, NOW, PREFIX, HostCase, draft

FIRST_BACKOFF = 0.75
"""backoff_initial 1 s, half fixed plus half jittered with the tests' jitter of 0.5."""


def test_a_502_is_retried_after_a_backoff(case: HostCase) -> None:
    case.store.add(HEAD)
    case.fake.fail("GET", case.list_path, 502, body={"message": "Bad Gateway"})

    pulls = case.host.pulls_for_prefix(PREFIX, base="main")

    assert len(pulls) == 1
    assert case.sleeps.waits == [FIRST_BACKOFF]


def test_a_502_on_create_is_retried_and_opens_one_pull_request(case: HostCase) -> None:
    create = {"github": r"/pulls$", "gitlab": r"/merge_requests$", "gitea": r"/pulls$"}[case.kind]
    case.fake.fail("POST", create, 502, body={"message": "Bad Gateway"})

    pull = case.host.open_or_update(draft())

    assert [p.number for p in case.store.open_pulls(HEAD)] == [pull.number]
    assert case.sleeps.waits == [FIRST_BACKOFF]


def test_backoff_doubles_up_to_its_cap_then_the_failure_is_a_host_error(case: HostCase) -> None:
    case.fake.fail("GET", case.list_path, 503, body={"message": "Service Unavailable"}, times=10)

    with pytest.raises(HostError, match="503") as caught:
        case.host.pulls_for_prefix(PREFIX, base="main")

    # attempts=4: three retries, waiting 0.75, 1.5 and 3 s (capped at backoff_max=8).
    assert case.sleeps.waits == [0.75, 1.5, 3.0]
    assert "next pass" in str(caught.value)


def test_a_timeout_is_retried(case: HostCase) -> None:
    case.store.add(HEAD)
    case.fake.stall("GET", case.list_path, case.policy.timeout + 0.5)

    pulls = case.host.pulls_for_prefix(PREFIX, base="main")

    assert len(pulls) == 1
    assert case.sleeps.waits == [FIRST_BACKOFF]


def test_429_waits_as_long_as_retry_after_says(case: HostCase) -> None:
    case.store.add(HEAD)
    case.fake.fail(
        "GET",
        case.list_path,
        429,
        body={"message": "Too Many Requests"},
        headers={"Retry-After": "7"},
    )

    assert len(case.host.pulls_for_prefix(PREFIX, base="main")) == 1
    assert case.sleeps.waits == [7.0]


def test_a_rate_limit_longer_than_a_pass_waits_fails_fast(case: HostCase) -> None:
    case.fake.fail(
        "GET",
        case.list_path,
        429,
        body={"message": "Too Many Requests"},
        headers={"Retry-After": "3600"},
    )

    with pytest.raises(HostError, match="rate limited for another 3600 s"):
        case.host.pulls_for_prefix(PREFIX, base="main")
    assert case.sleeps.waits == []


def test_rate_limited_on_every_try_is_a_host_error(case: HostCase) -> None:
    case.fake.fail(
        "GET",
        case.list_path,
        429,
        body={"message": "Too Many Requests"},
        headers={"Retry-After": "1"},
        times=10,
    )

    with pytest.raises(HostError, match="rate limited"):
        case.host.pulls_for_prefix(PREFIX, base="main")
    assert case.sleeps.waits == [1.0, 1.0, 1.0]
    assert len([r for r in case.fake.requests if r.method == "GET"]) == 4


def test_a_rejected_token_names_the_variable_to_fix(case: HostCase) -> None:
    host = case.build(token="wrong-token-0123456789")

    with pytest.raises(HostError) as caught:
        host.pulls_for_prefix(PREFIX, base="main")

    message = str(caught.value)
    assert "401" in message
    assert f"GITOPS_ROLLOUT_{case.kind.upper()}_TOKEN" in message
    assert "wrong-token-0123456789" not in message
    assert case.sleeps.waits == [], "a 401 is not retried"


# -- GitHub's 403 rate limits ----------------------------------------------------------------

GITHUB_LIMITS = [
    pytest.param(
        {
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes "
            "before you try again."
        },
        {},
        60.0,
        id="secondary-limit-message",
    ),
    pytest.param(
        {"message": "You have exceeded a secondary rate limit."},
        {"Retry-After": "12"},
        12.0,
        id="secondary-limit-retry-after",
    ),
    pytest.param(
        {"message": "API rate limit exceeded for installation ID 1."},
        {
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(NOW) + 30),
        },
        31.0,
        id="primary-limit-reset",
    ),
]


@pytest.fixture
def github(case: HostCase) -> HostCase:
    if case.kind != "github":
        pytest.skip("GitHub's 403 rate limits")
    return case


@pytest.mark.parametrize("case", ["github"], indirect=True)
@pytest.mark.parametrize(("body", "headers", "wait"), GITHUB_LIMITS)
def test_github_403_rate_limits_wait_then_succeed(
    github: HostCase, body: dict[str, str], headers: dict[str, str], wait: float
) -> None:
    github.store.add(HEAD)
    github.fake.fail("GET", github.list_path, 403, body=body, headers=headers)

    assert len(github.host.pulls_for_prefix(PREFIX, base="main")) == 1
    assert github.sleeps.waits == [wait]


@pytest.mark.parametrize("case", ["github"], indirect=True)
def test_github_403_refusal_is_not_retried(github: HostCase) -> None:
    github.fake.fail(
        "GET", github.list_path, 403, body={"message": "Resource not accessible by integration"}
    )

    with pytest.raises(HostError, match="403 Resource not accessible by integration") as caught:
        github.host.pulls_for_prefix(PREFIX, base="main")

    assert "permission" in str(caught.value)
    assert github.sleeps.waits == []


@pytest.mark.parametrize("case", ["github"], indirect=True)
def test_github_primary_limit_resetting_in_an_hour_fails_fast(github: HostCase) -> None:
    github.fake.fail(
        "GET",
        github.list_path,
        403,
        body={"message": "API rate limit exceeded for installation ID 1."},
        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 3600)},
    )

    with pytest.raises(HostError, match="rate limited"):
        github.host.pulls_for_prefix(PREFIX, base="main")
    assert github.sleeps.waits == []


@pytest.mark.parametrize("case", ["github"], indirect=True)
def test_github_auto_merge_disabled_on_the_repository_is_a_refusal(github: HostCase) -> None:
    github.fake.allow_auto_merge = False  # type: ignore[attr-defined]
    pull = github.store.add(HEAD, checks="pending")

    result = github.host.merge(pull.number, message="m")

    assert not result.merged and not result.queued
    assert "auto merge is not allowed" in result.reason.lower()
