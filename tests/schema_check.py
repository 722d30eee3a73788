"""Check a manifest against the upstream CRD schemas the way the API server would.

The CRDs in ../shared/schemas carry *structural* OpenAPI schemas. This helper converts one into
JSON Schema honouring the API server's rules (an object with ``properties`` rejects unknown
fields unless ``x-kubernetes-preserve-unknown-fields``; ``x-kubernetes-int-or-string`` is an
integer or a string; ``nullable`` admits null; ``default`` fills a missing field before
validation) and validates with jsonschema. The CEL rules our objects can meet (port ranges,
wildcards, ServiceEntry's selector/endpoints) are evaluated by a small table; others are not.

Kinds without a CRD get a deliberately small check written here: Service, Deployment,
ConfigMap, Namespace (core) and Gateway API's HTTPRoute (not in ../shared/schemas). The
kustomization.yaml schema from SchemaStore checks kustomizations.

`require_schemas()` finds the schema folder; when it is missing a test fails if ``CI=true`` and
skips otherwise.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

SCHEMAS_ENV = "GITOPS_ROLLOUT_SCHEMAS"
_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "schemas"

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def schemas_dir() -> Path | None:
    configured = os.environ.get(SCHEMAS_ENV)
    path = Path(configured) if configured else _DEFAULT
    return path if (path / "crds").is_dir() else None


def require_schemas() -> Path:
    """The schema folder; fails the test in CI (CI=true) and skips elsewhere when missing."""
    found = schemas_dir()
    if found is None:
        message = f"CRD schemas not found (set {SCHEMAS_ENV} or provide ../shared/schemas)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


# ---------------------------------------------------------------------------------------------
# Structural schema -> JSON Schema

_DROP = {"description", "default", "format", "example", "externalDocs", "title"}
_JUNCTORS = ("allOf", "anyOf", "oneOf")


def to_json_schema(node: dict[str, Any], *, in_junctor: bool = False) -> dict[str, Any]:
    """A structural schema node as JSON Schema with the API server's semantics."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = to_json_schema(value, in_junctor=in_junctor)
        elif key == "additionalProperties":
            out[key] = to_json_schema(value) if isinstance(value, dict) else value
        elif key in _JUNCTORS:
            out[key] = [to_json_schema(sub, in_junctor=True) for sub in value]
        elif key == "not":
            out[key] = to_json_schema(value, in_junctor=True)
        elif key in _DROP or key.startswith("x-kubernetes-") or key == "nullable":
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        either = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
        out = {"allOf": [out, either]} if "anyOf" in out else {**out, **either}
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    closed = (
        not in_junctor
        and node.get("type") == "object"
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    )
    if closed:
        # Unknown fields of a structural object are pruned by the API server and rejected by
        # strict field validation (kubectl's default): both mean the field never takes effect.
        out["additionalProperties"] = False
    return out


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """`value` with the schema's defaults filled in, as the API server does before validating."""
    if isinstance(value, dict):
        value = dict(value)
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(value[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            props = schema.get("properties") or {}
            for name in value:
                if name not in props:
                    value[name] = apply_defaults(value[name], extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [apply_defaults(item, schema["items"]) for item in value]
    return value


# ---------------------------------------------------------------------------------------------
# The CEL rules our objects can meet


def _port_range(v: Any) -> bool:
    return isinstance(v, int) and 0 < v <= 65535


def _unique_port_numbers(v: Any) -> bool:
    numbers = [p.get("number") for p in v if isinstance(p, dict)]
    return len(numbers) == len(set(numbers))


CEL_RULES: dict[str, Callable[[Any], bool]] = {
    "0 < self && self <= 65535": _port_range,
    'self != "*"': lambda v: v != "*",
    '!self.contains("*")': lambda v: "*" not in str(v),
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1": lambda v: (
        not ("workloadSelector" in v and "endpoints" in v)
    ),
    '((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) '
    ": true": lambda v: v.get("resolution", "NONE") != "NONE" or "endpoints" not in v,
    "self.all(l1, self.exists_one(l2, l1.number == l2.number))": _unique_port_numbers,
}


def _cel(schema: dict[str, Any], value: Any, path: str, errors: list[str]) -> None:
    for rule in schema.get("x-kubernetes-validations") or []:
        check = CEL_RULES.get(" ".join(rule["rule"].split()))
        if check is not None and not check(value):
            errors.append(f"{path or '.'}: {rule.get('message') or rule['rule']}")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name, sub in value.items():
            if name in props:
                _cel(props[name], sub, f"{path}.{name}", errors)
            elif isinstance(extra, dict):
                _cel(extra, sub, f"{path}.{name}", errors)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _cel(schema["items"], item, f"{path}[{i}]", errors)


# ---------------------------------------------------------------------------------------------
# Object metadata and the kinds without a CRD

_LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_LABEL_KEY = rf"^({_DNS_SUBDOMAIN}/)?{_LABEL_NAME}$"
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

OBJECT_META: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": rf"^{_DNS_SUBDOMAIN}$", "maxLength": 253},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {
            "type": "object",
            "propertyNames": {"pattern": _LABEL_KEY, "maxLength": 317},
            "additionalProperties": {
                "type": "string",
                "maxLength": 63,
                "pattern": rf"^({_LABEL_NAME})?$",
            },
        },
        "annotations": {
            "type": "object",
            "propertyNames": {"pattern": _LABEL_KEY},
            "additionalProperties": {"type": "string"},
        },
        "generateName": {"type": "string"},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
    },
    "additionalProperties": False,
}

_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_INT_OR_STRING = {"anyOf": [{"type": "integer"}, {"type": "string"}]}

SERVICE_SPEC = {
    "type": "object",
    "properties": {
        "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
        "selector": _STRING_MAP,
        "externalName": {"type": "string"},
        "clusterIP": {"type": "string"},
        "sessionAffinity": {"enum": ["None", "ClientIP"]},
        "ports": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["port"],
                "properties": {
                    "name": {"type": "string"},
                    "port": _PORT,
                    "targetPort": _INT_OR_STRING,
                    "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                    "appProtocol": {"type": "string"},
                    "nodePort": _PORT,
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": True,
}

DEPLOYMENT_SPEC = {
    "type": "object",
    "required": ["selector", "template"],
    "properties": {
        "replicas": {"type": "integer", "minimum": 0},
        "selector": {
            "type": "object",
            "properties": {"matchLabels": _STRING_MAP, "matchExpressions": {"type": "array"}},
            "additionalProperties": False,
        },
        "template": {
            "type": "object",
            "required": ["spec"],
            "properties": {
                "metadata": {
                    "type": "object",
                    "properties": {"labels": _STRING_MAP, "annotations": _STRING_MAP},
                },
                "spec": {
                    "type": "object",
                    "required": ["containers"],
                    "properties": {
                        "containers": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "image": {"type": "string"},
                                },
                            },
                        },
                        "securityContext": {"type": "object"},
                    },
                },
            },
            "additionalProperties": False,
        },
        "strategy": {"type": "object"},
        "revisionHistoryLimit": {"type": "integer"},
        "minReadySeconds": {"type": "integer"},
        "progressDeadlineSeconds": {"type": "integer"},
        "paused": {"type": "boolean"},
    },
    "additionalProperties": False,
}

_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
_VALUE_MATCH = {
    "type": "object",
    "required": ["name", "value"],
    "properties": {
        "type": {"enum": ["Exact", "RegularExpression"]},
        "name": {"type": "string", "pattern": _HEADER_NAME},
        "value": {"type": "string", "minLength": 1},
    },
    "additionalProperties": False,
}
HTTPROUTE_SPEC = {
    "type": "object",
    "required": ["rules"],
    "properties": {
        "parentRefs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "group": {"type": "string"},
                    "kind": {"type": "string"},
                    "namespace": {"type": "string"},
                    "name": {"type": "string"},
                    "sectionName": {"type": "string"},
                    "port": _PORT,
                },
                "additionalProperties": False,
            },
        },
        "hostnames": {"type": "array", "items": {"type": "string"}},
        "rules": {
            "type": "array",
            "minItems": 1,
            "maxItems": 16,
            "items": {
                "type": "object",
                "properties": {
                    "matches": {
                        "type": "array",
                        "maxItems": 64,
                        "items": {
                            "type": "object",
                            "properties": {
                                "path": {
                                    "type": "object",
                                    "properties": {
                                        "type": {
                                            "enum": ["Exact", "PathPrefix", "RegularExpression"]
                                        },
                                        "value": {"type": "string", "pattern": "^/"},
                                    },
                                    "additionalProperties": False,
                                },
                                "headers": {"type": "array", "items": _VALUE_MATCH},
                                "queryParams": {"type": "array", "items": _VALUE_MATCH},
                                "method": {
                                    "enum": [
                                        "GET",
                                        "HEAD",
                                        "POST",
                                        "PUT",
                                        "DELETE",
                                        "CONNECT",
                                        "OPTIONS",
                                        "TRACE",
                                        "PATCH",
                                    ]
                                },
                            },
                            "additionalProperties": False,
                        },
                    },
                    "backendRefs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "group": {"type": "string"},
                                "kind": {"type": "string"},
                                "name": {"type": "string"},
                                "namespace": {"type": "string"},
                                "port": _PORT,
                                "weight": {"type": "integer", "minimum": 0, "maximum": 1000000},
                                "filters": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["type"],
                                        "properties": {
                                            "type": {"enum": ["ResponseHeaderModifier"]},
                                            "responseHeaderModifier": {
                                                "type": "object",
                                                "properties": {
                                                    "set": {
                                                        "type": "array",
                                                        "items": {
                                                            "type": "object",
                                                            "required": ["name", "value"],
                                                            "properties": {
                                                                "name": {
                                                                    "type": "string",
                                                                    "pattern": _HEADER_NAME,
                                                                },
                                                                "value": {"type": "string"},
                                                            },
                                                            "additionalProperties": False,
                                                        },
                                                    }
                                                },
                                                "additionalProperties": False,
                                            },
                                        },
                                        "additionalProperties": False,
                                    },
                                },
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}


def _core(spec: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}}
    props["metadata"] = OBJECT_META
    if spec is not None:
        props["spec"] = spec
    props.update(extra)
    return {"type": "object", "required": ["metadata"], "properties": props}


_CORE: dict[tuple[str, str], dict[str, Any]] = {
    ("v1", "Service"): _core(SERVICE_SPEC, status={"type": "object"}),
    ("apps/v1", "Deployment"): _core(DEPLOYMENT_SPEC, status={"type": "object"}),
    ("v1", "ConfigMap"): _core(None, data=_STRING_MAP, binaryData=_STRING_MAP),
    ("v1", "Namespace"): _core({"type": "object"}, status={"type": "object"}),
    ("v1", "ServiceAccount"): _core(
        None,
        automountServiceAccountToken={"type": "boolean"},
        secrets={"type": "array"},
        imagePullSecrets={"type": "array"},
    ),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _core(HTTPROUTE_SPEC),
}


def _core_semantics(obj: dict[str, Any]) -> list[str]:
    """Cross-field rules of the core kinds that a schema cannot say."""
    errors = []
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Service":
        if spec.get("type") == "ExternalName" and not spec.get("externalName"):
            errors.append(".spec.externalName: required for type ExternalName")
        if spec.get("type", "ClusterIP") != "ExternalName" and not spec.get("ports"):
            errors.append(".spec.ports: a ClusterIP Service needs at least one port")
    if kind == "Deployment":
        wanted = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in wanted.items()):
            errors.append(".spec.template.metadata.labels: must match spec.selector.matchLabels")
    return errors


# ---------------------------------------------------------------------------------------------
# The index


class Schemas:
    """Every served kind of the CRDs in `root`, plus the built-in checks above."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.crds: dict[tuple[str, str], dict[str, Any]] = {}
        for path in sorted((root / "crds").glob("*.yaml")):
            with path.open("rb") as handle:
                for crd in yaml.load_all(handle, Loader=_Loader):
                    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
                        continue
                    group = crd["spec"]["group"]
                    kind = crd["spec"]["names"]["kind"]
                    for version in crd["spec"]["versions"]:
                        if version.get("served"):
                            schema = version["schema"]["openAPIV3Schema"]
                            self.crds[(f"{group}/{version['name']}", kind)] = schema
        self._compiled: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
        with (root / "kustomize" / "kustomization.json").open() as handle:
            self.kustomization = jsonschema.Draft7Validator(json.load(handle))

    def _validator(self, key: tuple[str, str]) -> tuple[Any, dict[str, Any]] | None:
        if key not in self._compiled:
            if key in self.crds:
                raw = self.crds[key]
                schema = to_json_schema(raw)
                props = schema.setdefault("properties", {})
                props["apiVersion"] = {"type": "string"}
                props["kind"] = {"type": "string"}
                props["metadata"] = OBJECT_META
                schema["required"] = sorted({*schema.get("required", []), "metadata"})
            elif key in _CORE:
                raw = {}
                schema = _CORE[key]
            else:
                return None
            self._compiled[key] = (jsonschema.Draft202012Validator(schema), raw)
        return self._compiled[key]

    def validate(self, obj: Any) -> list[str]:
        """Every reason `obj` would be rejected; empty when it is valid."""
        if not isinstance(obj, dict):
            return [f"expected an object, got {type(obj).__name__}"]
        kustomize = str(obj.get("apiVersion", "")).startswith("kustomize.config.k8s.io/")
        if (kustomize and obj.get("kind") in ("Kustomization", "Component")) or not (
            "apiVersion" in obj or "kind" in obj
        ):
            # kustomize reads a kustomization.yaml without apiVersion and kind too.
            return _messages(self.kustomization.iter_errors(obj))
        key = (str(obj.get("apiVersion")), str(obj.get("kind")))
        found = self._validator(key)
        if found is None:
            return [f"no schema for {key[0]} {key[1]} (unknown or not served)"]
        validator, raw = found
        value = apply_defaults(obj, raw) if raw else obj
        errors = _messages(validator.iter_errors(value))
        if raw:
            _cel(raw, value, "", errors)
        errors.extend(_core_semantics(value))
        return errors

    def validate_text(self, text: str | bytes) -> list[str]:
        """Every document of a YAML stream; messages are prefixed with the document index."""
        errors: list[str] = []
        for index, doc in enumerate(yaml.load_all(text, Loader=_Loader)):
            if doc is None:
                continue
            errors.extend(f"document {index}: {e}" for e in self.validate(doc))
        return errors


def _messages(errors: Iterable[jsonschema.ValidationError]) -> list[str]:
    out = []
    for err in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        out.append(f"{where or '.'}: {err.message}")
    return list(dict.fromkeys(out))


@functools.cache
def load_schemas(root: Path) -> Schemas:
    """The parsed schemas of `root`, once per process (parsing the CRDs takes a second)."""
    return Schemas(root)


def schemas() -> Schemas:
    """The schemas for the current test (see `require_schemas`)."""
    return load_schemas(require_schemas())
