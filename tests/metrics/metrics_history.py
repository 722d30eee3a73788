"""The exact counter history the metrics tests backfill into a real Prometheus.

Time runs in 15 s scrapes; rollouts use 60 s intervals, so every interval holds four scrapes
and every increment below is four times a per-scrape step. History starts at ``T0 - 600`` and
ends at ``T0 + 1200``; ``NOW`` is 30 s later, so a rollout counting from ``T0`` has 21
boundaries and 20 intervals, interval i running from T0 + 60 i to T0 + 60 (i + 1).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prometheus_harness import OpenMetrics

SCRAPE = 15
INTERVAL = 60
T0 = int((time.time() - 3 * 3600) // 3600 * 3600)
HISTORY_START = T0 - 600
HISTORY_END = T0 + 1200
NOW = datetime.fromtimestamp(HISTORY_END + 30, tz=UTC)
SINCE = datetime.fromtimestamp(T0, tz=UTC)
INTERVALS = 20
CROWD = 50


def at(offset: int) -> datetime:
    return datetime.fromtimestamp(T0 + offset, tz=UTC)


def counter(
    om: OpenMetrics,
    name: str,
    labels: dict[str, str],
    per_scrape: float,
    *,
    start: int = HISTORY_START,
    initial: float = 0.0,
    reset_at: int | None = None,
    gap: tuple[int, int] | None = None,
) -> None:
    """A counter rising `per_scrape` each scrape; it restarts from zero just before `reset_at`
    and has no samples strictly inside `gap` (it keeps counting meanwhile)."""
    value = initial
    samples = []
    for t in range(start, HISTORY_END + 1, SCRAPE):
        if t > start:
            value += per_scrape
        if reset_at is not None and t - SCRAPE < reset_at <= t:
            value = per_scrape
        if gap is not None and gap[0] < t < gap[1]:
            continue
        samples.append((float(t), value))
    om.add(name, labels, samples)


def istio_requests(
    om: OpenMetrics, ns: str, workload: str, pod: str, code: str, per_scrape: float, **kw: object
) -> None:
    labels = {
        "destination_workload_namespace": ns,
        "destination_workload": workload,
        "reporter": "destination",
        "response_code": code,
        "pod": pod,
        "source_workload": "frontend",
    }
    counter(om, "istio_requests_total", labels, per_scrape, **kw)  # type: ignore[arg-type]


ISTIO_EDGES = ("25", "50", "100", "250", "+Inf")


def istio_latency(
    om: OpenMetrics, ns: str, workload: str, pod: str, cumulative: list[int], sum_ms: float
) -> None:
    base = {
        "destination_workload_namespace": ns,
        "destination_workload": workload,
        "reporter": "destination",
        "pod": pod,
    }
    for le, step in zip(ISTIO_EDGES, cumulative, strict=True):
        counter(om, "istio_request_duration_milliseconds_bucket", {**base, "le": le}, step)
    counter(om, "istio_request_duration_milliseconds_sum", base, sum_ms)


def build_history() -> OpenMetrics:
    om = OpenMetrics()
    # fashionmnist: v1 on two pods (200 from two sources, 404, 503), v2 one pod, no errors.
    for pod in ("p1", "p2"):
        istio_requests(om, "shop", "fashionmnist-v1", pod, "200", 20)
        labels = {
            "destination_workload_namespace": "shop",
            "destination_workload": "fashionmnist-v1",
            "reporter": "destination",
            "response_code": "200",
            "pod": pod,
            "source_workload": "batch",
        }
        counter(om, "istio_requests_total", labels, 5)
        istio_requests(om, "shop", "fashionmnist-v1", pod, "404", 2)
        istio_requests(om, "shop", "fashionmnist-v1", pod, "503", 1)
        # The client's sidecar reports the same requests again; they must not count.
        counter(om, "istio_requests_total", {**labels, "reporter": "source"}, 1000)
        istio_latency(om, "shop", "fashionmnist-v1", pod, [10, 18, 24, 27, 28], 1000)
    istio_requests(om, "shop", "fashionmnist-v2", "q1", "200", 25)
    istio_latency(om, "shop", "fashionmnist-v2", "q1", [12, 20, 24, 25, 25], 800)
    for version, conversions, visits, revenue in (("v1", 2, 50, 7), ("v2", 3, 50, 11)):
        app = {"namespace": "shop", "app": "fashionmnist", "version": version, "pod": "x"}
        counter(om, "app_conversions_total", app, conversions)
        counter(om, "app_visits_total", app, visits)
        counter(om, "app_revenue_total", app, revenue)

    # ranker: the candidate starts failing inside interval 10 (its 500 series is new then).
    istio_requests(om, "shop", "ranker-v1", "r1", "200", 25)
    istio_requests(om, "shop", "ranker-v2", "s1", "200", 20)
    istio_requests(om, "shop", "ranker-v2", "s1", "500", 5, start=T0 + 615, initial=5)

    # recommender: v1's process restarts inside interval 5.
    istio_requests(om, "shop", "recommender-v1", "t1", "200", 10, reset_at=T0 + 340)
    istio_requests(om, "shop", "recommender-v2", "u1", "200", 10)

    # gappy: v2 is not scraped from T0+480 to T0+630 (boundaries 540 and 600 see nothing).
    istio_requests(om, "shop", "gappy-v1", "g0", "200", 10)
    istio_requests(om, "shop", "gappy-v2", "g1", "200", 10, gap=(T0 + 480, T0 + 630))

    # silent: the candidate never served a request.
    istio_requests(om, "shop", "silent-v1", "z1", "200", 10)

    # KServe serverless: Knative revision workloads.
    istio_requests(om, "kserve-test", "flowers-0-predictor-00001-deployment", "k1", "200", 8)
    istio_requests(om, "kserve-test", "flowers-1-predictor-00003-deployment", "k2", "200", 6)

    # Seldon: baseline and candidate are both `iris` in their own namespaces.
    for ns, feedback in (("ns-baseline", 1), ("ns-candidate", 3)):
        seldon = {
            "kubernetes_namespace": ns,
            "seldon_deployment_id": "iris",
            "predictor_name": "default",
            "pod": f"iris-{ns}",
            "code": "200",
            "service": "/predict",
        }
        counter(om, "seldon_api_executor_client_requests_seconds_count", seldon, 10)
        counter(om, "seldon_api_executor_client_requests_seconds_sum", seldon, 0.5)
        for le, step in (("0.005", 1), ("0.075", 6), ("0.1", 9), ("+Inf", 10)):
            counter(
                om, "seldon_api_executor_client_requests_seconds_bucket", {**seldon, "le": le}, step
            )
        forwarded = {**seldon, "service": "/send-feedback"}
        counter(om, "seldon_api_executor_client_requests_seconds_count", forwarded, 3)
        server = {**seldon, "service": "feedback"}
        counter(om, "seldon_api_executor_server_requests_seconds_count", server, feedback)

    # ModelMesh: one Service, versions told apart by vModelId.
    for isvc, internal in (("wisdom-0", 0), ("wisdom-1", 2)):
        mm = {
            "namespace": "modelmesh-serving",
            "vModelId": isvc,
            "modelId": f"{isvc}__isvc-6b2eb0b8bf",
            "pod": "modelmesh-serving-triton-2.x-0",
            "method": "inference.GRPCInferenceService/ModelInfer",
        }
        counter(om, "modelmesh_api_request_milliseconds_count", {**mm, "code": "OK"}, 20)
        if internal:
            counter(
                om, "modelmesh_api_request_milliseconds_count", {**mm, "code": "INTERNAL"}, internal
            )
        counter(om, "modelmesh_api_request_milliseconds_sum", mm, 300)

    # crowd: many models in one namespace.
    for i in range(CROWD):
        for version in ("v1", "v2"):
            istio_requests(om, "crowd", f"model-{i:02d}-{version}", f"c{i}{version}", "200", 5)
    return om
