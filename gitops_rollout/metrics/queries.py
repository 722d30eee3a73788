"""The PromQL we ask, per serving platform, and how answers map back to versions.

Each target kind reads one family of raw counters:

- ``deployment`` and ``kserve``: Istio's standard metrics (``istio_requests_total`` by status,
  ``istio_request_duration_milliseconds`` bucket and sum), reported by the server's sidecar.
- ``kserve-modelmesh``: ModelMesh's per-model metrics (``modelmesh_api_request_milliseconds``);
  every version shares one Service, so Istio cannot tell them apart. Needs ModelMesh's
  per-model metrics switched on.
- ``seldon``: Seldon's executor (``seldon_api_executor_client_requests_seconds``) and its
  feedback counter (``seldon_api_executor_server_requests_seconds_count{service="feedback"}``),
  the reward of A/B tests, exported as the custom metric ``feedback``.

Every template is one query per namespace, summed per version and per scrape target, never per
model: the number of queries a pass makes does not grow with the number of models. Counters
stay per scrape target (``pod``, ``instance``) because a counter resets when its process
restarts, and only a per-process series shows that. ``last_over_time`` over the interval makes a
counter absent at a boundary when a whole interval passed without a sample, which is how a
missing scrape shows. Policy metrics are the policy's own PromQL with ``$version``,
``$namespace`` and ``$model`` filled in. This module builds strings and reads labels; it does
no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from gitops_rollout.metrics.base import CounterId, CounterKind, RolloutRef, VersionRef
from gitops_rollout.policy import FEEDBACK_METRIC, TargetKind

FEEDBACK = FEEDBACK_METRIC
"""`VersionSeries.custom` name of Seldon's feedback count (rewards of A/B tests)."""

SCRAPE_TARGET_LABELS = ("pod", "instance")
"""Labels that tell the processes apart; kept so a restart shows as one series' reset."""


class Source(StrEnum):
    """A family of metrics a serving platform exports."""

    ISTIO = "istio"
    MODELMESH = "modelmesh"
    SELDON = "seldon"


SOURCE_OF_TARGET: dict[TargetKind, Source] = {
    TargetKind.DEPLOYMENT: Source.ISTIO,
    TargetKind.KSERVE: Source.ISTIO,
    TargetKind.KSERVE_MODELMESH: Source.MODELMESH,
    TargetKind.SELDON: Source.SELDON,
}


class Measure(StrEnum):
    """What a template's series count."""

    REQUESTS = "requests"
    """Requests by status code: every series counts requests, error codes count errors too."""
    LATENCY_SUM = "latency-sum"
    LATENCY_BUCKETS = "latency-buckets"
    FEEDBACK = "feedback"


class CodeKind(StrEnum):
    HTTP = "http"
    GRPC = "grpc"


@dataclass(frozen=True)
class Template:
    """One named question: a raw counter of every version in a namespace."""

    name: str
    measure: Measure
    metric: str
    matchers: tuple[str, ...] = ()
    """Fixed label matchers besides the namespace."""
    by: tuple[str, ...] = ()
    """Labels kept besides namespace, version identity and scrape target (codes, ``le``)."""


@dataclass(frozen=True)
class Family:
    """The templates of one `Source` and the labels its answers carry."""

    source: Source
    namespace_label: str
    identity_labels: tuple[str, ...]
    """Labels that say which version a series belongs to (see `series_keys`)."""
    codes: tuple[tuple[str, CodeKind], ...]
    """Status code labels and how to read them (see `is_error`)."""
    to_ms: float
    """Factor from the latency unit of the metrics to milliseconds."""
    templates: tuple[Template, ...]


FAMILIES: dict[Source, Family] = {
    Source.ISTIO: Family(
        source=Source.ISTIO,
        namespace_label="destination_workload_namespace",
        identity_labels=("destination_workload",),
        codes=(("response_code", CodeKind.HTTP), ("grpc_response_status", CodeKind.GRPC)),
        to_ms=1.0,
        templates=(
            # reporter="destination": the server's sidecar; the client's reports the same
            # request again (and is absent for clients outside the mesh).
            Template(
                "istio-requests",
                Measure.REQUESTS,
                "istio_requests_total",
                ('reporter="destination"',),
                ("response_code", "grpc_response_status"),
            ),
            Template(
                "istio-latency-sum",
                Measure.LATENCY_SUM,
                "istio_request_duration_milliseconds_sum",
                ('reporter="destination"',),
            ),
            Template(
                "istio-latency-buckets",
                Measure.LATENCY_BUCKETS,
                "istio_request_duration_milliseconds_bucket",
                ('reporter="destination"',),
                ("le",),
            ),
        ),
    ),
    Source.MODELMESH: Family(
        source=Source.MODELMESH,
        namespace_label="namespace",
        identity_labels=("vModelId", "modelId"),
        codes=(("code", CodeKind.GRPC),),
        to_ms=1.0,
        templates=(
            Template(
                "modelmesh-requests",
                Measure.REQUESTS,
                "modelmesh_api_request_milliseconds_count",
                by=("code",),
            ),
            Template(
                "modelmesh-latency-sum",
                Measure.LATENCY_SUM,
                "modelmesh_api_request_milliseconds_sum",
            ),
            Template(
                "modelmesh-latency-buckets",
                Measure.LATENCY_BUCKETS,
                "modelmesh_api_request_milliseconds_bucket",
                by=("le",),
            ),
        ),
    ),
    Source.SELDON: Family(
        source=Source.SELDON,
        namespace_label="kubernetes_namespace",
        identity_labels=("seldon_deployment_id", "predictor_name"),
        codes=(("code", CodeKind.HTTP),),
        to_ms=1000.0,
        templates=(
            # Feedback the executor forwards to the model is not a prediction.
            Template(
                "seldon-requests",
                Measure.REQUESTS,
                "seldon_api_executor_client_requests_seconds_count",
                ('service!~".*feedback.*"',),
                ("code",),
            ),
            Template(
                "seldon-latency-sum",
                Measure.LATENCY_SUM,
                "seldon_api_executor_client_requests_seconds_sum",
                ('service!~".*feedback.*"',),
            ),
            Template(
                "seldon-latency-buckets",
                Measure.LATENCY_BUCKETS,
                "seldon_api_executor_client_requests_seconds_bucket",
                ('service!~".*feedback.*"',),
                ("le",),
            ),
            Template(
                "seldon-feedback",
                Measure.FEEDBACK,
                "seldon_api_executor_server_requests_seconds_count",
                ('service="feedback"',),
            ),
        ),
    ),
}


def family_of(target: TargetKind) -> Family:
    return FAMILIES[SOURCE_OF_TARGET[target]]


def render(template: Template, family: Family, *, namespace: str, window: timedelta) -> str:
    """The PromQL of `template` for every version in `namespace`."""
    by = ", ".join(
        (family.namespace_label, *family.identity_labels, *SCRAPE_TARGET_LABELS, *template.by)
    )
    matchers = ", ".join((f"{family.namespace_label}={_quote(namespace)}", *template.matchers))
    # Prometheus 2 includes a sample exactly one window back; a millisecond less makes the
    # window (t - interval, t], so no sample is read at two boundaries.
    lookback = _duration(window - timedelta(milliseconds=1))
    return f"sum by ({by}) (last_over_time({template.metric}{{{matchers}}}[{lookback}]))"


# -- which version a series belongs to ----------------------------------------------------------

_PREDICTOR = re.compile(r"^(?P<isvc>.+?)-predictor(?:-default)?(?:-\d{5})?(?:-deployment)?$")
"""KServe predictor workloads: raw ``<isvc>-predictor``, serverless
``<isvc>-predictor-00001-deployment``, and ``-predictor-default`` before KServe 0.11."""


def version_key(target: TargetKind, ref: VersionRef) -> str:
    """The name a version goes by in its target's metrics."""
    if target is TargetKind.SELDON:
        return f"{ref.name}/{ref.predictor}"
    return ref.workload or ref.name


def series_keys(target: TargetKind, labels: Mapping[str, str]) -> tuple[str, ...]:
    """Every `version_key` a series with these labels may belong to, most specific first."""
    keys: list[str] = []
    if target is TargetKind.SELDON:
        sdep, predictor = labels.get("seldon_deployment_id"), labels.get("predictor_name")
        if sdep and predictor:
            keys.append(f"{sdep}/{predictor}")
    elif target is TargetKind.KSERVE_MODELMESH:
        # Requests routed with mm-vmodel-id carry the InferenceService as vModelId; requests
        # naming the concrete model carry <isvc>__isvc-<hash> as modelId.
        for label in ("vModelId", "modelId"):
            value = labels.get(label, "")
            if value:
                keys.extend((value, value.split("__isvc-", 1)[0]))
    else:
        workload = labels.get("destination_workload", "")
        if workload:
            keys.append(workload)
            if target is TargetKind.KSERVE:
                keys.append(workload.removesuffix("-deployment"))
                match = _PREDICTOR.match(workload)
                if match:
                    keys.append(match["isvc"])
    return tuple(dict.fromkeys(keys))


def counters_of(family: Family, template: Template, labels: Mapping[str, str]) -> list[CounterId]:
    """The counters a series of `template` adds to."""
    if template.measure is Measure.REQUESTS:
        out = [CounterId(CounterKind.REQUESTS)]
        if is_error(family, labels):
            out.append(CounterId(CounterKind.ERRORS))
        return out
    if template.measure is Measure.LATENCY_SUM:
        return [CounterId(CounterKind.LATENCY_SUM_MS)]
    if template.measure is Measure.FEEDBACK:
        return [CounterId(CounterKind.CUSTOM, FEEDBACK)]
    le = labels.get("le", "")
    try:
        edge = float(le) * family.to_ms
    except ValueError:
        return []
    return [CounterId(CounterKind.BUCKET, format_edge(edge))]


def series_key(family: Family, labels: Mapping[str, str]) -> str:
    """What tells raw counters of one version apart: every label but namespace, identity and le."""
    skip = {family.namespace_label, *family.identity_labels, "le", "__name__"}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in skip)


def format_edge(edge_ms: float) -> str:
    """A bucket edge as `CounterId.arg`: ``+Inf`` or the shortest exact decimal."""
    if edge_ms == float("inf"):
        return "+Inf"
    return repr(round(edge_ms, 6))


# gRPC codes whose HTTP mapping is 5xx (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
# UNAVAILABLE, DATA_LOSS): the server failed. Client mistakes (INVALID_ARGUMENT, NOT_FOUND,
# ...) are not the candidate's fault.
_GRPC_SERVER_ERRORS = {2, 4, 12, 13, 14, 15}
_GRPC_NAMES = {
    "UNKNOWN": 2,
    "DEADLINE_EXCEEDED": 4,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
}


def is_error(family: Family, labels: Mapping[str, str]) -> bool:
    """Whether a series counts failed requests: HTTP 5xx, or a gRPC status mapped to 5xx."""
    for label, kind in family.codes:
        value = labels.get(label, "").strip()
        if not value:
            continue
        if value.isdigit():
            code = int(value)
            if kind is CodeKind.HTTP and 500 <= code <= 599:
                return True
            if kind is CodeKind.GRPC and code in _GRPC_SERVER_ERRORS:
                return True
        elif value.upper() in _GRPC_NAMES:
            return True
    return False


# -- the policy's own metrics -------------------------------------------------------------------


@dataclass(frozen=True)
class CustomQuery:
    """One rendered policy query and the versions its series may belong to."""

    name: str
    """`VersionSeries.custom` name: the metric's, plus ``/denominator`` for the denominator."""
    field: str
    """The policy field it came from, e.g. ``spec.analysis.metrics[1].query``."""
    promql: str
    versions: tuple[VersionRef, ...]
    version_label: str


def custom_queries(rollout: RolloutRef) -> list[CustomQuery]:
    """The policy's metrics as PromQL, fewest queries the placeholders allow.

    ``$version`` runs the query once per version (each version's ``$namespace``); otherwise
    once per namespace the versions live in if ``$namespace`` is used, else once. A query that
    covers several versions is split by its ``versionLabel`` label.
    """
    out: list[CustomQuery] = []
    for index, metric in enumerate(rollout.metrics):
        parts = [(metric.name, "query", metric.query)]
        if metric.denominator:
            parts.append((f"{metric.name}/denominator", "denominator", metric.denominator))
        for name, attr, expr in parts:
            field = f"spec.analysis.metrics[{index}].{attr}"
            groups: list[tuple[VersionRef, ...]]
            if "$version" in expr:
                groups = [(v,) for v in rollout.versions]
            elif "$namespace" in expr:
                by_ns: dict[str, list[VersionRef]] = {}
                for v in rollout.versions:
                    by_ns.setdefault(v.namespace, []).append(v)
                groups = [tuple(vs) for vs in by_ns.values()]
            else:
                groups = [rollout.versions]
            for group in groups:
                if not group:
                    continue
                promql = substitute(
                    expr,
                    namespace=group[0].namespace,
                    model=rollout.model,
                    version=group[0].version if "$version" in expr else None,
                )
                out.append(CustomQuery(name, field, promql, group, metric.version_label))
    return out


def custom_owner(query: CustomQuery, labels: Mapping[str, str]) -> VersionRef | None:
    """The version a series of `query` belongs to, if any.

    The ``versionLabel`` label's value is the version label, or else names the one version
    running in that namespace (``kubernetes_namespace`` for Seldon deployments kept in
    separate namespaces) or under that workload name (``destination_workload``).
    """
    if len(query.versions) == 1:
        return query.versions[0]
    value = labels.get(query.version_label)
    if value is None:
        return None
    for found in (
        [v for v in query.versions if v.version == value],
        [v for v in query.versions if v.namespace == value],
        [v for v in query.versions if v.name == value],
    ):
        if len(found) == 1:
            return found[0]
    return None


def substitute(expr: str, *, namespace: str, model: str, version: str | None) -> str:
    """Fill in the policy placeholders; values are quoted-string safe."""
    out = expr.replace("$namespace", _escape(namespace)).replace("$model", _escape(model))
    if version is not None:
        out = out.replace("$version", _escape(version))
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _quote(value: str) -> str:
    return f'"{_escape(value)}"'


def _duration(window: timedelta) -> str:
    ms = round(window.total_seconds() * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
