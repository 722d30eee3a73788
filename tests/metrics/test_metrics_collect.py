"""Pure pieces of the metrics stage: increments, boundaries, templates, the registry."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from gitops_rollout.metrics import (
    PROVIDERS,
    ProviderConfig,
    RolloutRef,
    UnknownProviderError,
    VersionRef,
    create_provider,
)
from gitops_rollout.metrics.base import CounterId, CounterKind
from gitops_rollout.metrics.collect import increments, window_for
from gitops_rollout.metrics.queries import (
    FAMILIES,
    Source,
    counters_of,
    custom_queries,
    is_error,
    render,
    series_keys,
)
from gitops_rollout.policy import CustomMetric, MetricKind, TargetKind

nan = math.nan


@pytest.mark.parametrize(
    ("values", "expected", "gaps"),
    [
        pytest.param([0, 10, 25, 45], [15, 20], [], id="steady"),
        pytest.param([0, 10, 4, 14], [4, 10], [], id="reset-counts-the-new-value"),
        pytest.param([nan, nan, 3, 7], [3, 4], [], id="new-series-counts-from-zero"),
        pytest.param([5, nan, 9, 12], [0, 3], [0], id="absent-at-start-but-seen-before"),
        pytest.param([0, 10, nan, 30], [0, 0], [0, 1], id="scrape-gap"),
        pytest.param([0, 10, 20, nan], [10, 0], [], id="gone-for-good"),
        pytest.param([nan, nan, nan, nan], [0, 0], [], id="never-there"),
        pytest.param([0, 10, nan, nan, 50], [0, 0, 0], [0, 1, 2], id="long-gap"),
    ],
)
def test_increments(values: list[float], expected: list[float], gaps: list[int]) -> None:
    inc, gap = increments(np.array(values, dtype=np.float64))
    assert inc.tolist() == expected
    assert np.flatnonzero(gap).tolist() == gaps


def make_rollout(since: datetime, interval: timedelta = timedelta(minutes=1)) -> RolloutRef:
    return RolloutRef(
        key="r",
        target=TargetKind.DEPLOYMENT,
        model="m",
        namespace="ns",
        versions=(VersionRef("v1", "m-v1", "ns"),),
        since=since,
        interval=interval,
    )


def test_boundaries_sit_on_the_interval_grid() -> None:
    since = datetime(2024, 5, 1, 10, 0, 17, tzinfo=UTC)
    window = window_for(make_rollout(since), now=datetime(2024, 5, 1, 10, 4, 5, tzinfo=UTC))

    # Counting starts at the next whole minute; 10:04:00 is only 5 s old, under the settle time.
    assert window.grid.instants == tuple(datetime(2024, 5, 1, 10, m, tzinfo=UTC) for m in range(4))


def test_naive_times_are_utc() -> None:
    aware = window_for(
        make_rollout(datetime(2024, 5, 1, 10, tzinfo=UTC)), now=datetime(2024, 5, 1, 11)
    )
    assert aware.grid.end == datetime(2024, 5, 1, 10, 59, tzinfo=UTC)


def test_rollout_refuses_a_version_twice() -> None:
    with pytest.raises(ValueError, match="r: version v1 is listed twice"):
        RolloutRef(
            key="r",
            target=TargetKind.DEPLOYMENT,
            model="m",
            namespace="ns",
            versions=(VersionRef("v1", "a", "ns"), VersionRef("v1", "b", "ns")),
            since=datetime(2024, 5, 1, tzinfo=UTC),
            interval=timedelta(minutes=1),
        )


def test_istio_template_is_per_namespace_and_per_process() -> None:
    family = FAMILIES[Source.ISTIO]
    promql = render(family.templates[0], family, namespace="shop", window=timedelta(minutes=1))

    assert promql == (
        "sum by (destination_workload_namespace, destination_workload, pod, instance, "
        "response_code, grpc_response_status) (last_over_time(istio_requests_total{"
        'destination_workload_namespace="shop", reporter="destination"}[59999ms]))'
    )


@pytest.mark.parametrize(
    ("source", "labels", "error"),
    [
        pytest.param(Source.ISTIO, {"response_code": "503"}, True, id="http-503"),
        pytest.param(Source.ISTIO, {"response_code": "404"}, False, id="http-404"),
        pytest.param(
            Source.ISTIO,
            {"response_code": "200", "grpc_response_status": "14"},
            True,
            id="grpc-unavailable",
        ),
        pytest.param(
            Source.ISTIO,
            {"response_code": "200", "grpc_response_status": "3"},
            False,
            id="grpc-invalid-argument",
        ),
        pytest.param(Source.MODELMESH, {"code": "INTERNAL"}, True, id="mm-internal"),
        pytest.param(Source.MODELMESH, {"code": "NOT_FOUND"}, False, id="mm-not-found"),
        pytest.param(Source.SELDON, {"code": "500"}, True, id="seldon-500"),
        pytest.param(Source.SELDON, {"code": "200"}, False, id="seldon-200"),
    ],
)
def test_which_codes_are_errors(source: Source, labels: dict[str, str], error: bool) -> None:
    assert is_error(FAMILIES[source], labels) is error


@pytest.mark.parametrize(
    ("target", "labels", "keys"),
    [
        pytest.param(
            TargetKind.DEPLOYMENT,
            {"destination_workload": "fashionmnist-v2"},
            ("fashionmnist-v2",),
            id="deployment",
        ),
        pytest.param(
            TargetKind.KSERVE,
            {"destination_workload": "flowers-1-predictor-00003-deployment"},
            ("flowers-1-predictor-00003-deployment", "flowers-1-predictor-00003", "flowers-1"),
            id="kserve-serverless",
        ),
        pytest.param(
            TargetKind.KSERVE,
            {"destination_workload": "flowers-1-predictor-default"},
            ("flowers-1-predictor-default", "flowers-1"),
            id="kserve-raw-old",
        ),
        pytest.param(
            TargetKind.KSERVE_MODELMESH,
            {"vModelId": "", "modelId": "wisdom-1__isvc-6b2eb0b8bf"},
            ("wisdom-1__isvc-6b2eb0b8bf", "wisdom-1"),
            id="modelmesh-by-model-id",
        ),
        pytest.param(
            TargetKind.SELDON,
            {"seldon_deployment_id": "iris", "predictor_name": "canary"},
            ("iris/canary",),
            id="seldon",
        ),
    ],
)
def test_series_find_their_version(
    target: TargetKind, labels: dict[str, str], keys: tuple[str, ...]
) -> None:
    assert series_keys(target, labels) == keys


def test_seldon_bucket_edges_become_milliseconds() -> None:
    family = FAMILIES[Source.SELDON]
    buckets = family.templates[2]
    assert counters_of(family, buckets, {"le": "0.075"}) == [CounterId(CounterKind.BUCKET, "75.0")]
    assert counters_of(family, buckets, {"le": "+Inf"}) == [CounterId(CounterKind.BUCKET, "+Inf")]


def test_custom_queries_run_as_few_times_as_their_placeholders_allow() -> None:
    versions = (
        VersionRef("v1", "iris", "ns-baseline"),
        VersionRef("v2", "iris", "ns-candidate"),
    )
    rollout = RolloutRef(
        key="iris",
        target=TargetKind.SELDON,
        model="iris",
        namespace="default",
        versions=versions,
        since=datetime(2024, 5, 1, tzinfo=UTC),
        interval=timedelta(minutes=1),
        metrics=(
            CustomMetric(name="a", kind=MetricKind.COUNTER, query='x{app="$model"}'),
            CustomMetric(name="b", kind=MetricKind.COUNTER, query='x{ns="$namespace"}'),
            CustomMetric(
                name="c",
                kind=MetricKind.RATIO,
                query='x{v="$version"}',
                denominator='y{v="$version"}',
            ),
        ),
    )

    rendered = [(q.name, q.field, q.promql, len(q.versions)) for q in custom_queries(rollout)]

    assert rendered == [
        ("a", "spec.analysis.metrics[0].query", 'x{app="iris"}', 2),
        ("b", "spec.analysis.metrics[1].query", 'x{ns="ns-baseline"}', 1),
        ("b", "spec.analysis.metrics[1].query", 'x{ns="ns-candidate"}', 1),
        ("c", "spec.analysis.metrics[2].query", 'x{v="v1"}', 1),
        ("c", "spec.analysis.metrics[2].query", 'x{v="v2"}', 1),
        ("c/denominator", "spec.analysis.metrics[2].denominator", 'y{v="v1"}', 1),
        ("c/denominator", "spec.analysis.metrics[2].denominator", 'y{v="v2"}', 1),
    ]


def test_unknown_provider_kind_is_refused_loudly() -> None:
    assert sorted(PROVIDERS) == ["file", "prometheus"]
    with pytest.raises(UnknownProviderError) as caught:
        create_provider("datadog", ProviderConfig("https://example.invalid"))
    assert str(caught.value) == "unknown metrics provider 'datadog'; use one of: prometheus, file"
    assert caught.value.exit_code == 1


def test_rollout_from_policy_counts_after_the_warm_up() -> None:
    from gitops_rollout.policy import RolloutPolicy

    policy = RolloutPolicy.model_validate(
        {
            "apiVersion": "gitops-rollout.dev/v1alpha1",
            "kind": "RolloutPolicy",
            "metadata": {"name": "fashionmnist"},
            "spec": {
                "namespace": "default",
                "target": {"kind": "deployment"},
                "strategy": {"type": "progressive", "steps": [{"weight": 50}]},
                "clusters": [{"name": "prod"}],
                "analysis": {
                    "interval": "30s",
                    "warmup": "2m",
                    "metrics": [{"name": "revenue", "kind": "counter", "query": "x"}],
                },
            },
        }
    )
    step_start = datetime(2024, 5, 1, 10, 0, 5, tzinfo=UTC)

    ref = RolloutRef.from_policy(
        policy,
        key="prod/default/fashionmnist",
        versions=[VersionRef("v1", "fashionmnist-v1", "default")],
        step_start=step_start,
    )

    assert ref.since == step_start + timedelta(minutes=2)
    assert ref.interval == timedelta(seconds=30)
    assert [m.name for m in ref.metrics] == ["revenue"]
    assert (ref.model, ref.namespace, ref.target) == (
        "fashionmnist",
        "default",
        TargetKind.DEPLOYMENT,
    )
