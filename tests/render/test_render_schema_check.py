"""The schema checker rejects what the API server would, and accepts what it would.

A checker that passes everything would make every "validates against the CRD schemas" claim
in the other tests empty, so each rule is shown failing on a small object, next to the valid
form it differs from.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from schema_check import apply_defaults, schemas

VIRTUAL_SERVICE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: m, namespace: ns, labels: {app.kubernetes.io/managed-by: gitops-rollout}}
spec:
  hosts: [m]
  http:
  - route:
    - destination: {host: a, port: {number: 80}}
      weight: 100
"""


def vs(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load(VIRTUAL_SERVICE)
    for path, value in changes.items():
        node: Any = obj
        *parents, last = path.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value
    return obj


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        pytest.param(vs(), None, id="valid VirtualService"),
        pytest.param(
            vs(spec__http__0__route__0__weigth=5),
            "Additional properties are not allowed ('weigth' was unexpected)",
            id="a misspelt field is rejected",
        ),
        pytest.param(
            vs(spec__http__0__route__0__destination={"port": {"number": 80}}),
            "'host' is a required property",
            id="a required field is missing",
        ),
        pytest.param(
            vs(spec__http__0__route__0__weight="100"),
            "'100' is not of type 'integer'",
            id="a weight must be an integer",
        ),
        pytest.param(vs(spec__http__0__mirrorPercent=None), None, id="nullable admits null"),
        pytest.param(
            vs(spec__http__0__timeout=None),
            "None is not of type 'string'",
            id="a field that is not nullable rejects null",
        ),
        pytest.param(
            vs(metadata={"name": "m", "labels": {"gitops-rollout.dev/watch": True}}),
            "True is not of type 'string'",
            id="a label value must be a string",
        ),
        pytest.param(
            vs(metadata={"name": "m", "labels": {"app": "two words"}}),
            "does not match",
            id="a label value must be a label",
        ),
        pytest.param(
            {"apiVersion": "serving.kserve.io/v1alpha2", "kind": "InferenceService"},
            "no schema for serving.kserve.io/v1alpha2 InferenceService",
            id="a version the CRD does not serve",
        ),
        pytest.param(
            {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
            "no schema for example.com/v1 Widget",
            id="an unknown kind fails rather than passes",
        ),
    ],
)
def test_structural_rules(obj: dict[str, Any], error: str | None) -> None:
    errors = schemas().validate(obj)
    if error is None:
        assert errors == []
    else:
        assert any(error in e for e in errors), errors


def test_int_or_string() -> None:
    isvc = yaml.safe_load(
        """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: x}
spec:
  predictor:
    containers:
    - {name: c, image: i, resources: {limits: {cpu: 1}, requests: {cpu: "500m"}}}
"""
    )
    assert schemas().validate(isvc) == []
    isvc["spec"]["predictor"]["containers"][0]["resources"]["limits"]["cpu"] = 0.1
    assert schemas().validate(isvc) == [
        ".spec.predictor.containers[0].resources.limits.cpu: 0.1 is not valid under any of the "
        "given schemas"
    ]


def test_preserve_unknown_fields_accepts_anything_below() -> None:
    app = yaml.safe_load(
        """
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata: {name: a}
spec:
  project: default
  destination: {server: https://kubernetes.default.svc}
  source:
    repoURL: https://example.com/repo.git
    helm: {valuesObject: {anything: {goes: [1, 2]}}}
"""
    )
    assert schemas().validate(app) == []
    app["spec"]["source"]["helm"]["valuesObjekt"] = {}
    assert any("valuesObjekt" in e for e in schemas().validate(app))


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        pytest.param({"number": 70000}, "port must be between 1-65535", id="CEL port range"),
        pytest.param(
            {"number": 80, "endpoints": [{"address": "1.2.3.4"}]},
            "only one of WorkloadSelector or Endpoints can be set",
            id="CEL selector xor endpoints",
        ),
    ],
)
def test_known_cel_rules(spec: dict[str, Any], error: str) -> None:
    entry = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "m"},
        "spec": {
            "hosts": ["m.ns"],
            "resolution": "DNS",
            "ports": [{"number": spec["number"], "name": "http"}],
            "workloadSelector": {"labels": {"a": "b"}},
            **({"endpoints": spec["endpoints"]} if "endpoints" in spec else {}),
        },
    }
    assert error in "\n".join(schemas().validate(entry))


def test_defaults_are_filled_before_validation() -> None:
    schema = {
        "type": "object",
        "properties": {
            "ports": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"protocol": {"type": "string", "default": "TCP"}},
                },
            }
        },
    }
    assert apply_defaults({"ports": [{}, {"protocol": "UDP"}]}, schema) == {
        "ports": [{"protocol": "TCP"}, {"protocol": "UDP"}]
    }


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        pytest.param(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resource": ["a.yaml"],
            },
            "'resource' was unexpected",
            id="kustomization with a misspelt key",
        ),
        pytest.param(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "s"},
                "spec": {"type": "ExternalName"},
            },
            "required for type ExternalName",
            id="ExternalName Service without a name",
        ),
        pytest.param(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "d"},
                "spec": {
                    "selector": {"matchLabels": {"a": "b"}},
                    "template": {
                        "metadata": {"labels": {"a": "c"}},
                        "spec": {"containers": [{"name": "c", "image": "i"}]},
                    },
                },
            },
            "must match spec.selector.matchLabels",
            id="Deployment whose pods its selector misses",
        ),
        pytest.param(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": "r"},
                "spec": {
                    "rules": [
                        {
                            "matches": [
                                {"headers": [{"type": "Prefix", "name": "x", "value": "y"}]}
                            ],
                            "backendRefs": [{"name": "s", "port": 80}],
                        }
                    ]
                },
            },
            "'Prefix' is not one of",
            id="HTTPRoute header match type Gateway API lacks",
        ),
    ],
)
def test_kinds_without_a_crd(obj: dict[str, Any], error: str) -> None:
    assert error in "\n".join(schemas().validate(obj))
