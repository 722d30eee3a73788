"""Which Service the inventory scan gives a Deployment version (ROUTING.md: a plain Deployment
is routed to through its Service): the one named like the Deployment, else the first, in the
order the scan meets files and documents, whose selector names the version, and the model or
no model. Services of another namespace or another model, and versions that are not
Deployments, get none."""

from __future__ import annotations

from pathlib import Path

from gitops_rollout.inventory import manifests
from gitops_rollout.tree import DirTree


def _deployment(name: str, model: str, version: str, namespace: str = "ml") -> str:
    return f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {namespace}
  labels:
    app.kubernetes.io/name: {model}
    app.kubernetes.io/version: "{version}"
    gitops-rollout.dev/watch: "true"
spec:
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
        - name: main
          image: registry.example/{model}:{version}
"""


def _service(
    name: str, port: int, selector: dict[str, str] | None = None, *, namespace: str = "ml"
) -> str:
    labels = "".join(
        f'    {key}: "{value}"\n' for key, value in (selector or {"app": name}).items()
    )
    return f"""apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  selector:
{labels}  ports:
    - name: http
      port: {port}
"""


def _by_version(
    root: Path, files: dict[str, list[str]]
) -> dict[str, tuple[str | None, tuple[int, ...]]]:
    """{model-version: (its Service, the ports)} the scan finds in `files` ({name: documents})
    of namespace folder ``ml`` of cluster ``prod``."""
    folder = root / "clusters" / "prod" / "ml"
    folder.mkdir(parents=True)
    for name, docs in files.items():
        (folder / name).write_text("---\n".join(docs))
    inventory, problems = manifests.scan(DirTree(root))
    assert not problems, problems
    return {
        f"{v.model}-{v.version}": (v.service_name, tuple(p.port for p in v.services))
        for versions in inventory.clusters["prod"].models.values()
        for v in versions
    }


NAME = "app.kubernetes.io/name"
VERSION = "app.kubernetes.io/version"


def _labels(version: str, model: str | None = None) -> dict[str, str]:
    return {VERSION: version} | ({NAME: model} if model is not None else {})


def test_the_named_service_then_the_first_selector_match(tmp_path: Path) -> None:
    files = {
        "a.yaml": [
            _deployment("scorer-v1", "scorer", "1"),
            _deployment("scorer-v2", "scorer", "2"),
            _deployment("scorer-v3", "scorer", "3"),
            _deployment("ranker-v1", "ranker", "1"),
            # Selects v1 by its labels, but scorer-v1 has a Service of its own name.
            _service("any-v1", 81, _labels("1")),
            _service("scorer-v1", 80),
            # For v2: one naming no model comes first, one naming the model after it.
            _service("v2-any-model", 82, _labels("2")),
            _service("v2-scorer", 83, _labels("2", "scorer")),
            # For v3: the model's comes first, then one naming no model.
            _service("v3-scorer", 84, _labels("3", "scorer")),
            _service("v3-any-model", 85, _labels("3")),
            _service("v3-other", 86, _labels("3", "scorer"), namespace="other"),
        ],
        # A later file: selects ranker v1 with the wrong model, then with its own.
        "b.yaml": [
            _service("ranker-wrong", 87, _labels("1", "scorer")),
            _service("ranker-right", 88, _labels("1", "ranker")),
        ],
    }
    assert _by_version(tmp_path, files) == {
        "scorer-1": ("scorer-v1", (80,)),
        "scorer-2": ("v2-any-model", (82,)),
        "scorer-3": ("v3-scorer", (84,)),
        "ranker-1": ("any-v1", (81,)),  # names no model, and comes first
    }


def test_services_of_other_namespaces_and_models_attach_to_nothing(tmp_path: Path) -> None:
    files = {
        "a.yaml": [
            _deployment("scorer-v1", "scorer", "1"),
            _service("elsewhere", 80, _labels("1", "scorer"), namespace="other"),
            _service("another-model", 81, _labels("1", "ranker")),
            _service("another-version", 82, _labels("2", "scorer")),
        ]
    }
    assert _by_version(tmp_path, files) == {"scorer-1": (None, ())}
