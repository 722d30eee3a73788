"""The HTTP client against a real Prometheus: auth, TLS, retries, and no leaked secrets."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from metrics_history import INTERVALS, NOW, SINCE, at
from prometheus_harness import (
    Binaries,
    PrometheusServer,
    RecordingProxy,
    TlsFiles,
    free_port,
    make_tls,
)

from gitops_rollout.errors import MetricsError
from gitops_rollout.metrics import (
    PrometheusOptions,
    ProviderConfig,
    QueryError,
    RolloutRef,
    VersionRef,
    collect,
    create_provider,
)
from gitops_rollout.metrics import prometheus as prometheus_module
from gitops_rollout.metrics.prometheus import PrometheusClient
from gitops_rollout.policy import TargetKind

TOKEN = "tok-7f3a9c-never-log-me"
USER, PASSWORD = "alice", "s3cret-pass"
# bcrypt("s3cret-pass"), cost 4 so the test server checks it quickly.
PASSWORD_HASH = "$2b$04$BnOr8SBmQusFz7FTpTLQLeT/dF9GG3a0DfVsDegQ9zTBj6m9R7Bzy"
QUICK = PrometheusOptions(backoff=0.01, read_timeout=10.0)
"""Retries in milliseconds, so outage tests stay fast."""

RANKER = RolloutRef(
    key="test/shop/ranker",
    target=TargetKind.DEPLOYMENT,
    model="ranker",
    namespace="shop",
    versions=(VersionRef("v1", "ranker-v1", "shop"), VersionRef("v2", "ranker-v2", "shop")),
    since=SINCE,
    interval=at(60) - at(0),
)


def ranker_requests(url: str, options: PrometheusOptions) -> list[float]:
    collected = collect(
        create_provider("prometheus", ProviderConfig(url, options)), [RANKER], now=NOW
    )
    requests: list[float] = collected["test/shop/ranker"].series["v1"].requests.tolist()
    return requests


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secured(
    binaries: Binaries, tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """Prometheus serving mutual TLS and basic auth only."""
    web = tls.web_config() + f"basic_auth_users:\n  {USER}: {PASSWORD_HASH}\n"
    server = PrometheusServer(
        tmp_path_factory.mktemp("secured"),
        binaries=binaries,
        web_config=web,
        scheme="https",
        ready_auth=(USER, PASSWORD),
        ready_verify=str(tls.ca),
        ready_cert=(str(tls.client_cert), str(tls.client_key)),
    )
    with server:
        yield server


def secured_options(tls: TlsFiles, **changes: Any) -> PrometheusOptions:
    options = PrometheusOptions(
        username=USER,
        password=PASSWORD,
        ca_file=tls.ca,
        cert_file=tls.client_cert,
        key_file=tls.client_key,
        retries=0,
    )
    return replace(options, **changes)


def test_instant_and_range_queries(prometheus: PrometheusServer) -> None:
    client = PrometheusClient(prometheus.url)

    samples = client.instant('label_replace(vector(2), "kind", "probe", "", "")', at=NOW)
    assert [(dict(s.labels), s.value) for s in samples] == [({"kind": "probe"}, 2.0)]
    assert client.instant("scalar(vector(3))", at=NOW)[0].value == 3.0
    assert client.version().startswith("2.")


def test_long_ranges_are_split_under_the_point_limit(
    prometheus: PrometheusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = ranker_requests(prometheus.url, PrometheusOptions(retries=0))
    monkeypatch.setattr(prometheus_module, "MAX_POINTS", 5)
    with RecordingProxy(prometheus.url) as proxy:
        split = ranker_requests(proxy.url, PrometheusOptions(retries=0))

    assert split == whole == [100.0] * INTERVALS
    # 22 instants (look-back, 21 boundaries) in chunks of 5 points: 5 requests per template.
    assert proxy.count("/api/v1/query_range") == 3 * 5


def test_outages_are_retried_then_reported(prometheus: PrometheusServer) -> None:
    with RecordingProxy(prometheus.url, fail_first=2) as proxy:
        assert ranker_requests(proxy.url, replace(QUICK, retries=2)) == [100.0] * 20
        assert proxy.count() == 3 + 2  # two failed attempts, then the three templates

    with RecordingProxy(prometheus.url, fail_first=99) as proxy:
        with pytest.raises(MetricsError, match=r"failed 2 times: HTTP 503 Service Unavailable"):
            ranker_requests(proxy.url, replace(QUICK, retries=1))
        assert proxy.count() == 2


def test_slow_answers_time_out(prometheus: PrometheusServer) -> None:
    with RecordingProxy(prometheus.url, delay=0.5) as proxy:
        options = PrometheusOptions(retries=1, backoff=0.01, read_timeout=0.2)
        with pytest.raises(MetricsError, match=r"failed 2 times: no answer within 0.2s"):
            ranker_requests(proxy.url, options)
        assert proxy.count() == 2


def test_rejected_queries_are_not_retried(prometheus: PrometheusServer) -> None:
    with RecordingProxy(prometheus.url) as proxy:
        client = PrometheusClient(proxy.url, replace(QUICK, retries=3))
        with pytest.raises(QueryError) as caught:
            client.instant("rate(istio_requests_total[5m]", at=NOW)
        assert proxy.count() == 1

    assert caught.value.error_type == "bad_data"
    assert "unclosed left parenthesis" in str(caught.value)


def test_nothing_listening_is_a_metrics_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = PrometheusClient(url, PrometheusOptions(retries=1, backoff=0.01))

    with pytest.raises(MetricsError, match="failed 2 times: cannot connect") as caught:
        client.instant("up", at=NOW)
    assert "Connection refused" in str(caught.value)


def test_not_a_prometheus_url_is_a_metrics_error(prometheus: PrometheusServer) -> None:
    with pytest.raises(MetricsError, match="is not a Prometheus URL"):
        PrometheusClient("prometheus:9090")
    with pytest.raises(MetricsError) as caught:
        PrometheusClient(prometheus.url + "/graph").instant("up", at=NOW)
    assert str(caught.value) == (
        f"Prometheus at {prometheus.url}/graph answered HTTP 404 Not Found for /api/v1/query; "
        "check that the URL is Prometheus' base URL"
    )


def test_bearer_token_is_sent_and_never_shown(
    prometheus: PrometheusServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with RecordingProxy(prometheus.url, require_bearer=TOKEN) as proxy:
        good = replace(QUICK, bearer_token=TOKEN, retries=2)
        assert ranker_requests(proxy.url, good) == [100.0] * INTERVALS
        assert {r.headers["Authorization"] for r in proxy.requests} == {f"Bearer {TOKEN}"}

        proxy.reset()
        wrong = replace(QUICK, bearer_token="stale-" + TOKEN, retries=2)
        with pytest.raises(MetricsError) as caught:
            ranker_requests(proxy.url, wrong)
        assert proxy.count() == 1  # a 401 is not retried

    assert "refused the credentials (HTTP 401)" in str(caught.value)
    shown = [str(caught.value), repr(wrong), repr(good), caplog.text]
    assert not any(TOKEN in text for text in shown)


def test_bearer_token_file_is_read_for_every_request(
    prometheus: PrometheusServer, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    with RecordingProxy(prometheus.url) as proxy:
        client = PrometheusClient(proxy.url, PrometheusOptions(bearer_token_file=token_file))
        client.instant("vector(1)", at=NOW)
        token_file.write_text("rotated-token\n")
        client.instant("vector(1)", at=NOW)

    assert [r.headers["Authorization"] for r in proxy.requests] == [
        "Bearer first-token",
        "Bearer rotated-token",
    ]


def test_basic_auth_over_mutual_tls(
    secured: PrometheusServer, tls: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = create_provider("prometheus", ProviderConfig(secured.url, secured_options(tls)))

    collected = collect(provider, [RANKER], now=NOW)

    # This Prometheus holds no history: the rollout has no data, which is not an error.
    assert collected["test/shop/ranker"].series["v1"].missing.all()
    assert PASSWORD not in caplog.text and PASSWORD not in provider.describe()


def test_wrong_password_is_refused_without_showing_it(
    secured: PrometheusServer, tls: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    options = secured_options(tls, password="wrong-" + PASSWORD, retries=2)
    with pytest.raises(MetricsError, match=r"refused the credentials \(HTTP 401\)") as caught:
        PrometheusClient(secured.url, options).instant("vector(1)", at=NOW)

    assert PASSWORD not in str(caught.value) + caplog.text + repr(options)


def test_credentials_in_the_url_move_out_of_it(secured: PrometheusServer, tls: TlsFiles) -> None:
    url = secured.url.replace("https://", f"https://{USER}:{PASSWORD}@")
    options = secured_options(tls, username=None, password=None)
    client = PrometheusClient(url, options)

    assert client.instant("vector(1)", at=NOW)[0].value == 1.0
    assert client.url == secured.url
    assert PASSWORD not in repr(client)
    provider = create_provider("prometheus", ProviderConfig(url, options))
    assert provider.describe() == f"Prometheus at {secured.url}"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"ca_file": None}, "certificate verify failed", id="unknown-ca"),
        pytest.param({"cert_file": None, "key_file": None}, "TLS with Prometheus", id="no-cert"),
    ],
)
def test_tls_failures_are_reported_once(
    secured: PrometheusServer, tls: TlsFiles, changes: dict[str, Any], message: str
) -> None:
    options = secured_options(tls, retries=3, **changes)
    with pytest.raises(MetricsError, match=message) as caught:
        PrometheusClient(secured.url, options).instant("vector(1)", at=NOW)
    assert "failed 4 times" not in str(caught.value)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_insecure_skip_verify_is_off_by_default_and_works_when_asked(
    secured: PrometheusServer, tls: TlsFiles
) -> None:
    assert PrometheusOptions().insecure_skip_verify is False
    options = secured_options(tls, ca_file=None, insecure_skip_verify=True)
    assert PrometheusClient(secured.url, options).instant("vector(1)", at=NOW)[0].value == 1.0
