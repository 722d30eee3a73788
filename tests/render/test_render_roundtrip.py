"""Round-trip edits on real upstream manifests: byte-identical except the edited fields.

The inputs are the unchanged upstream files in ../shared/upstream-examples (none written
here), with their license headers, odd indentation, trailing spaces, quoting styles, flow
mappings, banner comments and a missing final newline. Each case states the exact text change
it expects as (old, new) replacements of the original, so anything else that moved fails the
test. Every edited file must still validate against the upstream schemas.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from schema_check import schemas

from gitops_rollout.inventory.model import ModelVersion, ObjectRef, Role
from gitops_rollout.manifest_edits import (
    EditError,
    YamlFile,
    add_resource,
    apply_edit,
    remove_resources,
)
from gitops_rollout.transitions import EditKind, ManifestEdit

UPSTREAM = Path(__file__).resolve().parents[3] / "shared" / "upstream-examples"


def upstream(path: str) -> str:
    full = UPSTREAM / path
    if not full.is_file():
        message = f"upstream example {path} not found under {UPSTREAM}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return full.read_text()


def version(
    kind: str, name: str, *, namespace: str = "default", label: str = "v1", predictor: str = ""
) -> ModelVersion:
    file = f"clusters/prod/{namespace}/{name}.yaml"
    return ModelVersion(
        ObjectRef(kind, namespace, name),
        "model",
        label,
        Role.UNKNOWN,
        file,
        0,
        predictor=predictor or None,
    )


def replaced(text: str, *changes: tuple[str, str]) -> str:
    """`text` with each (old, new) applied; each old must occur exactly once."""
    for old, new in changes:
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
        text = text.replace(old, new)
    return text


def without_document(text: str, marker: str) -> str:
    """`text` without the ``---``-separated document containing `marker` (a test oracle)."""
    parts = text.split("\n---\n")
    hits = [i for i, p in enumerate(parts) if marker in p]
    assert len(hits) == 1
    return "\n---\n".join(p for i, p in enumerate(parts) if i != hits[0])


ISVC = "InferenceService"
SDEP = "SeldonDeployment"
DEPLOY = "Deployment"
CANARY = "kserve/docs/samples/v1beta1/rollout/canary.yaml"
ABTEST = "seldon-core/examples/iter8/progressive_rollout/single_sdep/abtest.yaml"
BASELINE = "seldon-core/examples/iter8/progressive_rollout/separate_sdeps/baseline.yaml"
MNIST = "modelmesh-serving/config/example-isvcs/example-mlserver-sklearn-mnist-isvc.yaml"
OLD_MM = "modelmesh-serving/fvt/testdata/isvcs/old-format-mm.yaml"
BOOKINFO = "istio/samples/bookinfo/platform/kube/bookinfo.yaml"
XGB_IRIS = "seldon-core/servers/xgboostserver/samples/iris.yaml"
PROMOTE_V2 = "seldon-core/examples/iter8/progressive_rollout/single_sdep/promote-v2.yaml"


@dataclass(frozen=True)
class Case:
    id: str
    file: str
    edit: ManifestEdit
    expected: Callable[[str], str]
    """The expected text, from the original text."""
    source: str = ""

    def __str__(self) -> str:
        return self.id


CASES = [
    Case(
        "kserve canaryTrafficPercent changes in place",
        CANARY,
        ManifestEdit(EditKind.SET_TRAFFIC, version(ISVC, "my-model"), value=30),
        lambda t: replaced(t, ("canaryTrafficPercent: 10", "canaryTrafficPercent: 30")),
    ),
    Case(
        "kserve promotion removes canaryTrafficPercent and its comment",
        CANARY,
        ManifestEdit(EditKind.SET_TRAFFIC, version(ISVC, "my-model"), value=None),
        lambda t: replaced(
            t, ("    # 10% of traffic is sent to this model\n    canaryTrafficPercent: 10\n", "")
        ),
    ),
    Case(
        "role label added to an object without labels, after its annotations",
        "kserve/docs/samples/autoscaling/autoscale.yaml",
        ManifestEdit(EditKind.SET_ROLE, version(ISVC, "flowers-sample"), value="candidate"),
        lambda t: replaced(
            t,
            (
                '    autoscaling.knative.dev/target: "1"\n',
                '    autoscaling.knative.dev/target: "1"\n'
                "  labels:\n    gitops-rollout.dev/role: candidate\n",
            ),
        ),
    ),
    Case(
        "modelmesh primary adopts an old-format spec; license header untouched",
        MNIST,
        ManifestEdit(
            EditKind.ADOPT_SPEC,
            version(ISVC, "example-sklearn-mnist-svm"),
            source=version(ISVC, "example-sklearn-isvc", label="v2"),
        ),
        lambda t: replaced(
            t,
            (
                "    serving.kserve.io/deploymentMode: ModelMesh\n",
                "    serving.kserve.io/deploymentMode: ModelMesh\n"
                "  labels:\n    app.kubernetes.io/version: v2\n",
            ),
            (
                "    model:\n      modelFormat:\n        name: sklearn\n      storage:\n"
                "        key: localMinIO\n        path: sklearn/mnist-svm.joblib\n",
                "    sklearn:\n"
                "      storageUri: s3://modelmesh-example-models/sklearn/mnist-svm.joblib\n"
                "      protocolVersion: grpc-v2\n",
            ),
        ),
        source=OLD_MM,
    ),
    Case(
        "seldon predictor traffic keeps the trailing spaces after the value",
        ABTEST,
        ManifestEdit(
            EditKind.SET_TRAFFIC,
            version(SDEP, "iris", namespace="ns-production", predictor="baseline"),
            value=70,
        ),
        lambda t: replaced(t, ("traffic: 100    \n", "traffic: 70    \n")),
    ),
    Case(
        "seldon shadow replaces the candidate's traffic",
        ABTEST,
        ManifestEdit(
            EditKind.SET_TRAFFIC,
            version(SDEP, "iris", namespace="ns-production", predictor="candidate"),
            value="shadow",
        ),
        lambda t: replaced(
            t,
            ("  - name: candidate\n    traffic: 0\n", "  - name: candidate\n"),
            (
                "      implementation: XGBOOST_SERVER\n",
                "      implementation: XGBOOST_SERVER\n    shadow: true\n",
            ),
        ),
    ),
    Case(
        "seldon native removal drops only that predictor",
        ABTEST,
        ManifestEdit(
            EditKind.REMOVE,
            version(SDEP, "iris", namespace="ns-production", predictor="candidate"),
        ),
        lambda t: replaced(
            t,
            (
                "  - name: candidate\n    traffic: 0\n    graph:\n      name: classifier\n"
                "      modelUri: gs://seldon-models/xgboost/iris\n"
                "      implementation: XGBOOST_SERVER\n",
                "",
            ),
        ),
    ),
    Case(
        "removing a SeldonDeployment keeps the 4-space Namespace document as it was",
        BASELINE,
        ManifestEdit(
            EditKind.REMOVE, version(SDEP, "iris", namespace="ns-baseline", predictor="default")
        ),
        lambda t: t[: t.index("---\n")],
    ),
    Case(
        "removing one Deployment of bookinfo keeps banners and separators",
        BOOKINFO,
        ManifestEdit(EditKind.REMOVE, version(DEPLOY, "reviews-v3")),
        lambda t: without_document(t, "kind: Deployment\nmetadata:\n  name: reviews-v3\n"),
    ),
    Case(
        "bookinfo reviews-v1 adopts reviews-v2's pod spec; selectors and names stay",
        BOOKINFO,
        ManifestEdit(
            EditKind.ADOPT_SPEC,
            version(DEPLOY, "reviews-v1"),
            source=version(DEPLOY, "reviews-v2", label="v2"),
        ),
        lambda t: replaced(
            t,
            (
                "  name: reviews-v1\n  labels:\n    app: reviews\n    version: v1\n",
                "  name: reviews-v1\n  labels:\n    app: reviews\n    version: v1\n"
                "    app.kubernetes.io/version: v2\n",
            ),
            ("examples-bookinfo-reviews-v1:1.20.3", "examples-bookinfo-reviews-v2:1.20.3"),
        ),
        source=BOOKINFO,
    ),
    Case(
        "role label on a file without a final newline",
        XGB_IRIS,
        ManifestEdit(
            EditKind.SET_ROLE, version(SDEP, "xgboost", predictor="default"), value="primary"
        ),
        lambda t: replaced(
            t,
            (
                "  name: xgboost\n",
                "  name: xgboost\n  labels:\n    gitops-rollout.dev/role: primary\n",
            ),
        ),
    ),
    Case(
        "traffic appended at the end of a file without a final newline",
        XGB_IRIS,
        ManifestEdit(
            EditKind.SET_TRAFFIC, version(SDEP, "xgboost", predictor="default"), value=100
        ),
        lambda t: t + "\n    traffic: 100\n",
    ),
    Case(
        "seldon predictor adopts the candidate's graph; fields it lacks go",
        XGB_IRIS,
        ManifestEdit(
            EditKind.ADOPT_SPEC,
            version(SDEP, "xgboost", predictor="default"),
            source=version(
                SDEP, "iris", namespace="ns-production", label="v2", predictor="default"
            ),
        ),
        lambda t: replaced(
            t,
            (
                "  name: xgboost\n",
                "  name: xgboost\n  labels:\n    app.kubernetes.io/version: v2\n",
            ),
            (
                "  - graph:\n      children: []\n      implementation: XGBOOST_SERVER\n"
                "      modelUri: gs://seldon-models/xgboost/iris\n      name: classifier\n"
                "    name: default\n    replicas: 1",
                "  - graph:\n      name: classifier\n"
                "      modelUri: gs://seldon-models/xgboost/iris\n"
                "      implementation: XGBOOST_SERVER\n    name: default\n",
            ),
        ),
        source=PROMOTE_V2,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_edit_changes_only_the_edited_fields(case: Case) -> None:
    original = upstream(case.file)
    target = YamlFile(original, file=case.edit.version.file)
    source = None
    if case.source:
        assert case.edit.source is not None
        source = (
            target
            if case.source == case.file
            else YamlFile(upstream(case.source), file=case.edit.source.file)
        )
    apply_edit(target, case.edit, source=source)
    assert target.text == case.expected(original)
    assert schemas().validate_text(target.text) == []


def test_every_edit_is_idempotent() -> None:
    for case in CASES:
        if case.edit.kind is EditKind.REMOVE:
            continue
        original = upstream(case.file)
        target = YamlFile(original, file=case.edit.version.file)
        source = (
            YamlFile(upstream(case.source), file=case.edit.source.file)
            if case.source and case.edit.source
            else None
        )
        apply_edit(target, case.edit, source=source)
        once = target.text
        apply_edit(target, case.edit, source=source)
        assert target.text == once, case.id


# ---------------------------------------------------------------------------------------------
# The generic engine on other people's richly commented files


def test_argo_application_value_keeps_its_trailing_comment() -> None:
    original = upstream("argo-cd/docs/operator-manual/application.yaml")
    doc = YamlFile(original)
    doc.set_value(0, ("spec", "source", "targetRevision"), "v1.2.3")
    context = "or a git repo.\n    targetRevision: "
    assert doc.text == replaced(
        original, (context + "HEAD  # For Helm", context + "v1.2.3  # For Helm")
    )
    assert schemas().validate_text(doc.text) == []


def test_flux_second_document_key_removed_alone() -> None:
    original = upstream("flux2-kustomize-helm-example/clusters/production/infrastructure.yaml")
    doc = YamlFile(original)
    second = doc.documents()[1]
    doc.delete(second, ("spec", "wait"))
    head, _, tail = original.partition("  name: infra-configs\n")
    assert doc.text == head + "  name: infra-configs\n" + tail.replace("  wait: true\n", "", 1)
    assert schemas().validate_text(doc.text) == []


def test_kustomization_entries_removed_and_added_round_trip() -> None:
    original = upstream("flux2-kustomize-helm-example/apps/production/kustomization.yaml")
    doc = YamlFile(original, file="clusters/prod/apps/kustomization.yaml")
    assert add_resource(doc, "podinfo/rollout", folder="clusters/prod/apps")
    assert not add_resource(doc, "./podinfo/rollout/", folder="clusters/prod/apps")
    assert doc.text == replaced(
        original, ("  - ../base/podinfo\n", "  - ../base/podinfo\n  - podinfo/rollout\n")
    )
    gone = {"clusters/prod/base/podinfo", "clusters/prod/apps/podinfo/rollout"}
    removed = remove_resources(doc, folder="clusters/prod/apps", gone=gone.__contains__)
    assert removed == ["../base/podinfo", "podinfo/rollout"]
    assert doc.text == replaced(original, ("resources:\n  - ../base/podinfo\n", "resources: []\n"))
    assert schemas().validate_text(doc.text) == []


@pytest.mark.parametrize(
    ("text", "edit", "expected"),
    [
        pytest.param(
            "a:\n  labels: {x: '1', y: b}\n",
            lambda d: d.set_value(0, ("a", "labels", "z"), "on"),
            "a:\n  labels: {x: '1', y: b, z: \"on\"}\n",
            id="flow mapping gains a key; a YAML 1.1 boolean word is quoted",
        ),
        pytest.param(
            "a:\n  labels: {x: '1', y: b}\n",
            lambda d: d.delete(0, ("a", "labels", "x")),
            "a:\n  labels: {y: b}\n",
            id="flow mapping loses a key",
        ),
        pytest.param(
            "a:\n  n:\n  q: 'x'\n",
            lambda d: d.set_value(0, ("a", "n"), 3),
            "a:\n  n: 3\n  q: 'x'\n",
            id="an empty value is filled after its colon",
        ),
        pytest.param(
            "a:\n  q: 'it''s'\n",
            lambda d: d.set_value(0, ("a", "q"), "1.10"),
            "a:\n  q: '1.10'\n",
            id="single-quoted stays single-quoted",
        ),
        pytest.param(
            "- name: a\n  x: 1\n- name: b\n",
            lambda d: d.delete(0, (0, "name")),
            "- x: 1\n- name: b\n",
            id="first key of a list item: the next key moves up",
        ),
        pytest.param(
            "spec:\n  p: {a: 1}\nother: 2\n",
            lambda d: d.set_value(0, ("spec", "p"), {"b": {"c": 2}}),
            "spec:\n  p:\n    b:\n      c: 2\nother: 2\n",
            id="a flow value replaced by a block",
        ),
        pytest.param(
            "resources:\r\n  - a.yaml\r\nspec:\r\n  x: 1\r\n",
            lambda d: (
                d.append_item(0, ("resources",), "b/rollout"),
                d.set_value(0, ("spec", "y"), {"z": 2}),
            ),
            "resources:\r\n  - a.yaml\r\n  - b/rollout\r\nspec:\r\n  x: 1\r\n  y:\r\n    z: 2\r\n",
            id="Windows line endings are kept for inserted lines",
        ),
        pytest.param(
            "only: 1\n",
            lambda d: d.set_value(0, ("new", "deep"), "v1.0"),
            "only: 1\nnew:\n  deep: v1.0\n",
            id="missing parents are created",
        ),
    ],
)
def test_engine_edge_cases(text: str, edit: Callable[[YamlFile], None], expected: str) -> None:
    doc = YamlFile(text)
    edit(doc)
    assert doc.text == expected


def test_an_object_that_is_not_there_is_a_located_error() -> None:
    doc = YamlFile(upstream(CANARY), file="clusters/prod/default/canary.yaml")
    edit = ManifestEdit(EditKind.SET_TRAFFIC, version(ISVC, "other-model"), value=5)
    with pytest.raises(EditError, match=r"InferenceService/default/other-model is not in"):
        apply_edit(doc, edit)
