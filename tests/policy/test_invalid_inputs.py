"""Every kind of bad input, paired with the exact messages it must produce (house style 16, 17).

Each case is a tiny repository: the valid policy of `repos.POLICY` and the manifests of
`repos.MANIFESTS`, with one thing broken. The whole repository is loaded the way `validate` and
every reconcile pass load it, and the messages are compared in full: the file, the line, the
field path, the reason and the fix are all part of the contract a user reads.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gitops_rollout.errors import ManifestError
from gitops_rollout.inventory.snapshot import load_snapshots, parse_snapshot
from gitops_rollout.policy import load_policy_text
from gitops_rollout.yamlsource import MAX_BYTES, MAX_DEPTH, YamlProblem, load_documents, load_fast

from .repos import MANIFEST_FILE, MANIFESTS, POLICY, POLICY_FILE, SERVICE, edit, load_repo

P = POLICY_FILE
DNS_FIX = (
    "use lower-case letters, digits and '-', starting and ending with a letter or digit, "
    "e.g. my-model-2"
)
DURATION_FIX = "write it as 30s, 5m, 1h, 1h30m or a number of seconds"
QUOTE_FIX = (
    "put the value in quotes; YAML reads unquoted yes, no, on, off, true, false and numbers "
    "as other types"
)
STRATEGIES = "canary, progressive, mirror, blue-green, ab"

STEPS = "    steps:\n      - weight: 50\n      - weight: 100\n"
CANARY = """\
    type: canary
    match:
      - headers:
          x-user:
            exact: beta
"""
"""Replaces lines 10-13 of the policy: line 12 is the match entry, 13 the header, 14 its match."""

ALIAS_BOMB = "\n".join(
    [
        'a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]',
        *(
            f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]"
            for prev, name in zip("abcde", "bcdef", strict=True)
        ),
        "",
    ]
)
"""Six lines that expand to 10^6 values."""

INFERENCE_SERVICE = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: demo-0
  labels:
    app.kubernetes.io/name: demo
    app.kubernetes.io/version: v0
    gitops-rollout.dev/watch: "true"
spec:
  predictor:
    model: {modelFormat: {name: sklearn}, storageUri: "s3://models/demo"}
"""
MODELMESH_SERVICE = INFERENCE_SERVICE.replace(
    "spec:\n", "  annotations:\n    serving.kserve.io/deploymentMode: ModelMesh\nspec:\n"
)
ISVC_FILE = "clusters/prod/serving/demo/demo-0.yaml"


@dataclass(frozen=True)
class Case:
    """A repository (the valid one with `files` laid over it) and what loading it must say."""

    files: Mapping[str, str | bytes]
    expected: list[str]
    loaded: tuple[str, ...] = ()
    """Names of the policies that must still load (and reconcile)."""
    manifests: Mapping[str, str] = field(default_factory=lambda: dict(MANIFESTS))


def policy(text: str | bytes, expected: list[str]) -> Case:
    """The valid manifests with `text` as the only policy."""
    return Case({POLICY_FILE: text}, expected)


def changed(old: str, new: str, expected: list[str]) -> Case:
    """The valid policy with one edit."""
    return policy(edit(old, new), expected)


def spec_plus(extra: str, expected: list[str]) -> Case:
    """The valid policy with `extra` appended under spec (from line 16 on)."""
    return policy(POLICY + extra, expected)


CASES = [
    # ---- YAML syntax ------------------------------------------------------------------------
    pytest.param(
        changed(
            "  target:\n",
            "\ttarget:\n",
            [
                f"{P}:7: invalid YAML: tab character in the indentation "
                "(fix: indent with spaces; YAML does not allow tabs)",
            ],
        ),
        id="yaml-tab-indentation",
    ),
    pytest.param(
        changed(
            "    kind: deployment\n",
            "    kind: deployment\n\tmode: separate\n",
            [
                f"{P}:9: invalid YAML: tab character in the indentation "
                "(fix: indent with spaces; YAML does not allow tabs)",
            ],
        ),
        id="yaml-tab-after-spaces",
    ),
    pytest.param(
        changed(
            "name: demo",
            'name: "demo',
            [
                f"{P}:4: invalid YAML: a quoted string is never closed "
                "(fix: add the closing quote)",
            ],
        ),
        id="yaml-unclosed-quote",
    ),
    pytest.param(
        changed(
            STEPS,
            "    steps: [{weight: 50}, {weight: 100}\n",
            [
                f"{P}:11: invalid YAML: a [ list is never closed "
                "(fix: close it with ']', and separate its items with ',')",
            ],
        ),
        id="yaml-unclosed-flow-list",
    ),
    pytest.param(
        changed(
            "  clusters:\n    - name: prod\n",
            "  clusters:\n    - {name: prod\n",
            [
                f"{P}:15: invalid YAML: a {{ mapping is never closed "
                "(fix: close it with '}', and separate its entries with ',')",
            ],
        ),
        id="yaml-unclosed-flow-mapping",
    ),
    pytest.param(
        changed(
            "    - name: prod\n",
            "    - name: [\n",
            [
                f"{P}:15: invalid YAML: the file ends before the last value is complete "
                "(fix: close every [ and { that is opened, and finish the last value)",
            ],
        ),
        id="yaml-file-ends-mid-value",
    ),
    pytest.param(
        changed(
            "  target:\n",
            "   target:\n",
            [
                f"{P}:7: invalid YAML: unexpected ':' (a `key: value` cannot start here) "
                "(fix: check this line's indentation, or quote a value that contains ': ')",
            ],
        ),
        id="yaml-over-indented-key",
    ),
    pytest.param(
        changed(
            "  clusters:\n",
            " clusters:\n",
            [
                f"{P}:14: invalid YAML: this line does not fit the mapping around it "
                "(fix: indent it like the other keys of its mapping, or quote it)",
            ],
        ),
        id="yaml-under-indented-key",
    ),
    pytest.param(
        changed(
            "namespace: serving",
            "namespace: serving: blue",
            [
                f"{P}:6: invalid YAML: unexpected ':' (a `key: value` cannot start here) "
                "(fix: check this line's indentation, or quote a value that contains ': ')",
            ],
        ),
        id="yaml-colon-in-plain-value",
    ),
    pytest.param(
        changed(
            "  namespace: serving\n",
            "  namespace serving\n",
            [
                f"{P}:6: invalid YAML: no ':' after the key on this line "
                "(fix: write it as `key: value`, or indent it as part of the value above)",
            ],
        ),
        id="yaml-key-without-colon",
    ),
    pytest.param(
        changed(
            "    - name: prod\n",
            "    - name: prod\n  - name: staging\n",
            [
                f"{P}:16: invalid YAML: this line does not fit the mapping around it "
                "(fix: indent it like the other keys of its mapping, or quote it)",
            ],
        ),
        id="yaml-list-item-outside-its-list",
    ),
    pytest.param(
        changed(
            "namespace: serving",
            "namespace: @serving",
            [
                f"{P}:6: invalid YAML: a plain value cannot start with '@' "
                "(fix: put the value in quotes)",
            ],
        ),
        id="yaml-reserved-character",
    ),
    pytest.param(
        changed(
            "namespace: serving",
            "namespace: *serving",
            [
                f"{P}:6: invalid YAML: alias (*name) to an anchor that is not defined "
                "(fix: define the anchor with &name before using it, "
                "or quote a value that starts with *)",
            ],
        ),
        id="yaml-undefined-alias",
    ),
    pytest.param(
        changed(
            "namespace: serving",
            "namespace: !ns serving",
            [
                f"{P}:6: invalid YAML: unsupported tag '!ns' "
                "(fix: remove the !tag; only plain YAML values are read)",
            ],
        ),
        id="yaml-unknown-tag",
    ),
    pytest.param(
        changed(
            "namespace: serving",
            "namespace: 2024-13-01",
            [
                f"{P}:6: spec.namespace: invalid YAML: '2024-13-01' cannot be read as a date "
                "(month must be in 1..12) (fix: quote the value to keep it as text)",
            ],
        ),
        id="yaml-impossible-date",
    ),
    pytest.param(
        policy(
            POLICY.encode().replace(b"serving", b"serv\xffing"),
            [
                f"{P}: not UTF-8 text: byte 0xff at offset 106 (invalid leading UTF-8 octet) "
                "(fix: save the file as UTF-8)",
            ],
        ),
        id="yaml-not-utf8",
    ),
    pytest.param(
        spec_plus(
            "  x: " + "[" * 150 + "]" * 150 + "\n",
            [
                f"{P}:16: values nest more than 100 levels deep "
                "(fix: flatten the document; policies and manifests need a few levels)",
            ],
        ),
        id="yaml-nested-too-deep",
    ),
    pytest.param(
        policy(
            "a: &a [*a]\n" + POLICY,
            [
                f"{P}:1: a: values nest more than 100 levels deep "
                "(an alias inside its own anchor?) "
                "(fix: write the value out instead of the recursive alias)",
            ],
        ),
        id="yaml-recursive-alias",
    ),
    pytest.param(
        policy(
            POLICY + "# " + "x" * MAX_BYTES + "\n",
            [
                f"{P}: file is 1048833 bytes, over the 1 MiB (1048576 bytes) limit "
                "(fix: split it into smaller files; a policy or manifest is a few KB)",
            ],
        ),
        id="oversized-file",
    ),
    pytest.param(
        policy(
            ALIAS_BOMB + POLICY,
            [
                f"{P}:6: f: aliases expand the document to more than 200000 values (an alias bomb) "
                "(fix: write the values out instead of repeating aliases)",
            ],
        ),
        id="alias-bomb",
    ),
    pytest.param(
        changed(
            "  namespace: serving\n",
            "  namespace: serving\n  namespace: other\n",
            [
                f"{P}:7: spec.namespace: duplicate key; 'namespace' is already set on line 6 "
                "(fix: keep one of the two entries)",
            ],
        ),
        id="duplicate-key",
    ),
    pytest.param(
        changed(
            "      - weight: 50\n",
            "      - weight: 50\n        50: fast\n",
            [
                f"{P}:13: spec.strategy.steps[0]: key '50' is a number, not a string "
                '(fix: quote it: "50")',
            ],
        ),
        id="number-as-key",
    ),
    pytest.param(
        changed(
            "  target:\n",
            "  on: push\n  target:\n",
            [
                f"{P}:7: spec: key 'on' is a boolean, not a string (fix: quote it: \"on\")",
            ],
        ),
        id="boolean-as-key",
    ),
    # ---- Documents that are not a policy ----------------------------------------------------
    pytest.param(
        policy("", [f"{P}:1: file is empty (fix: add a RolloutPolicy or delete the file)"]),
        id="empty-file",
    ),
    pytest.param(
        policy(
            "# TODO: write the policy\n---\n",
            [
                f"{P}:1: file is empty (fix: add a RolloutPolicy or delete the file)",
            ],
        ),
        id="only-comments",
    ),
    pytest.param(
        policy(
            "- name: demo\n- name: other\n",
            [
                f"{P}:1: expected a RolloutPolicy mapping, got a list (fix: start the document "
                "with apiVersion: gitops-rollout.dev/v1alpha1 and kind: RolloutPolicy)",
            ],
        ),
        id="list-instead-of-mapping",
    ),
    pytest.param(
        changed(
            "gitops-rollout.dev/v1alpha1",
            "gitops-rollout.dev/v1",
            [
                f"{P}:1: apiVersion: unsupported apiVersion 'gitops-rollout.dev/v1' "
                "(fix: use apiVersion: gitops-rollout.dev/v1alpha1)",
            ],
        ),
        id="wrong-api-version",
    ),
    pytest.param(
        policy(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: demo\n",
            [
                f"{P}:2: kind: expected kind RolloutPolicy, got the text 'Deployment' (fix: use "
                "kind: RolloutPolicy with apiVersion: gitops-rollout.dev/v1alpha1; other kinds do "
                "not belong in policies/)",
            ],
        ),
        id="wrong-kind",
    ),
    pytest.param(
        changed(
            "kind: RolloutPolicy\n",
            "",
            [
                f"{P}:1: kind: required field is missing (fix: use kind: RolloutPolicy with "
                "apiVersion: gitops-rollout.dev/v1alpha1; other kinds do not belong in policies/)",
            ],
        ),
        id="missing-kind",
    ),
    # ---- Unknown fields ---------------------------------------------------------------------
    pytest.param(
        policy(
            POLICY + "status: {}\n",
            [
                f"{P}:16: status: unknown field "
                "(fix: remove it; `gitops-rollout schema` lists every field)",
            ],
        ),
        id="unknown-field-top-level",
    ),
    pytest.param(
        changed(
            "  clusters:\n",
            "  clustrs:\n",
            [
                f"{P}:5: spec.clusters: required field is missing (fix: add `clusters:` under spec "
                "(clusters to roll out to, in order, as - name: <cluster>))",
                f"{P}:14: spec.clustrs: unknown field (fix: did you mean `clusters`? Otherwise "
                "remove it)",
            ],
        ),
        id="misspelt-field-in-spec",
    ),
    pytest.param(
        changed(
            "    kind: deployment\n",
            "    kind: deployment\n    replicas: 2\n",
            [
                f"{P}:9: spec.target.replicas: unknown field "
                "(fix: remove it; `gitops-rollout schema` lists every field)",
            ],
        ),
        id="unknown-field-in-target",
    ),
    pytest.param(
        changed(
            "      - weight: 50\n",
            "      - weight: 50\n        pause: 5m\n",
            [
                f"{P}:13: spec.strategy.steps[0].pause: unknown field "
                "(fix: remove it; `gitops-rollout schema` lists every field)",
            ],
        ),
        id="unknown-field-in-step",
    ),
    pytest.param(
        spec_plus(
            "  analysis:\n    objectives:\n      - metric: error-rate\n        upperlimit: 1\n",
            [
                f"{P}:19: spec.analysis.objectives[0].upperlimit: unknown field "
                "(fix: did you mean `upperLimit`? Otherwise remove it)",
            ],
        ),
        id="unknown-field-in-objective",
    ),
    # ---- Wrong types ------------------------------------------------------------------------
    pytest.param(
        changed(
            "weight: 50",
            "weight: fifty",
            [
                f"{P}:12: spec.strategy.steps[0].weight: expected a whole number, got the text "
                "'fifty' (fix: write a whole number, without quotes)",
            ],
        ),
        id="string-for-int",
    ),
    pytest.param(
        changed(
            "weight: 50",
            'weight: "50"',
            [
                f"{P}:12: spec.strategy.steps[0].weight: expected a whole number, got the text "
                "'50' (fix: write a whole number, without quotes)",
            ],
        ),
        id="quoted-number-for-int",
    ),
    pytest.param(
        changed(
            "weight: 50",
            "weight: true",
            [
                f"{P}:12: spec.strategy.steps[0].weight: expected a whole number, got the boolean "
                "true (fix: write a whole number, without quotes)",
            ],
        ),
        id="bool-for-int",
    ),
    pytest.param(
        changed(
            "weight: 50",
            "weight: 12.5",
            [
                f"{P}:12: spec.strategy.steps[0].weight: expected a whole number, got the number "
                "12.5 (fix: write a whole number, without quotes)",
            ],
        ),
        id="fraction-for-int",
    ),
    pytest.param(
        changed(
            "  target:\n    kind: deployment\n",
            "  target:\n    - deployment\n",
            [
                f"{P}:7: spec.target: expected a mapping, got a list "
                "(fix: write `key: value` lines indented below it)",
            ],
        ),
        id="list-for-mapping",
    ),
    pytest.param(
        changed(
            "  name: demo\n",
            "",
            [
                f"{P}:3: metadata: expected a mapping, got nothing (null) "
                "(fix: write `key: value` lines indented below it)",
            ],
        ),
        id="null-for-mapping",
    ),
    pytest.param(
        changed(
            "namespace: serving",
            "namespace: yes",
            [
                f"{P}:6: spec.namespace: expected a string, got the boolean true "
                f"(fix: {QUOTE_FIX})",
            ],
        ),
        id="bool-for-string",
    ),
    pytest.param(
        changed(
            "namespace: serving",
            "namespace: 42",
            [
                f"{P}:6: spec.namespace: expected a string, got the number 42 (fix: {QUOTE_FIX})",
            ],
        ),
        id="number-for-string",
    ),
    pytest.param(
        changed(
            "  clusters:\n    - name: prod\n",
            "  clusters:\n    name: prod\n",
            [
                f"{P}:14: spec.clusters: expected a list, got a mapping "
                "(fix: write one `- item` line per entry, indented below it)",
            ],
        ),
        id="mapping-for-list",
    ),
    pytest.param(
        spec_plus(
            "  gitops:\n    autoMerge: step\n",
            [
                f"{P}:17: spec.gitops.autoMerge: expected a list, got the text 'step' "
                "(fix: write it as a list: [step])",
            ],
        ),
        id="string-for-list",
    ),
    pytest.param(
        changed(
            "      - weight: 50\n",
            "      - weight: 50\n        approval: maybe\n",
            [
                f"{P}:13: spec.strategy.steps[0].approval: expected true or false, got the text "
                "'maybe' (fix: write true or false, without quotes)",
            ],
        ),
        id="string-for-bool",
    ),
    # ---- Values out of range ----------------------------------------------------------------
    pytest.param(
        changed(
            "weight: 100",
            "weight: 120",
            [
                f"{P}:13: spec.strategy.steps[1].weight: 120 is above 100 "
                "(fix: use a percentage from 0 to 100)",
            ],
        ),
        id="weight-above-100",
    ),
    pytest.param(
        changed(
            "weight: 50",
            "weight: -5",
            [
                f"{P}:12: spec.strategy.steps[0].weight: -5 is below 0 "
                "(fix: use a percentage from 0 to 100)",
            ],
        ),
        id="weight-negative",
    ),
    pytest.param(
        changed(
            STEPS,
            "    steps:\n      - weight: 50\n      - weight: 20\n",
            [
                f"{P}:13: spec.strategy.steps[1].weight: 20 is below the 50 of steps[0]; weights "
                "must not decrease (fix: order the steps by rising weight)",
            ],
        ),
        id="step-weights-decreasing",
    ),
    pytest.param(
        changed(
            "    type: progressive\n" + STEPS,
            "    type: mirror\n    mirrorPercent: 150\n",
            [
                f"{P}:11: spec.strategy.mirrorPercent: 150 is above 100 "
                "(fix: use a percentage from 0 to 100)",
            ],
        ),
        id="mirror-percent-above-100",
    ),
    pytest.param(
        changed(
            "    kind: deployment\n",
            "    kind: deployment\n    servicePort: 0\n",
            [
                f"{P}:9: spec.target.servicePort: 0 is below 1 (fix: use a value from 1 to 65535)",
            ],
        ),
        id="service-port-zero",
    ),
    pytest.param(
        spec_plus(
            "  analysis:\n    alpha: 0.5\n",
            [
                f"{P}:17: spec.analysis.alpha: 0.5 is not below 0.5 "
                "(fix: use a value above 0 and below 0.5)",
            ],
        ),
        id="alpha-at-upper-bound",
    ),
    # ---- Strategies -------------------------------------------------------------------------
    pytest.param(
        changed(
            "    type: progressive\n" + STEPS,
            "    type: blue-green\n    stages:\n"
            "      - {name: Blue_0, weight: 0}\n"
            "      - {name: Blue_50, weight: 50}\n"
            "      - {name: Blue_50, weight: 100}\n",
            [
                f"{P}:14: spec.strategy.stages[2].name: stage name 'Blue_50' is already used by "
                "stages[1] (fix: give every stage its own name)",
            ],
        ),
        id="blue-green-duplicate-stage",
    ),
    pytest.param(
        changed(
            "type: progressive",
            "type: rolling",
            [
                f"{P}:10: spec.strategy.type: unknown strategy type 'rolling' "
                f"(fix: use one of: {STRATEGIES})",
            ],
        ),
        id="unknown-strategy",
    ),
    pytest.param(
        changed(
            "    type: progressive\n",
            "",
            [
                f"{P}:9: spec.strategy.type: strategy type is missing "
                f"(fix: add `type:` with one of: {STRATEGIES})",
            ],
        ),
        id="missing-strategy-type",
    ),
    pytest.param(
        changed(
            STEPS,
            "    steps: []\n",
            [
                f"{P}:11: spec.strategy.steps: needs at least 1 entry, got 0 (fix: add an entry)",
            ],
        ),
        id="progressive-without-steps",
    ),
    pytest.param(
        changed(
            "    type: progressive\n" + STEPS,
            "    type: ab\n",
            [
                f"{P}:5: spec.analysis.rewards: strategy ab needs at least one reward to compare "
                "the versions by (fix: add analysis.rewards, e.g. - metric: user-engagement)",
            ],
        ),
        id="ab-without-rewards",
    ),
    # ---- Target -----------------------------------------------------------------------------
    pytest.param(
        changed(
            "kind: deployment",
            "kind: knative",
            [
                f"{P}:8: spec.target.kind: unknown value 'knative' "
                "(fix: use one of: kserve-modelmesh, kserve, seldon, deployment)",
            ],
        ),
        id="unknown-target-kind",
    ),
    pytest.param(
        changed(
            "    kind: deployment\n",
            "    kind: deployment\n    mode: native\n",
            [
                f"{P}:9: spec.target.mode: target deployment has no native mode (only kserve and "
                "seldon do) (fix: remove mode, or use mode: separate)",
            ],
        ),
        id="native-mode-on-deployment",
    ),
    pytest.param(
        changed(
            "    kind: deployment\n",
            "    kind: deployment\n    protocol: tcp\n",
            [
                f"{P}:9: spec.target.protocol: unknown value 'tcp' (fix: use one of: http, grpc)",
            ],
        ),
        id="unknown-protocol",
    ),
    # ---- Missing required fields ------------------------------------------------------------
    pytest.param(
        changed(
            "  namespace: serving\n",
            "",
            [
                f"{P}:5: spec.namespace: required field is missing (fix: add `namespace:` under "
                "spec (the namespace of the model's manifests: clusters/<cluster>/<namespace>/))",
            ],
        ),
        id="missing-namespace",
    ),
    pytest.param(
        changed(
            "  clusters:\n    - name: prod\n",
            "",
            [
                f"{P}:5: spec.clusters: required field is missing (fix: add `clusters:` under spec "
                "(clusters to roll out to, in order, as - name: <cluster>))",
            ],
        ),
        id="missing-clusters",
    ),
    pytest.param(
        changed(
            "  clusters:\n    - name: prod\n",
            "  clusters: []\n",
            [
                f"{P}:14: spec.clusters: needs at least 1 entry, got 0 (fix: add an entry "
                "(clusters to roll out to, in order, as - name: <cluster>))",
            ],
        ),
        id="empty-clusters",
    ),
    pytest.param(
        changed(
            "  target:\n    kind: deployment\n",
            "",
            [
                f"{P}:5: spec.target: required field is missing (fix: add `target:` under spec "
                "(the serving platform, e.g. kind: deployment))",
            ],
        ),
        id="missing-target",
    ),
    pytest.param(
        changed(
            "    kind: deployment\n",
            "    protocol: http\n",
            [
                f"{P}:7: spec.target.kind: required field is missing (fix: add `kind:` under "
                "spec.target (the serving platform the model's versions run on))",
            ],
        ),
        id="missing-target-kind",
    ),
    # ---- Names that are not Kubernetes names (they become paths and object names) -----------
    pytest.param(
        changed(
            "name: demo",
            "name: Demo",
            [
                f"{P}:4: metadata.name: 'Demo' is not a valid name (fix: {DNS_FIX})",
            ],
        ),
        id="name-upper-case",
    ),
    pytest.param(
        changed(
            "namespace: serving",
            "namespace: ml_serving",
            [
                f"{P}:6: spec.namespace: 'ml_serving' is not a valid name (fix: {DNS_FIX})",
            ],
        ),
        id="namespace-underscore",
    ),
    pytest.param(
        changed(
            "namespace: serving",
            "namespace: ../etc",
            [
                f"{P}:6: spec.namespace: '../etc' is not a valid name (fix: {DNS_FIX})",
            ],
        ),
        id="namespace-path-traversal",
    ),
    pytest.param(
        changed(
            "  namespace: serving\n",
            "  model: a/b\n  namespace: serving\n",
            [
                f"{P}:6: spec.model: 'a/b' is not a valid name (fix: {DNS_FIX})",
            ],
        ),
        id="model-with-slash",
    ),
    pytest.param(
        changed(
            "  namespace: serving\n",
            f"  model: {'m' * 64}\n  namespace: serving\n",
            [
                f"{P}:6: spec.model: 64 characters long; at most 63 are allowed "
                "(fix: shorten it to 63 characters or fewer)",
            ],
        ),
        id="model-too-long",
    ),
    pytest.param(
        changed(
            "- name: prod",
            "- name: ../prod",
            [
                f"{P}:15: spec.clusters[0].name: '../prod' is not a valid name (fix: {DNS_FIX})",
            ],
        ),
        id="cluster-path-traversal",
    ),
    pytest.param(
        spec_plus(
            "  routing:\n    name: routes/demo\n",
            [
                f"{P}:17: spec.routing.name: 'routes/demo' is not a valid name (fix: {DNS_FIX})",
            ],
        ),
        id="routing-name-with-slash",
    ),
    pytest.param(
        spec_plus(
            "  routing:\n    uriPrefix: score\n",
            [
                f"{P}:17: spec.routing.uriPrefix: 'score' is not a URI prefix "
                "(fix: start it with /)",
            ],
        ),
        id="uri-prefix-without-slash",
    ),
    # ---- Durations --------------------------------------------------------------------------
    pytest.param(
        changed(
            "      - weight: 50\n",
            "      - weight: 50\n        minDuration: 5 minutes\n",
            [
                f"{P}:13: spec.strategy.steps[0].minDuration: '5 minutes' is not a duration "
                f"(fix: {DURATION_FIX})",
            ],
        ),
        id="duration-in-words",
    ),
    pytest.param(
        changed(
            "      - weight: 50\n",
            "      - weight: 50\n        minDuration: 1d\n",
            [
                f"{P}:13: spec.strategy.steps[0].minDuration: '1d' is not a duration "
                f"(fix: {DURATION_FIX})",
            ],
        ),
        id="duration-in-days",
    ),
    pytest.param(
        changed(
            "      - weight: 50\n",
            "      - weight: 50\n        minDuration: -30\n",
            [
                f"{P}:13: spec.strategy.steps[0].minDuration: -30 is negative "
                "(fix: use a duration of 0s or more)",
            ],
        ),
        id="duration-negative",
    ),
    pytest.param(
        changed(
            "      - weight: 50\n",
            "      - weight: 50\n        minDuration: .inf\n",
            [
                f"{P}:13: spec.strategy.steps[0].minDuration: inf is not a duration "
                f"(fix: {DURATION_FIX})",
            ],
        ),
        id="duration-infinite",
    ),
    # ---- Request matching -------------------------------------------------------------------
    pytest.param(
        changed(
            "    type: progressive\n" + STEPS,
            CANARY.replace("exact: beta", "regex: '(beta'"),
            [
                f"{P}:14: spec.strategy.match[0].headers.x-user.regex: regex '(beta' does not "
                "compile: missing ), unterminated subpattern at position 0 "
                "(fix: correct the regular expression, or use exact or prefix)",
            ],
        ),
        id="match-invalid-regex",
    ),
    pytest.param(
        changed(
            "    type: progressive\n" + STEPS,
            "    type: canary\n    match:\n      - {}\n",
            [
                f"{P}:12: spec.strategy.match[0]: an empty match clause matches every request "
                "(fix: give headers, uri, method, queryParams or sourceLabels, "
                "or remove the clause)",
            ],
        ),
        id="match-empty-clause",
    ),
    pytest.param(
        changed(
            "    type: progressive\n" + STEPS,
            CANARY.replace("x-user:", "x user:"),
            [
                f"{P}:13: spec.strategy.match[0].headers.x user: 'x user' is not a valid HTTP "
                "header name (fix: use letters, digits and - (no spaces, ':' or '/'), "
                "e.g. x-user-group)",
            ],
        ),
        id="match-invalid-header-name",
    ),
    pytest.param(
        changed(
            "    type: progressive\n" + STEPS,
            CANARY.replace("exact: beta", "exact: beta\n            prefix: be"),
            [
                f"{P}:13: spec.strategy.match[0].headers.x-user: gives exact and prefix "
                "(fix: give exactly one of exact, prefix or regex)",
            ],
        ),
        id="match-exact-and-prefix",
    ),
    # ---- Analysis ---------------------------------------------------------------------------
    pytest.param(
        spec_plus(
            "  analysis:\n    objectives:\n      - metric: error-rate\n"
            "        lowerLimit: 0.5\n        upperLimit: 0.01\n",
            [
                f"{P}:19: spec.analysis.objectives[0].lowerLimit: lowerLimit 0.5 is above "
                "upperLimit 0.01 (fix: make lowerLimit at most upperLimit; did you swap them?)",
            ],
        ),
        id="objective-limits-swapped",
    ),
    pytest.param(
        spec_plus(
            "  analysis:\n    interval: 2s\n",
            [
                f"{P}:17: spec.analysis.interval: 2s is shorter than the 5s minimum (fix: use 5s "
                "or more; Prometheus scrapes every 15-30s, so 30s or 1m is typical)",
            ],
        ),
        id="analysis-interval-below-5s",
    ),
    pytest.param(
        spec_plus(
            "  analysis:\n    rewards:\n      - metric: User_Engagement\n",
            [
                f"{P}:18: spec.analysis.rewards[0].metric: 'User_Engagement' is not a valid metric "
                "name (fix: start with a lower-case letter, then lower-case letters, digits and "
                "'-' (at most 63))",
            ],
        ),
        id="metric-name-invalid",
    ),
    # ---- Clashes ----------------------------------------------------------------------------
    pytest.param(
        changed(
            "    - name: prod\n",
            "    - name: prod\n    - name: prod\n",
            [
                f"{P}:16: spec.clusters[1].name: cluster 'prod' is already listed at clusters[0] "
                "(fix: remove one of the two entries)",
            ],
        ),
        id="cluster-listed-twice",
    ),
    pytest.param(
        Case(
            {
                POLICY_FILE: POLICY,
                "policies/other.yaml": edit(
                    "  namespace: serving\n", "  model: other\n  namespace: serving\n"
                ),
            },
            [
                "policies/other.yaml:4: metadata.name: policy 'demo' is already defined in "
                "policies/demo.yaml:4 (fix: rename one of them, or delete the duplicate)",
            ],
            loaded=("demo",),
        ),
        id="two-policies-one-name",
    ),
    pytest.param(
        Case(
            {
                POLICY_FILE: POLICY,
                "policies/fast.yaml": edit(
                    "  name: demo\nspec:\n", "  name: demo-fast\nspec:\n  model: demo\n"
                ),
            },
            [
                "policies/fast.yaml:6: spec.model: model 'demo' in cluster 'prod' is "
                "already rolled out by policy 'demo' (policies/demo.yaml:4); a model has one "
                "policy per cluster (fix: merge the two policies, or remove the cluster from "
                "one of them)",
            ],
            loaded=("demo",),
        ),
        id="two-policies-one-model",
    ),
    # ---- Policy against the manifests (validation) ------------------------------------------
    pytest.param(
        changed(
            "- name: prod",
            "- name: prod-west",
            [
                f"{P}:15: spec.clusters[0].name: cluster 'prod-west' has no folder "
                "clusters/prod-west/ (clusters found: prod) "
                "(fix: correct the name, or add the folder clusters/prod-west/)",
            ],
        ),
        id="cluster-folder-missing",
    ),
    pytest.param(
        changed(
            "name: demo",
            "name: scoring",
            [
                f"{P}:4: metadata.name: no version of model 'scoring' in clusters/prod/ "
                "(fix: label its manifests app.kubernetes.io/name: scoring and "
                'gitops-rollout.dev/watch: "true", or set spec.model to the name they carry)',
            ],
        ),
        id="model-has-no-versions",
    ),
    pytest.param(
        changed(
            "kind: deployment",
            "kind: seldon",
            [
                f"{P}:8: spec.target.kind: target seldon expects a SeldonDeployment, but "
                f"Deployment/serving/demo-v1 ({MANIFEST_FILE}) is a Deployment "
                "(fix: use kind: deployment, or check that the policy names the right model)",
            ],
        ),
        id="manifest-kind-does-not-match-target",
    ),
    pytest.param(
        Case(
            {POLICY_FILE: edit("kind: deployment", "kind: kserve-modelmesh")},
            [
                f"{P}:8: spec.target.kind: target kserve-modelmesh needs the annotation "
                "serving.kserve.io/deploymentMode: ModelMesh, which "
                f"InferenceService/serving/demo-0 ({ISVC_FILE}) lacks (fix: add the annotation "
                "to the InferenceService, or use kind: kserve if ModelMesh does not serve it)",
            ],
            manifests={ISVC_FILE: INFERENCE_SERVICE},
        ),
        id="modelmesh-target-without-annotation",
    ),
    pytest.param(
        Case(
            {POLICY_FILE: edit("kind: deployment", "kind: kserve")},
            [
                f"{P}:8: spec.target.kind: InferenceService/serving/demo-0 ({ISVC_FILE}) is "
                "served by ModelMesh (serving.kserve.io/deploymentMode: ModelMesh), which target "
                "kserve does not route (fix: use kind: kserve-modelmesh)",
            ],
            manifests={ISVC_FILE: MODELMESH_SERVICE},
        ),
        id="kserve-target-on-modelmesh",
    ),
    pytest.param(
        Case(
            {POLICY_FILE: POLICY},
            [
                f"{P}:15: spec.clusters[0].name: no Service routes to Deployment/serving/demo-v1 "
                f"({MANIFEST_FILE}): none is named demo-v1 or selects app.kubernetes.io/version: "
                "v1 (fix: add a Service named demo-v1 that selects the Deployment's pods)",
            ],
            manifests={MANIFEST_FILE: MANIFESTS[MANIFEST_FILE].split("---")[0]},
        ),
        id="deployment-without-service",
    ),
    pytest.param(
        Case(
            {POLICY_FILE: POLICY, "clusters/prod/serving/demo/broken.yaml": "kind: [Service\n"},
            [
                "clusters/prod/serving/demo/broken.yaml:1: invalid YAML: a [ list is never "
                "closed (fix: close it with ']', and separate its items with ',')",
            ],
            loaded=("demo",),
        ),
        id="manifest-does-not-parse",
    ),
    pytest.param(
        Case(
            {
                POLICY_FILE: POLICY,
                # Deep enough to overflow libyaml's C stack, which would kill the process.
                "clusters/prod/serving/demo/deep.yaml": "x: " + "[" * 50_000 + "]" * 50_000,
            },
            [
                "clusters/prod/serving/demo/deep.yaml:1: values nest more than 100 levels deep "
                "(fix: flatten the document; policies and manifests need a few levels)",
            ],
            loaded=("demo",),
        ),
        id="manifest-nested-too-deep",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_invalid_input_is_reported_exactly(case: Case, tmp_path: Path) -> None:
    view = load_repo(tmp_path, {**case.manifests, **case.files})

    assert [str(p) for p in view.problems] == case.expected
    assert tuple(sorted(p.policy.name for p in view.policies.policies)) == case.loaded


def test_the_table_covers_enough_cases() -> None:
    # The issue asks for at least 45 distinct bad inputs; ids must stay unique to be readable.
    ids = [param.id for param in CASES]
    assert len(ids) >= 45
    assert len(set(ids)) == len(ids)


# ---- The valid base really is valid (otherwise every case above would test nothing) ---------


def test_base_repository_has_no_problems(tmp_path: Path) -> None:
    view = load_repo(tmp_path, {**MANIFESTS, POLICY_FILE: POLICY})

    assert view.problems == []
    assert [p.policy.name for p in view.policies.policies] == ["demo"]


# ---- A broken manifest stalls nothing outside it ------------------------------------------


@pytest.mark.parametrize(
    "broken_file",
    [
        pytest.param("clusters/staging/serving/demo/demo-v1.yaml", id="other-cluster"),
        pytest.param("clusters/prod/batch/jobs.yaml", id="other-namespace"),
    ],
)
def test_rollout_elsewhere_still_reconciles_past_a_broken_manifest(
    tmp_path: Path, broken_file: str
) -> None:
    view = load_repo(
        tmp_path,
        {**MANIFESTS, POLICY_FILE: POLICY, broken_file: "metadata:\n  name: x: y\n"},
    )

    cluster = broken_file.split("/")[1]
    expected = (
        f"{broken_file}:2: invalid YAML: unexpected ':' (a `key: value` cannot start here) "
        "(fix: check this line's indentation, or quote a value that contains ': ')"
    )
    assert [str(p) for p in view.problems] == [expected]
    assert [str(p) for p in view.broken[cluster]] == [expected]
    assert [p.policy.name for p in view.policies.policies] == ["demo"]
    assert view.held == []


# ---- Inventory snapshots (--inventory FILE) -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            b'{"kind": "List", "items": [\n  {"kind": "Deployment",}\n]}\n',
            "snap.json:2: invalid JSON at column 25: expecting property name enclosed in double "
            "quotes (fix: fix the JSON at that line, or export it again with "
            "kubectl get isvc,sdep,deploy -A -o json)",
            id="json-trailing-comma",
        ),
        pytest.param(
            b'{"kind": "List", "items": [\n',
            "snap.json:2: invalid JSON at column 1: expecting value (fix: fix the JSON at that "
            "line, or export it again with kubectl get isvc,sdep,deploy -A -o json)",
            id="json-truncated",
        ),
        pytest.param(
            b"kind: List\nitems:\n- kind: Deployment\n  metadata: {name: demo-v1\n",
            "snap.json:4: invalid YAML: a { mapping is never closed "
            "(fix: close it with '}', and separate its entries with ',')",
            id="yaml-unclosed-mapping",
        ),
        pytest.param(
            b"kind: List\nitems:\n\t- kind: Deployment\n",
            "snap.json:3: invalid YAML: tab character in the indentation "
            "(fix: indent with spaces; YAML does not allow tabs)",
            id="yaml-tab",
        ),
        pytest.param(
            b"No resources found\n",
            "snap.json:1: expected Kubernetes objects or a List, got str 'No resources found' "
            "(fix: export the inventory with kubectl get isvc,sdep,deploy -A -o yaml)",
            id="not-objects",
        ),
    ],
)
def test_invalid_snapshot_is_reported_exactly(text: bytes, expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_snapshot(text, file="snap.json")

    assert [str(p) for p in caught.value.problems] == [expected]
    assert caught.value.exit_code == 1


def test_snapshot_file_problems_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "prod.yaml"
    good.write_text("kind: List\nitems: []\n")
    bad = tmp_path / "staging.yaml"
    bad.write_text("kind: List\nitems: [\n")

    with pytest.raises(ManifestError) as caught:
        load_snapshots([f"prod={good}", f"staging={bad}"])

    assert [str(p) for p in caught.value.problems] == [
        f"{bad}:2: invalid YAML: the file ends before the last value is complete "
        "(fix: close every [ and { that is opened, and finish the last value)",
    ]


def test_service_fixture_is_the_one_the_table_removes() -> None:
    # deployment-without-service drops everything after the first document separator.
    assert MANIFESTS[MANIFEST_FILE].split("---")[1].lstrip("\n") == SERVICE


# ---- Whatever is written, the answer is a located message with a fix, never a crash ----------

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: object, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, (*path, index))
    return out


BASE_DOCUMENT = yaml.safe_load(POLICY)
BASE_PATHS = _paths(BASE_DOCUMENT)[1:]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(BASE_PATHS), _VALUES, st.booleans())
def test_any_value_anywhere_gives_located_problems_with_fixes(
    path: tuple[str | int, ...], value: object, as_new_key: bool
) -> None:
    document = copy.deepcopy(BASE_DOCUMENT)
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    if as_new_key and isinstance(parent, dict):
        parent[f"{path[-1]}x"] = value
    else:
        parent[path[-1]] = value

    loaded, problems = load_policy_text(yaml.safe_dump(document), file=POLICY_FILE)

    assert bool(loaded) != bool(problems)
    for problem in problems:
        assert problem.line is not None and problem.fix, str(problem)
        assert "Input should" not in problem.reason and "Value error" not in problem.reason


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["list", "map"]), min_size=MAX_DEPTH - 3, max_size=MAX_DEPTH + 3),
    st.sampled_from([True, False, None]),
)
def test_nesting_limit_is_exact_in_every_yaml_style(shape: list[str], flow: bool | None) -> None:
    # The depth guard skips its exact measure when a cheap bound says the text cannot be deep;
    # whatever the style (compact `- - -`, indentation, flow brackets), that bound must hold.
    value: object = "leaf"
    for kind in reversed(shape):
        value = [value] if kind == "list" else {"k": value}
    text = yaml.safe_dump(value, default_flow_style=flow, width=10**6)

    if len(shape) > MAX_DEPTH:
        with pytest.raises(YamlProblem, match="values nest more than 100 levels deep"):
            load_documents(text, file="deep.yaml")
        with pytest.raises(YamlProblem):
            load_fast(text)
    else:
        assert [d.value for d in load_documents(text, file="deep.yaml")] == [value]
        assert load_fast(text) == [value]
