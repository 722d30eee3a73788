"""The Prometheus harness refuses to skip silently in CI."""

from __future__ import annotations

import prometheus_harness
import pytest


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [
        pytest.param("true", pytest.fail.Exception, id="ci-fails"),
        pytest.param("", pytest.skip.Exception, id="laptop-skips"),
    ],
)
def test_missing_prometheus(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr("prometheus_harness.shutil.which", lambda name: None)
    monkeypatch.setattr("prometheus_harness.os.access", lambda path, mode: False)

    with pytest.raises(outcome, match="apt-get install -y prometheus"):
        prometheus_harness.require_prometheus()
