"""Sharding and the per-shard Lease, through the real client against the fake API server."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import config as k8s_config

from gitops_rollout.lease import (
    LeaseSettings,
    ShardAssignment,
    ShardingError,
    ShardLease,
    ShardLeases,
    shard_of,
)

from .fake_apiserver import FakeApiServer

QUICK = LeaseSettings(
    namespace="gitops-system",
    lease_duration=0.6,
    renew_deadline=0.4,
    retry_period=0.05,
    request_timeout=1.0,
)


def client(kubeconfig: Path) -> Any:
    return k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), context="prod-east", persist_config=False
    )


def lease_of(api: FakeApiServer, shard: int = 0) -> dict[str, Any]:
    found = api.get(
        "coordination.k8s.io/v1", "Lease", "gitops-system", f"gitops-rollout-shard-{shard}"
    )
    assert found is not None
    return found


def test_shard_of_is_stable_and_spreads_policies() -> None:
    assert shard_of("iris", 2) == shard_of("iris", 2)
    assert [shard_of(p, 3) for p in ("iris", "scoring", "wisdom", "fashionmnist")] == [
        int.from_bytes(__import__("hashlib").sha256(p.encode()).digest()[:8], "big") % 3
        for p in ("iris", "scoring", "wisdom", "fashionmnist")
    ]
    spread = Counter(shard_of(f"model-{i}", 4) for i in range(400))
    assert set(spread) == {0, 1, 2, 3}
    assert min(spread.values()) > 60


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ShardAssignment(0, 1)),
        ({"GITOPS_ROLLOUT_SHARDS": "2", "POD_NAME": "gitops-rollout-1"}, ShardAssignment(1, 2)),
        ({"GITOPS_ROLLOUT_SHARDS": "2", "HOSTNAME": "gitops-rollout-0"}, ShardAssignment(0, 2)),
        (
            {"GITOPS_ROLLOUT_SHARDS": "3", "GITOPS_ROLLOUT_SHARD": "2", "POD_NAME": "x-0"},
            ShardAssignment(2, 3),
        ),
        ({"GITOPS_ROLLOUT_SHARDS": "1", "POD_NAME": "gitops-rollout-7"}, ShardAssignment(0, 1)),
    ],
    ids=["default", "pod-ordinal", "hostname-ordinal", "explicit-index", "single-shard"],
)
def test_shard_assignment_from_env(env: dict[str, str], expected: ShardAssignment) -> None:
    assert ShardAssignment.from_env(env, hostname="laptop") == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"GITOPS_ROLLOUT_SHARDS": "2", "POD_NAME": "laptop"},
            "GITOPS_ROLLOUT_SHARDS=2 but the shard index is unknown: set GITOPS_ROLLOUT_SHARD, "
            "or run as a StatefulSet pod named <name>-<ordinal> (pod name 'laptop')",
        ),
        (
            {"GITOPS_ROLLOUT_SHARDS": "2", "POD_NAME": "gitops-rollout-2"},
            "shard index 2 (from pod gitops-rollout-2) is outside 0..1: set "
            "GITOPS_ROLLOUT_SHARDS to the StatefulSet's replica count",
        ),
        ({"GITOPS_ROLLOUT_SHARDS": "two"}, "GITOPS_ROLLOUT_SHARDS='two': must be an integer"),
        ({"GITOPS_ROLLOUT_SHARDS": "0"}, "GITOPS_ROLLOUT_SHARDS=0: must be at least 1"),
    ],
    ids=["no-ordinal", "ordinal-too-big", "not-a-number", "zero"],
)
def test_bad_shard_environment_says_how_to_fix_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ShardingError) as caught:
        ShardAssignment.from_env(env)
    assert str(caught.value) == message


def test_two_replicas_contend_only_one_holds_and_the_other_takes_over_after_expiry(
    api: FakeApiServer, kubeconfig: Path
) -> None:
    a = ShardLease(client(kubeconfig), shard=0, holder="replica-a", settings=QUICK)
    b = ShardLease(client(kubeconfig), shard=0, holder="replica-b", settings=QUICK)

    assert a.try_acquire_or_renew() is True
    for _ in range(8):  # both keep trying for longer than a lease duration
        assert b.try_acquire_or_renew() is False
        assert a.try_acquire_or_renew() is True
        time.sleep(0.1)
    assert (a.holds(), b.holds()) == (True, False)
    assert lease_of(api)["spec"]["holderIdentity"] == "replica-a"

    # replica-a stops renewing (hung or partitioned): it stops claiming the shard at its renew
    # deadline, before replica-b may take over at expiry.
    took_over_at = None
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and took_over_at is None:
        if b.try_acquire_or_renew():
            took_over_at = time.monotonic()
            assert not a.holds(), "two holders at once"
        time.sleep(0.02)
    assert took_over_at is not None
    lease = lease_of(api)
    assert lease["spec"]["holderIdentity"] == "replica-b"
    assert lease["spec"]["leaseTransitions"] == 1
    assert a.try_acquire_or_renew() is False


class _Racing(ShardLease):
    """Lets another replica write between this one's read and its write."""

    rival: ShardLease | None = None

    def _get(self) -> dict[str, Any] | None:
        found = super()._get()
        if self.rival is not None:
            self.rival.try_acquire_or_renew()
        return found


@pytest.mark.parametrize(("race", "method"), [("create", "POST"), ("update", "PUT")])
def test_a_lost_write_race_is_a_409_and_never_a_second_holder(
    api: FakeApiServer, kubeconfig: Path, race: str, method: str
) -> None:
    a = ShardLease(client(kubeconfig), shard=0, holder="replica-a", settings=QUICK)
    clock = [0.0]
    b = _Racing(
        client(kubeconfig), shard=0, holder="replica-b", settings=QUICK, monotonic=lambda: clock[0]
    )
    if race == "update":
        assert a.try_acquire_or_renew()
        assert b.try_acquire_or_renew() is False  # b sees a's record at t=0
        clock[0] = 100.0  # by b's clock, a has not renewed for ages: b will try to take over

    b.rival = a  # ...but a writes between b's read and b's write

    assert b.try_acquire_or_renew() is False
    assert (a.holds(), b.holds()) == (True, False)
    assert lease_of(api)["spec"]["holderIdentity"] == "replica-a"
    assert api.responses[-1] == (
        method,
        "/apis/coordination.k8s.io/v1/namespaces/gitops-system/leases"
        + ("/gitops-rollout-shard-0" if race == "update" else ""),
        409,
    )


def test_shard_leases_thread_never_double_holds_and_release_hands_over(
    api: FakeApiServer, kubeconfig: Path
) -> None:
    a = ShardLeases(client(kubeconfig), shards=[0], holder="replica-a", settings=QUICK)
    b = ShardLeases(client(kubeconfig), shards=[0], holder="replica-b", settings=QUICK)
    a.start()
    b.start()
    try:
        held: list[tuple[bool, bool]] = []
        for _ in range(40):
            held.append((a.holds(0), b.holds(0)))
            time.sleep(0.02)
        assert (True, True) not in held
        assert held[-1] in ((True, False), (False, True))
        holder, other = (a, b) if held[-1][0] else (b, a)

        started = time.monotonic()
        holder.stop(release=True)
        deadline = started + 2
        while time.monotonic() < deadline and not other.holds(0):
            time.sleep(0.02)
        assert other.holds(0)
        assert not holder.holds(0)
        assert time.monotonic() - started < QUICK.lease_duration, "released, not expired"
    finally:
        a.stop(release=False)
        b.stop(release=False)


def test_lease_times_are_micro_times(api: FakeApiServer, kubeconfig: Path) -> None:
    lease = ShardLease(client(kubeconfig), shard=3, holder="replica-a", settings=QUICK)
    assert lease.try_acquire_or_renew()
    spec = lease_of(api, 3)["spec"]
    assert spec["renewTime"].endswith("Z") and len(spec["renewTime"].split(".")[1]) == 7
    assert spec["leaseDurationSeconds"] == 1
