"""Live inventory through the real `kubernetes` client against the fake API server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gitops_rollout.errors import InventoryError
from gitops_rollout.inventory.live import (
    AccessDenied,
    ClusterConnection,
    LiveInventory,
    LiveSettings,
    from_kubeconfig,
    read_cluster,
    snapshot_statuses,
)
from gitops_rollout.inventory.manifests import with_status
from gitops_rollout.inventory.model import (
    ClusterModels,
    Inventory,
    Kind,
    ModelVersion,
    ObjectRef,
    Readiness,
    Role,
)

from . import objects as o
from .fake_apiserver import FakeApiServer

FAST = LiveSettings(
    connect_timeout=1.0, read_timeout=5.0, backoff_initial=0.05, backoff_max=0.2, watch_timeout=30
)
ISVC = ObjectRef(Kind.INFERENCE_SERVICE, "models", "iris-1")


def eventually(check: Callable[[], bool], *, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def connect(kubeconfig: Path, *clusters: str, **kw: object) -> list[ClusterConnection]:
    return from_kubeconfig(clusters or ("prod-east",), kubeconfig=kubeconfig, **kw)  # type: ignore[arg-type]


@pytest.fixture
def live(kubeconfig: Path) -> Iterator[LiveInventory]:
    inventory = LiveInventory(connect(kubeconfig), settings=FAST)
    inventory.start()
    try:
        yield inventory
    finally:
        inventory.stop()


def test_snapshot_reads_watched_objects_with_server_side_selectors(
    api: FakeApiServer, kubeconfig: Path
) -> None:
    api.put(o.isvc("iris-1", ready=True))
    api.put(
        o.isvc(
            "iris-0",
            ready=False,
            labels=o.model_labels("iris", "v0", o.ITER8),
            message="predictor not ready",
        )
    )
    api.put(o.deployment("scoring-2", available=False))
    api.put(o.deployment("unrelated", available=True, labels={"app": "unrelated"}))
    api.put(o.seldon("wisdom-a", state="Available"))
    api.put(o.service("scoring-2"))
    api.put(o.virtual_service("iris", content_hash="0123456789abcdef"))

    snapshot = snapshot_statuses(connect(kubeconfig), settings=FAST)

    assert snapshot.unreachable == {}
    readiness = {ref.name: s.readiness for (_, ref), s in snapshot.statuses.items()}
    assert readiness == {
        "iris-1": Readiness.READY,
        "iris-0": Readiness.NOT_READY,
        "scoring-2": Readiness.NOT_READY,
        "wisdom-a": Readiness.READY,
    }
    iter8 = snapshot.statuses[("prod-east", ObjectRef(Kind.INFERENCE_SERVICE, "models", "iris-0"))]
    assert iter8.reason == "Ready=False: predictor not ready"
    routing = snapshot.object("prod-east", ObjectRef("VirtualService", "models", "iris"))
    assert routing is not None
    assert routing.annotations["gitops-rollout.dev/content-hash"] == "0123456789abcdef"
    # Filtering happened on the server: every list carried a watch-label selector.
    selectors = {q.get("labelSelector") for m, _, q in api.requests if m == "GET"}
    assert selectors == {
        "gitops-rollout.dev/watch=true",
        "iter8.tools/watch=true",
        "app.kubernetes.io/managed-by=gitops-rollout",
    }


def test_readiness_flip_is_seen_after_a_modified_event(
    api: FakeApiServer, live: LiveInventory
) -> None:
    api.put(o.isvc("iris-1", ready=False))
    assert live.wait_synced(5)
    assert eventually(lambda: ("prod-east", ISVC) in live.statuses())
    assert live.statuses()[("prod-east", ISVC)].readiness is Readiness.NOT_READY

    api.put(o.isvc("iris-1", ready=True))

    assert eventually(lambda: live.statuses()[("prod-east", ISVC)].readiness is Readiness.READY)
    lists = [q for m, p, q in api.requests if p.endswith("inferenceservices") and "watch" not in q]
    assert len(lists) == 2, "one list per selector; the flip arrived by watch, not a relist"


def test_label_removed_reads_as_deleted(api: FakeApiServer, live: LiveInventory) -> None:
    api.put(o.isvc("iris-1", ready=True))
    assert live.wait_synced(5)
    assert eventually(lambda: ("prod-east", ISVC) in live.statuses())

    api.put(o.isvc("iris-1", ready=True, labels={"app.kubernetes.io/name": "iris"}))

    assert eventually(lambda: ("prod-east", ISVC) not in live.statuses())


@pytest.mark.parametrize("gone_as_http", [False, True], ids=["error-event", "http-410"])
def test_watch_restart_after_410_loses_no_event(
    api: FakeApiServer, live: LiveInventory, gone_as_http: bool
) -> None:
    api.gone_as_http = gone_as_http
    api.put(o.isvc("iris-1", ready=False))
    api.put(o.isvc("iris-2", ready=True))
    assert live.wait_synced(5)
    assert eventually(lambda: len(live.statuses()) == 2)

    # While the watches are down, three changes happen and the history is compacted past
    # them: resuming from the old resourceVersion must fail with 410 and force a relist.
    with api.frozen():
        api.drop_watches()
        api.put(o.isvc("iris-1", ready=True))
        api.delete("serving.kserve.io/v1beta1", "InferenceService", "models", "iris-2")
        api.put(o.isvc("iris-3", ready=False))
        api.compact()

    def caught_up() -> bool:
        names = {ref.name: s.readiness for (_, ref), s in live.statuses().items()}
        return names == {"iris-1": Readiness.READY, "iris-3": Readiness.NOT_READY}

    assert eventually(caught_up)
    lists = [q for m, p, q in api.requests if p.endswith("inferenceservices") and "watch" not in q]
    assert len(lists) >= 3, "the 410 forced a relist"
    assert live.unreachable() == {}


def test_watch_resumes_from_the_last_bookmark(api: FakeApiServer, live: LiveInventory) -> None:
    api.put(o.isvc("iris-1", ready=True))
    assert live.wait_synced(5)
    assert eventually(lambda: ("prod-east", ISVC) in live.statuses())
    for i in range(3):  # other kinds move the resourceVersion on
        api.put(o.deployment(f"scoring-{i}", available=True))
    time.sleep(0.2)
    api.bookmark()
    bookmark_rv = str(api.current_rv)
    time.sleep(0.2)

    api.drop_watches()

    def resumed_from_bookmark() -> bool:
        return any(
            q.get("resourceVersion") == bookmark_rv and q.get("watch") == "true"
            for m, p, q in api.requests
            if p.endswith("inferenceservices")
        )

    assert eventually(resumed_from_bookmark)
    assert all(q.get("allowWatchBookmarks") == "true" for _, _, q in api.requests if q.get("watch"))


def test_unreachable_cluster_is_reported_and_holds(tmp_path: Path, api: FakeApiServer) -> None:
    staging = FakeApiServer().start()
    try:
        api.put(o.isvc("iris-1", ready=True))
        staging.put(o.isvc("iris-1", ready=True))
        kubeconfig = api.write_kubeconfig(
            tmp_path / "kubeconfig", contexts={"prod-east": api.url, "staging": staging.url}
        )
        with LiveInventory(connect(kubeconfig, "prod-east", "staging"), settings=FAST) as live:
            assert live.wait_synced(5)
            assert eventually(lambda: len(live.statuses()) == 2)

            staging.stop()  # connection refused from now on

            assert eventually(lambda: "staging" in live.unreachable())
            reason = live.unreachable()["staging"]
            assert "cannot reach the API server" in reason
            assert "refused" in reason.lower()
            assert set(live.statuses()) == {("prod-east", ISVC)}

            # What reconcile does with it: the cluster is marked, its versions stay Unknown.
            inventory = _inventory_with(ISVC, "prod-east", "staging")
            with_status(inventory, live.statuses())
            inventory.unreachable.update(live.unreachable())
            assert inventory.versions("staging", "iris")[0].status.readiness is Readiness.UNKNOWN
            assert inventory.versions("prod-east", "iris")[0].ready
            assert list(inventory.unreachable) == ["staging"]

            staging.start(port=staging.port)  # back on the same address: recovers by itself
            assert eventually(lambda: live.unreachable() == {})
            assert ("staging", ISVC) in live.statuses()
    finally:
        staging.stop()


def test_snapshot_of_an_unreachable_cluster_does_not_stop_the_others(
    tmp_path: Path, api: FakeApiServer
) -> None:
    api.put(o.isvc("iris-1", ready=True))
    down = FakeApiServer().start()
    down.stop()
    kubeconfig = api.write_kubeconfig(
        tmp_path / "kubeconfig", contexts={"prod-east": api.url, "staging": down.url}
    )

    snapshot = snapshot_statuses(
        connect(kubeconfig, "prod-east", "staging", "eu-west"), settings=FAST
    )

    assert set(snapshot.statuses) == {("prod-east", ISVC)}
    assert set(snapshot.unreachable) == {"staging", "eu-west"}
    assert "refused" in snapshot.unreachable["staging"].lower()
    assert "has no context named 'eu-west'" in snapshot.unreachable["eu-west"]


@pytest.mark.parametrize(
    ("namespaces", "where"),
    [((), "in all namespaces (cluster scope)"), (("models",), "in namespace models")],
    ids=["cluster-wide", "namespaced"],
)
def test_rbac_denial_is_a_clear_inventory_error(
    api: FakeApiServer, kubeconfig: Path, namespaces: tuple[str, ...], where: str
) -> None:
    api.deny("seldondeployments", "list")
    (connection,) = connect(kubeconfig, namespaces={"prod-east": namespaces})

    with pytest.raises(InventoryError) as caught:
        read_cluster(connection, settings=FAST)

    err = caught.value
    assert isinstance(err, AccessDenied)
    assert (err.resource.kind, err.namespace, err.verb) == (
        "SeldonDeployment",
        namespaces[0] if namespaces else None,
        "list",
    )
    assert str(err).startswith(
        f"cluster prod-east: access denied: cannot list SeldonDeployment "
        f"(seldondeployments.machinelearning.seldon.io) {where}: "
    )
    assert 'cannot list resource "seldondeployments"' in str(err)
    assert str(err).endswith(
        "(fix: grant list on seldondeployments in API group 'machinelearning.seldon.io' to the "
        "reconciler's ServiceAccount, ClusterRole gitops-rollout-read)"
    )
    snapshot = snapshot_statuses([connection], settings=FAST)
    assert snapshot.unreachable == {"prod-east": str(err)}


def test_watch_denied_holds_the_cluster_in_the_daemon(api: FakeApiServer, kubeconfig: Path) -> None:
    api.deny("virtualservices", "watch")
    with LiveInventory(connect(kubeconfig), settings=FAST) as live:
        assert eventually(lambda: "prod-east" in live.errors())
        err = live.errors()["prod-east"]
        assert isinstance(err, AccessDenied)
        assert err.verb == "watch"
        assert "cannot watch VirtualService" in live.unreachable()["prod-east"]
        assert live.statuses() == {}


def test_a_kind_without_its_crd_reads_as_empty(api: FakeApiServer, kubeconfig: Path) -> None:
    api.uninstall("seldondeployments")
    api.put(o.isvc("iris-1", ready=True))

    snapshot = snapshot_statuses(connect(kubeconfig), settings=FAST)

    assert snapshot.unreachable == {}
    assert set(snapshot.statuses) == {("prod-east", ISVC)}


def test_rejected_token_is_reported(tmp_path: Path, api: FakeApiServer) -> None:
    api.token = "rotated"
    kubeconfig = FakeApiServer(token="stale").write_kubeconfig(
        tmp_path / "kubeconfig", contexts={"prod-east": api.url}
    )

    snapshot = snapshot_statuses(connect(kubeconfig), settings=FAST)

    assert "rejected the credentials (401)" in snapshot.unreachable["prod-east"]
    assert "stale" not in snapshot.unreachable["prod-east"], "tokens never appear in messages"


def _inventory_with(ref: ObjectRef, *clusters: str) -> Inventory:
    inventory = Inventory()
    for cluster in clusters:
        version = ModelVersion(
            ref=ref, model="iris", version="v1", role=Role.CANDIDATE, file="f.yaml", doc_index=0
        )
        inventory.clusters[cluster] = ClusterModels(cluster, {"iris": [version]})
    return inventory
