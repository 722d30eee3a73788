"""The ``file`` backend: a recording read through the same evidence code as Prometheus."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from gitops_rollout.metrics import (
    MetricsFileError,
    ProviderConfig,
    RolloutRef,
    VersionRef,
    collect,
    create_provider,
)
from gitops_rollout.policy import CustomMetric, MetricKind, TargetKind

RECORDING = """\
apiVersion: gitops-rollout.dev/v1alpha1
kind: MetricsRecording
versions:
  - namespace: default
    model: fashionmnist
    version: v1
    samples:
      - {at: "2024-05-01T09:59:00Z", requests: 0, custom: {user-engagement: 0}}
      - {at: "2024-05-01T10:00:00Z", requests: 100, custom: {user-engagement: 5}}
      - {at: "2024-05-01T10:01:00Z", requests: 200, custom: {user-engagement: 10}}
      - {at: "2024-05-01T10:02:00Z", requests: 300, custom: {user-engagement: 15}}
      # the process restarted: counting starts again from zero
      - {at: "2024-05-01T10:03:00Z", requests: 40, custom: {user-engagement: 2}}
      - {at: "2024-05-01T10:04:00Z", requests: 140, custom: {user-engagement: 7}}
      - {at: "2024-05-01T10:05:00Z", requests: 240, custom: {user-engagement: 12}}
  - namespace: default
    model: fashionmnist
    version: v2
    bucketsMs: [50, 100]
    samples:
      - {at: "2024-05-01T09:59:00Z", requests: 0, errors: 0, latencySumMs: 0, buckets: [0, 0, 0]}
      - {at: "2024-05-01T10:00:00Z", requests: 10, errors: 1, latencySumMs: 400,
         buckets: [6, 9, 10]}
      - {at: "2024-05-01T10:01:00Z", requests: 20, errors: 2, latencySumMs: 800,
         buckets: [12, 18, 20]}
      # no scrape at 10:02
      - {at: "2024-05-01T10:03:00Z", requests: 40, errors: 4, latencySumMs: 1600,
         buckets: [24, 36, 40]}
      - {at: "2024-05-01T10:04:00Z", requests: 50, errors: 5, latencySumMs: 2000,
         buckets: [30, 45, 50]}
      - {at: "2024-05-01T10:05:00Z", requests: 60, errors: 6, latencySumMs: 2400,
         buckets: [36, 54, 60]}
"""

SINCE = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
NOW = datetime(2024, 5, 1, 10, 5, 30, tzinfo=UTC)


def fashionmnist(*versions: str, metrics: tuple[CustomMetric, ...] = ()) -> RolloutRef:
    return RolloutRef(
        key="fashionmnist",
        target=TargetKind.DEPLOYMENT,
        model="fashionmnist",
        namespace="default",
        versions=tuple(VersionRef(v, f"fashionmnist-{v}", "default") for v in versions),
        since=SINCE,
        interval=timedelta(minutes=1),
        metrics=metrics,
    )


def test_recording_gives_increments_resets_and_gaps(tmp_path: Path) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_text(RECORDING)
    provider = create_provider("file", ProviderConfig(str(path)))
    engagement = CustomMetric(name="user-engagement", kind=MetricKind.COUNTER, query="unused")
    slo = CustomMetric(name="slo-breaches", kind=MetricKind.COUNTER, query="unused")

    ev = collect(provider, [fashionmnist("v1", "v2", "v3", metrics=(engagement, slo))], now=NOW)[
        "fashionmnist"
    ]

    assert ev.boundaries == tuple(SINCE + timedelta(minutes=m) for m in range(6))
    v1, v2, v3 = ev.series["v1"], ev.series["v2"], ev.series["v3"]
    assert v1.requests.tolist() == [100, 100, 40, 100, 100]
    assert v1.custom["user-engagement"].tolist() == [5, 5, 2, 5, 5]
    assert not v1.missing.any()
    assert v1.bucket_bounds_ms == ()

    assert v2.missing.tolist() == [False, True, True, False, False]
    assert v2.requests.tolist() == [10, 0, 0, 10, 10]
    assert v2.errors.tolist() == [1, 0, 0, 1, 1]
    assert v2.latency_sum_ms.tolist() == [400, 0, 0, 400, 400]
    assert v2.bucket_bounds_ms == (50.0, 100.0)
    assert v2.buckets.tolist() == [[6, 3, 1], [0, 0, 0], [0, 0, 0], [6, 3, 1], [6, 3, 1]]
    # Observed but without this counter: no events yet.
    assert v2.custom["user-engagement"].tolist() == [0, 0, 0, 0, 0]

    assert v3.missing.all() and v3.requests.sum() == 0  # not recorded: no data, not zeros
    # No version has it: unknown, not zero.
    assert all(math.isnan(x) for x in v1.custom["slo-breaches"])
    assert ev.queries == (
        f"{path}: default/fashionmnist/v1",
        f"{path}: default/fashionmnist/v2",
        f"{path}: default/fashionmnist/v3 (not recorded)",
    )


def test_too_early_for_a_whole_interval(tmp_path: Path) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_text(RECORDING)
    provider = create_provider("file", ProviderConfig(str(path)))

    ev = collect(provider, [fashionmnist("v1")], now=SINCE + timedelta(seconds=65))["fashionmnist"]

    assert ev.intervals == 0
    assert ev.boundaries == (SINCE,)
    assert ev.series["v1"].requests.shape == (0,)


HEADER = "apiVersion: gitops-rollout.dev/v1alpha1\nkind: MetricsRecording\n"
ENTRY = "versions:\n  - namespace: default\n    model: m\n    version: v1\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "apiVersion: gitops-rollout.dev/v1alpha1\nkind: List\nversions: []\n",
            "m.yaml:2: kind: Input should be 'MetricsRecording' (fix: start the file with "
            "apiVersion: gitops-rollout.dev/v1alpha1 and kind: MetricsRecording)",
            id="wrong-kind",
        ),
        pytest.param(
            HEADER + ENTRY + "    samples:\n      - at: 2024-05-01T10:00:00Z\n        request: 5\n",
            "m.yaml:9: versions[0].samples[0].request: unknown field "
            "(fix: remove it or check its spelling)",
            id="misspelt-counter",
        ),
        pytest.param(
            HEADER + ENTRY + "    bucketsMs: [50, 100]\n    samples:\n"
            "      - {at: 2024-05-01T10:00:00Z, buckets: [1, 2]}\n",
            "m.yaml:4: versions[0]: samples[0].buckets has 2 values; bucketsMs has 2 edges, "
            "so give 3 (the last is +Inf)",
            id="bucket-count",
        ),
        pytest.param(
            HEADER + ENTRY + "    samples:\n      - {at: 2024-05-01T10:01:00Z}\n"
            "      - {at: 2024-05-01T10:00:00Z}\n",
            "m.yaml:4: versions[0]: samples[1].at is not after samples[0].at",
            id="time-goes-back",
        ),
        pytest.param(
            HEADER + ENTRY + "    samples:\n      - {at: 2024-05-01T10:00:00Z, requests: -1}\n",
            "m.yaml:8: versions[0].samples[0].requests: Input should be greater than or equal to 0",
            id="negative",
        ),
        pytest.param(
            HEADER + ENTRY + "    samples: []\n",
            "m.yaml:7: versions[0].samples: is empty (fix: add at least one entry)",
            id="no-samples",
        ),
    ],
)
def test_invalid_recordings_say_where_and_why(text: str, message: str) -> None:
    from gitops_rollout.metrics.file import parse

    with pytest.raises(MetricsFileError) as caught:
        parse(text, file="m.yaml")
    assert str(caught.value) == message
    assert caught.value.exit_code == 1


def test_unreadable_recording_is_a_metrics_error(tmp_path: Path) -> None:
    from gitops_rollout.errors import MetricsError

    with pytest.raises(MetricsError, match="cannot read metrics file"):
        create_provider("file", ProviderConfig(str(tmp_path / "absent.yaml")))


def test_evidence_arrays_are_aligned(tmp_path: Path) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_text(RECORDING)
    provider = create_provider("file", ProviderConfig(str(path)))
    ev = collect(provider, [fashionmnist("v1", "v2")], now=NOW)["fashionmnist"]

    for series in ev.series.values():
        assert series.requests.dtype == np.float64
        assert series.requests.shape == series.missing.shape == (ev.intervals,)
        assert series.buckets.shape[0] == ev.intervals


def test_the_documented_example_is_a_valid_recording() -> None:
    import textwrap

    from gitops_rollout.metrics import file

    assert file.__doc__ is not None
    example = textwrap.dedent(file.__doc__.split("::\n", 1)[1].split("\n\n", 1)[0])
    recording = file.parse(example, file="docstring")
    assert [v.version for v in recording.versions] == ["v2"]
    assert recording.versions[0].samples[1].custom == {"user-engagement": 31}
