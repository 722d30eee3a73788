"""Evidence read from a real Prometheus holding a backfilled, exactly known history."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_history import CROWD, INTERVALS, NOW, SINCE, at
from prometheus_harness import PrometheusServer, RecordingProxy

from gitops_rollout.metrics import (
    PrometheusOptions,
    ProviderConfig,
    QueryError,
    RolloutRef,
    VersionRef,
    collect,
    create_provider,
)
from gitops_rollout.metrics.evidence import Evidence
from gitops_rollout.policy import CustomMetric, MetricKind, TargetKind

FAST = PrometheusOptions(retries=0, read_timeout=10)


def rollout(
    model: str,
    versions: dict[str, str],
    *,
    namespace: str = "shop",
    target: TargetKind = TargetKind.DEPLOYMENT,
    metrics: tuple[CustomMetric, ...] = (),
) -> RolloutRef:
    """A rollout of `model`; `versions` maps version label to the object serving it."""
    return RolloutRef(
        key=f"test/{namespace}/{model}",
        target=target,
        model=model,
        namespace=namespace,
        versions=tuple(VersionRef(v, name, namespace) for v, name in versions.items()),
        since=SINCE,
        interval=at(60) - at(0),
        metrics=metrics,
    )


def evidence_for(url: str, *rollouts: RolloutRef) -> dict[str, Evidence]:
    collected = collect(create_provider("prometheus", ProviderConfig(url, FAST)), rollouts, now=NOW)
    assert collected.errors == {}
    evidence: dict[str, Evidence] = collected.evidence
    return evidence


def column(value: float, *overrides: tuple[int, float]) -> list[float]:
    out = [value] * INTERVALS
    for index, other in overrides:
        out[index] = other
    return out


def test_good_candidate_and_its_baseline(prometheus: PrometheusServer) -> None:
    ev = evidence_for(
        prometheus.url, rollout("fashionmnist", {"v1": "fashionmnist-v1", "v2": "fashionmnist-v2"})
    )["test/shop/fashionmnist"]

    assert ev.intervals == INTERVALS
    assert ev.boundaries[0] == SINCE and ev.boundaries[-1] == at(1200)
    v1, v2 = ev.series["v1"], ev.series["v2"]
    # Two pods, each 4 scrapes x (20 + 5 from two sources, 2 x 404, 1 x 503); only 5xx errs.
    assert v1.requests.tolist() == column(224)
    assert v1.errors.tolist() == column(8)
    assert v1.latency_sum_ms.tolist() == column(8000)
    assert v1.bucket_bounds_ms == (25.0, 50.0, 100.0, 250.0)
    assert v1.buckets.tolist() == [[80, 64, 48, 24, 8]] * INTERVALS
    assert not v1.missing.any()
    assert v2.requests.tolist() == column(100)
    assert v2.errors.tolist() == column(0)
    assert v2.buckets.tolist() == [[48, 32, 16, 4, 0]] * INTERVALS
    assert not v2.missing.any()
    assert any("istio_requests_total" in q for q in ev.queries)


def test_bad_candidate_errors_counted_from_their_first_appearance(
    prometheus: PrometheusServer,
) -> None:
    ev = evidence_for(prometheus.url, rollout("ranker", {"v1": "ranker-v1", "v2": "ranker-v2"}))[
        "test/shop/ranker"
    ]

    v2 = ev.series["v2"]
    # The 500 series first appears inside interval 10: its first value is all new errors.
    assert v2.errors.tolist() == [0.0] * 10 + [20.0] * 10
    assert v2.requests.tolist() == [80.0] * 10 + [100.0] * 10
    assert ev.series["v1"].errors.sum() == 0
    assert not v2.missing.any()


def test_counter_reset_counts_from_zero_again(prometheus: PrometheusServer) -> None:
    ev = evidence_for(
        prometheus.url, rollout("recommender", {"v1": "recommender-v1", "v2": "recommender-v2"})
    )["test/shop/recommender"]

    # The process restarted inside interval 5; after the restart it counted two scrapes.
    assert ev.series["v1"].requests.tolist() == column(40, (5, 20))
    assert not ev.series["v1"].missing.any()
    assert ev.series["v2"].requests.tolist() == column(40)


def test_scrape_gap_marks_intervals_missing_not_zero(prometheus: PrometheusServer) -> None:
    ev = evidence_for(prometheus.url, rollout("gappy", {"v1": "gappy-v1", "v2": "gappy-v2"}))[
        "test/shop/gappy"
    ]

    v2 = ev.series["v2"]
    assert np.flatnonzero(v2.missing).tolist() == [8, 9, 10]
    assert v2.requests.tolist() == column(40, (8, 0), (9, 0), (10, 0))
    assert not ev.series["v1"].missing.any()


def test_version_without_any_data_is_missing_everywhere(prometheus: PrometheusServer) -> None:
    ev = evidence_for(prometheus.url, rollout("silent", {"v1": "silent-v1", "v2": "silent-v2"}))[
        "test/shop/silent"
    ]

    assert ev.series["v2"].missing.all()
    assert ev.series["v2"].requests.sum() == 0
    assert ev.series["v2"].bucket_bounds_ms == ()
    assert not ev.series["v1"].missing.any()


def test_seldon_separate_namespaces_latency_in_ms_and_feedback(
    prometheus: PrometheusServer,
) -> None:
    iris = RolloutRef(
        key="test/iris",
        target=TargetKind.SELDON,
        model="iris",
        namespace="default",
        versions=(
            VersionRef("iris-v1", "iris", "ns-baseline"),
            VersionRef("iris-v2", "iris", "ns-candidate"),
        ),
        since=SINCE,
        interval=at(60) - at(0),
    )
    ev = evidence_for(prometheus.url, iris)["test/iris"]

    for version, feedback in (("iris-v1", 4), ("iris-v2", 12)):
        series = ev.series[version]
        # Feedback forwarded to the model (service /send-feedback) is not a prediction.
        assert series.requests.tolist() == column(40)
        assert series.latency_sum_ms.tolist() == column(2000)
        assert series.bucket_bounds_ms == (5.0, 75.0, 100.0)
        assert series.buckets.tolist() == [[4, 20, 12, 4]] * INTERVALS
        assert series.custom["feedback"].tolist() == column(feedback)


def test_modelmesh_versions_by_virtual_model_id(prometheus: PrometheusServer) -> None:
    wisdom = rollout(
        "wisdom",
        {"v0": "wisdom-0", "v1": "wisdom-1"},
        namespace="modelmesh-serving",
        target=TargetKind.KSERVE_MODELMESH,
    )
    ev = evidence_for(prometheus.url, wisdom)["test/modelmesh-serving/wisdom"]

    assert ev.series["v0"].requests.tolist() == column(80)
    assert ev.series["v0"].errors.tolist() == column(0)
    assert ev.series["v1"].requests.tolist() == column(88)
    assert ev.series["v1"].errors.tolist() == column(8)
    assert ev.series["v1"].latency_sum_ms.tolist() == column(1200)
    assert ev.series["v1"].buckets.shape == (INTERVALS, 0)


def test_kserve_predictor_workloads(prometheus: PrometheusServer) -> None:
    flowers = rollout(
        "flowers",
        {"v1": "flowers-0", "v2": "flowers-1"},
        namespace="kserve-test",
        target=TargetKind.KSERVE,
    )
    ev = evidence_for(prometheus.url, flowers)["test/kserve-test/flowers"]

    assert ev.series["v1"].requests.tolist() == column(32)
    assert ev.series["v2"].requests.tolist() == column(24)


def test_policy_metrics_split_by_version_label_or_run_per_version(
    prometheus: PrometheusServer,
) -> None:
    metrics = (
        CustomMetric(
            name="conversion",
            kind=MetricKind.RATIO,
            query='sum by (version) (app_conversions_total{namespace="$namespace", app="$model"})',
            denominator='sum by (version) (app_visits_total{namespace="$namespace", app="$model"})',
        ),
        CustomMetric(
            name="revenue",
            kind=MetricKind.COUNTER,
            query='app_revenue_total{namespace="$namespace", app="$model", version="$version"}',
        ),
    )
    ev = evidence_for(
        prometheus.url,
        rollout(
            "fashionmnist", {"v1": "fashionmnist-v1", "v2": "fashionmnist-v2"}, metrics=metrics
        ),
    )["test/shop/fashionmnist"]

    v1, v2 = ev.series["v1"].custom, ev.series["v2"].custom
    assert v1["conversion"].tolist() == column(8)
    assert v2["conversion"].tolist() == column(12)
    assert v1["conversion/denominator"].tolist() == column(200)
    assert v1["revenue"].tolist() == column(28)
    assert v2["revenue"].tolist() == column(44)
    assert 'app_revenue_total{namespace="shop", app="fashionmnist", version="v2"}' in ev.queries


def test_syntax_error_names_the_policy_field_and_spares_other_rollouts(
    prometheus: PrometheusServer,
) -> None:
    broken = CustomMetric(name="broken", kind=MetricKind.COUNTER, query="sum(rate(app_total[5m])")
    bad = rollout("fashionmnist", {"v1": "fashionmnist-v1"}, metrics=(broken,))
    good = rollout("ranker", {"v1": "ranker-v1"})
    provider = create_provider("prometheus", ProviderConfig(prometheus.url, FAST))

    collected = collect(provider, [bad, good], now=NOW)

    error = collected.errors["test/shop/fashionmnist"]
    assert isinstance(error, QueryError)
    assert error.field == "spec.analysis.metrics[0].query"
    assert error.error_type == "bad_data"
    assert "parse error" in error.error and "unclosed left parenthesis" in error.error
    assert str(error).startswith(
        "test/shop/fashionmnist: spec.analysis.metrics[0].query: Prometheus rejected the query"
    )
    with pytest.raises(QueryError):
        collected["test/shop/fashionmnist"]
    assert collected["test/shop/ranker"].series["v1"].requests.sum() == 100 * INTERVALS


def test_query_count_does_not_grow_with_models(prometheus: PrometheusServer) -> None:
    def crowd(i: int) -> RolloutRef:
        name = f"model-{i:02d}"
        return rollout(name, {"v1": f"{name}-v1", "v2": f"{name}-v2"}, namespace="crowd")

    counts = []
    with RecordingProxy(prometheus.url) as proxy:
        provider = create_provider("prometheus", ProviderConfig(proxy.url, FAST))
        for size in (1, CROWD):
            proxy.reset()
            collected = collect(provider, [crowd(i) for i in range(size)], now=NOW)
            assert len(collected.evidence) == size and not collected.errors
            counts.append(proxy.count())
            last = collected.evidence[f"test/crowd/model-{size - 1:02d}"]
            assert last.series["v2"].requests.tolist() == column(20)

    assert counts[0] == counts[1] == 3  # requests, latency sum, latency buckets


def test_prometheus_unreachable_is_a_metrics_error() -> None:
    from prometheus_harness import free_port

    url = f"http://127.0.0.1:{free_port()}"
    options = PrometheusOptions(retries=1, backoff=0.01, connect_timeout=1)
    provider = create_provider("prometheus", ProviderConfig(url, options))

    collected = collect(provider, [rollout("ranker", {"v1": "ranker-v1"})], now=NOW)

    error = collected.errors["test/shop/ranker"]
    assert f"Prometheus at {url} failed 2 times: cannot connect" in str(error)
    assert "Connection refused" in str(error)
