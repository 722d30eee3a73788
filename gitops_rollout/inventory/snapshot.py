"""Readiness from a kubectl-style snapshot (``--inventory FILE``), standing in for live clusters.

Accepts what ``kubectl get isvc,sdep,deploy -A -o yaml`` (a ``v1 List``) or ``-o json`` prints,
or a multi-document YAML stream. One file applies to every cluster; ``CLUSTER=FILE`` or a
directory of ``<cluster>.yaml`` files gives each cluster its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gitops_rollout.errors import ManifestError, Problem
from gitops_rollout.inventory.model import Kind, ObjectRef, Status
from gitops_rollout.inventory.readiness import status_of
from gitops_rollout.yamlsource import YamlProblem, load_documents

_KINDS = {Kind.INFERENCE_SERVICE, Kind.SELDON_DEPLOYMENT, Kind.DEPLOYMENT}

_EXPORT = "kubectl get isvc,sdep,deploy -A -o yaml"


def _items(value: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        if value.get("kind") == "List" or (
            isinstance(value.get("kind"), str) and value["kind"].endswith("List")
        ):
            for item in value.get("items") or []:
                yield from _items(item)
        else:
            yield value
    elif isinstance(value, list):
        for item in value:
            yield from _items(item)


def parse_snapshot(
    text: bytes, *, file: str, cluster: str = ""
) -> dict[tuple[str, ObjectRef], Status]:
    """Readiness of every model object in a snapshot, keyed by (cluster, ref)."""
    stripped = text.lstrip()
    docs: list[Any]
    if stripped.startswith(b"{"):
        try:
            docs = [json.loads(text)]
        except json.JSONDecodeError as err:
            raise ManifestError(
                [
                    Problem(
                        file,
                        err.lineno,
                        "",
                        f"invalid JSON at column {err.colno}: {err.msg[:1].lower()}{err.msg[1:]}",
                        f"fix the JSON at that line, or export it again with {_EXPORT[:-4]}json",
                    )
                ]
            ) from err
    else:
        try:
            found = load_documents(text, file=file)
        except YamlProblem as err:
            raise ManifestError([err.problem]) from err
        not_objects = [d for d in found if not isinstance(d.value, Mapping | list)]
        if not_objects:
            raise ManifestError(
                [
                    Problem(
                        file,
                        d.start_line,
                        "",
                        f"expected Kubernetes objects or a List, got {type(d.value).__name__} "
                        f"{d.value!r:.40}",
                        f"export the inventory with {_EXPORT}",
                    )
                    for d in not_objects
                ]
            )
        docs = [d.value for d in found]
    out: dict[tuple[str, ObjectRef], Status] = {}
    for obj in _items(docs):
        kind = obj.get("kind")
        if kind not in _KINDS:
            continue
        meta = obj.get("metadata") or {}
        name, namespace = meta.get("name"), meta.get("namespace") or "default"
        if not isinstance(name, str):
            continue
        out[(cluster, ObjectRef(str(kind), str(namespace), name))] = status_of(obj)
    return out


def load_snapshots(specs: list[str]) -> dict[tuple[str, ObjectRef], Status]:
    """Read every ``--inventory`` argument: FILE, CLUSTER=FILE, or a directory of cluster files."""
    out: dict[tuple[str, ObjectRef], Status] = {}
    for spec in specs:
        cluster, sep, path_text = spec.partition("=")
        if not sep or "/" in cluster or Path(spec).exists():
            cluster, path_text = "", spec
        path = Path(path_text)
        if path.is_dir():
            for child in sorted([*path.glob("*.yaml"), *path.glob("*.yml"), *path.glob("*.json")]):
                out.update(parse_snapshot(child.read_bytes(), file=str(child), cluster=child.stem))
        elif path.is_file():
            out.update(parse_snapshot(path.read_bytes(), file=str(path), cluster=cluster))
        else:
            raise ManifestError(
                [
                    Problem(
                        str(path),
                        None,
                        "",
                        "inventory file not found",
                        "check the --inventory path",
                    )
                ]
            )
    return out
