"""RolloutPolicy: the example policies, defaults, durations, the JSON Schema, and isolation.

The bad-input table lives in test_invalid_inputs.py; this file covers what valid policies mean
and the promises around loading many of them at once.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from gitops_rollout import cli, policy, repository
from gitops_rollout.policy import (
    PromotionMode,
    RolloutPolicy,
    StrategyKind,
    TargetMode,
    TransitionKind,
    format_duration,
    load_policy_text,
    parse_duration,
)
from gitops_rollout.tree import DirTree

from .repos import DEPLOYMENT, MANIFESTS, POLICY, POLICY_FILE, SERVICE, edit, load_repo, write_repo

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "policies").glob("*.yaml"))
SCHEMA_FILE = ROOT / "schema" / "rolloutpolicy.json"
REGENERATE = ".venv/bin/gitops-rollout schema > schema/rolloutpolicy.json"


def load_one(text: str) -> RolloutPolicy:
    """The single policy in `text`; fails the test with the messages if it does not load."""
    loaded, problems = load_policy_text(text, file=POLICY_FILE)
    assert [str(p) for p in problems] == []
    [only] = loaded
    return only.policy


# ---- The example repository ------------------------------------------------------------------


def test_example_repository_loads_without_problems() -> None:
    view = repository.load(DirTree(ROOT))

    assert [str(p) for p in view.problems] == []
    assert sorted(p.policy.name for p in view.policies.policies) == [
        "fashionmnist",
        "iris",
        "scoring",
        "wisdom",
    ]
    assert view.held == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_policy_loads_on_its_own(path: Path) -> None:
    loaded, problems = load_policy_text(path.read_bytes(), file=f"policies/{path.name}")

    assert problems == []
    assert [lp.policy.name for lp in loaded] == [path.stem]


def test_examples_say_what_their_scenarios_need() -> None:
    by_name = {p.stem: load_one(p.read_text()) for p in EXAMPLES}

    wisdom = by_name["wisdom"]
    assert wisdom.spec.strategy.type is StrategyKind.CANARY
    assert [c.name for c in wisdom.spec.clusters] == ["staging", "prod-east"]
    assert wisdom.spec.strategy.min_duration == timedelta(minutes=10)

    fashionmnist = by_name["fashionmnist"]
    assert fashionmnist.spec.strategy.type is StrategyKind.PROGRESSIVE
    assert [s.weight for s in fashionmnist.spec.strategy.steps] == [5, 10, 20, 30, 40, 60, 80, 100]
    assert fashionmnist.spec.analysis is not None
    assert fashionmnist.spec.analysis.objectives[0].upper_limit == 250

    iris = by_name["iris"]
    assert iris.routing_name == "routing-rule"
    assert iris.spec.analysis is not None
    assert iris.spec.analysis.interval == timedelta(seconds=10)

    scoring = by_name["scoring"]
    assert scoring.spec.strategy.type is StrategyKind.BLUE_GREEN
    assert [s.name for s in scoring.spec.strategy.stages] == ["Blue_0", "Blue_50", "Blue_100"]
    assert all(s.approval for s in scoring.spec.strategy.stages)


# ---- Defaults ---------------------------------------------------------------------------------

AB = "    type: ab\n"
REWARDS = "  analysis:\n    rewards:\n      - metric: clicks\n"
PROGRESSIVE = "    type: progressive\n    steps:\n      - weight: 50\n      - weight: 100\n"


@pytest.mark.parametrize(
    ("kind", "strategy", "extra", "expected"),
    [
        pytest.param("deployment", PROGRESSIVE, "", PromotionMode.REPLACE_PRIMARY, id="deployment"),
        pytest.param("kserve", PROGRESSIVE, "", PromotionMode.REPLACE_PRIMARY, id="kserve"),
        pytest.param(
            "kserve-modelmesh", PROGRESSIVE, "", PromotionMode.REPLACE_PRIMARY, id="modelmesh"
        ),
        pytest.param("seldon", PROGRESSIVE, "", PromotionMode.ROUTE_ONLY, id="seldon"),
        pytest.param("deployment", AB, REWARDS, PromotionMode.ROUTE_ONLY, id="ab-strategy"),
        pytest.param(
            "deployment",
            PROGRESSIVE,
            "  promotion:\n    mode: route-only\n",
            PromotionMode.ROUTE_ONLY,
            id="explicit-route-only",
        ),
        pytest.param(
            "seldon",
            PROGRESSIVE,
            "  promotion:\n    mode: replace-primary\n",
            PromotionMode.REPLACE_PRIMARY,
            id="explicit-replace-primary-on-seldon",
        ),
    ],
)
def test_promotion_mode_follows_the_target_unless_set(
    kind: str, strategy: str, extra: str, expected: PromotionMode
) -> None:
    text = edit(PROGRESSIVE, strategy, edit("kind: deployment", f"kind: {kind}")) + extra

    assert load_one(text).promotion_mode is expected


def test_auto_merge_defaults_let_a_human_review_promotions() -> None:
    pol = load_one(POLICY)

    merged = {kind for kind in TransitionKind if pol.auto_merges(kind)}
    assert merged == {
        TransitionKind.ADOPT,
        TransitionKind.STEP,
        TransitionKind.FINALIZE,
        TransitionKind.CLEANUP,
        TransitionKind.ROLLBACK,
    }


def test_auto_merge_list_replaces_the_defaults() -> None:
    pol = load_one(POLICY + "  gitops:\n    autoMerge: [rollback, promote]\n")

    assert {kind for kind in TransitionKind if pol.auto_merges(kind)} == {
        TransitionKind.ROLLBACK,
        TransitionKind.PROMOTE,
    }


def test_names_default_to_the_policy_name_and_namespace() -> None:
    pol = load_one(POLICY)

    assert (pol.model, pol.routing_name, pol.routing_namespace) == ("demo", "demo", "serving")
    assert pol.spec.target.mode is TargetMode.SEPARATE
    assert pol.spec.target.protocol == "http"


def test_model_and_routing_names_can_be_set() -> None:
    text = edit("  namespace: serving\n", "  model: fraud\n  namespace: serving\n") + (
        "  routing:\n    name: fraud-routes\n    namespace: gateways\n"
    )
    pol = load_one(text)

    assert (pol.model, pol.routing_name, pol.routing_namespace) == (
        "fraud",
        "fraud-routes",
        "gateways",
    )


def test_canary_defaults_to_the_traffic_test_header() -> None:
    pol = load_one(edit(PROGRESSIVE, "    type: canary\n"))

    assert pol.spec.strategy.type is StrategyKind.CANARY
    [clause] = pol.spec.strategy.match
    assert clause.headers["traffic"].exact == "test"


def test_blue_green_defaults_to_three_stages_that_need_approval() -> None:
    pol = load_one(edit(PROGRESSIVE, "    type: blue-green\n"))

    assert pol.spec.strategy.type is StrategyKind.BLUE_GREEN
    stages = pol.spec.strategy.stages
    assert [(s.name, s.weight, s.approval) for s in stages] == [
        ("Blue_0", 0, True),
        ("Blue_50", 50, True),
        ("Blue_100", 100, True),
    ]


@pytest.mark.parametrize(
    "default",
    [
        *policy.DEFAULT_MATCH,
        *policy.DEFAULT_STAGES,
        policy.PolicySpec.model_fields["routing"].default,
        policy.PolicySpec.model_fields["promotion"].default,
        policy.PolicySpec.model_fields["gitops"].default,
    ],
    ids=repr,
)
def test_unvalidated_defaults_equal_validated_ones(default: BaseModel) -> None:
    """The module's default instances skip validation (so importing it builds no validator):
    each must be what validating its own fields gives."""
    fields = default.model_dump(exclude_unset=True)

    assert type(default).model_validate(fields) == default
    assert default.model_fields_set == set(fields)


def test_analysis_defaults() -> None:
    pol = load_one(POLICY + "  analysis: {}\n")

    analysis = pol.spec.analysis
    assert analysis is not None
    assert analysis.interval == timedelta(minutes=1)
    assert analysis.no_data_timeout == timedelta(minutes=10)
    assert analysis.alpha == 0.01


def test_integers_are_accepted_where_numbers_are_expected() -> None:
    # Strict numbers refuse booleans and quoted text, but `upperLimit: 250` is a float field.
    pol = load_one(
        POLICY + "  analysis:\n    objectives:\n      - metric: latency\n        upperLimit: 250\n"
    )

    assert pol.spec.analysis is not None
    assert pol.spec.analysis.objectives[0].upper_limit == 250.0


# ---- Durations --------------------------------------------------------------------------------


def _duration_pattern() -> str:
    # What the JSON Schema promises editors must be what `format_duration` writes.
    step = policy.json_schema()["$defs"]["Step"]["properties"]["minDuration"]
    [string] = [s for s in step["anyOf"] if s.get("type") == "string"]
    return str(string["pattern"])


DURATION_PATTERN = _duration_pattern()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("90s", 90),
        ("2h0m5s", 7205),
        (" 10m ", 600),
        (45, 45),
        (0, 0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45, "45s"), (90, "1m30s"), (3600, "1h"), (5400, "1h30m"), (86400, "24h")],
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text


@pytest.mark.parametrize(
    "text", ["", "5", "1d", "m5", "5 m", "-5s", "1.5h", "5s5m", True, None, [5]]
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**8))
def test_duration_round_trip_from_seconds(seconds: int) -> None:
    value = timedelta(seconds=seconds)

    assert parse_duration(format_duration(value)) == value


@given(st.integers(0, 500), st.integers(0, 500), st.integers(0, 500))
def test_duration_round_trip_from_text(hours: int, minutes: int, seconds: int) -> None:
    text = f"{hours}h{minutes}m{seconds}s"
    value = parse_duration(text)

    assert value == timedelta(hours=hours, minutes=minutes, seconds=seconds)
    canonical = format_duration(value)
    assert parse_duration(canonical) == value
    assert format_duration(parse_duration(canonical)) == canonical
    assert re.fullmatch(DURATION_PATTERN, canonical)


# ---- JSON Schema ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = policy.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_schema_accepts_every_example(path: Path, validator: Any) -> None:
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]

    assert errors == []


def _schema_errors(validator: Any, document: object) -> list[tuple[tuple[object, ...], str]]:
    """Every (field path, message) the schema reports, including inside oneOf branches."""
    out: list[tuple[tuple[object, ...], str]] = []
    pending = list(validator.iter_errors(document))
    while pending:
        error = pending.pop()
        out.append((tuple(error.absolute_path), error.message))
        pending.extend(error.context or [])
    return out


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        pytest.param(
            POLICY.replace("  target:\n", "  replicas: 2\n  target:\n"),
            ("spec",),
            "Additional properties are not allowed ('replicas' was unexpected)",
            id="unknown-field",
        ),
        pytest.param(
            POLICY.replace("weight: 100", "weight: 120"),
            ("spec", "strategy", "steps", 1, "weight"),
            "120 is greater than the maximum of 100",
            id="weight-above-100",
        ),
        pytest.param(
            POLICY.replace("namespace: serving", "namespace: ../etc"),
            ("spec", "namespace"),
            "'../etc' does not match",
            id="namespace-path-traversal",
        ),
        pytest.param(
            POLICY.replace("      - weight: 50\n", "      - weight: 50\n        minDuration: 1d\n"),
            ("spec", "strategy", "steps", 0, "minDuration"),
            "'1d' is not valid under any of the given schemas",
            id="duration-in-days",
        ),
    ],
)
def test_schema_rejects_what_the_loader_rejects(
    text: str, path: tuple[object, ...], message: str, validator: Any
) -> None:
    _, problems = load_policy_text(text, file=POLICY_FILE)
    errors = _schema_errors(validator, yaml.safe_load(text))

    assert len(problems) == 1, "the loader must reject it too"
    assert any(at == path and message in said for at, said in errors), errors


def test_schema_file_is_up_to_date() -> None:
    assert SCHEMA_FILE.is_file(), f"{SCHEMA_FILE} is missing; create it with: {REGENERATE}"
    on_disk = json.loads(SCHEMA_FILE.read_text())

    assert on_disk == policy.json_schema(), f"schema/rolloutpolicy.json is stale: {REGENERATE}"


def test_schema_command_writes_the_schema_file_exactly() -> None:
    # The regeneration command named above must reproduce the committed file byte for byte.
    result = CliRunner().invoke(cli.main, ["schema"])

    assert result.exit_code == 0
    assert result.output == SCHEMA_FILE.read_text(), f"stale; run: {REGENERATE}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_point_editors_at_the_schema_file(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)

    assert match, f"{path.name} must start with the yaml-language-server schema comment"
    assert (path.parent / match.group(1)).resolve() == SCHEMA_FILE


# ---- One bad policy never stops the others ------------------------------------------------


def _model(name: str) -> dict[str, str]:
    """Manifests and a valid policy for a model called `name` in cluster prod."""
    return {
        f"clusters/prod/serving/{name}/{name}-v1.yaml": (DEPLOYMENT + "---\n" + SERVICE).replace(
            "demo", name
        ),
        f"policies/{name}.yaml": POLICY.replace("demo", name),
    }


def test_bad_policies_do_not_stop_the_good_ones(tmp_path: Path) -> None:
    files = {
        **_model("alpha"),
        **_model("bravo"),
        **_model("charlie"),
        "policies/broken.yaml": "apiVersion: [\n",
        "policies/wrong.yaml": POLICY.replace("demo", "wrong").replace(
            "weight: 100", "weight: 120"
        ),
    }

    view = load_repo(tmp_path, files)

    assert sorted(p.policy.name for p in view.policies.policies) == ["alpha", "bravo", "charlie"]
    assert [str(p) for p in view.problems] == [
        "policies/broken.yaml:1: invalid YAML: the file ends before the last value is complete "
        "(fix: close every [ and { that is opened, and finish the last value)",
        "policies/wrong.yaml:13: spec.strategy.steps[1].weight: 120 is above 100 "
        "(fix: use a percentage from 0 to 100)",
    ]
    assert view.policy_paths == {
        "policies/alpha.yaml",
        "policies/bravo.yaml",
        "policies/charlie.yaml",
        "policies/broken.yaml",
        "policies/wrong.yaml",
    }


def test_a_bad_document_does_not_stop_the_next_one_in_the_same_file(tmp_path: Path) -> None:
    alpha = _model("alpha")
    bad = POLICY.replace("demo", "bravo").replace("namespace: serving", "namespace: Serving")
    files = {**alpha, "policies/alpha.yaml": bad + "---\n" + alpha["policies/alpha.yaml"]}

    view = load_repo(tmp_path, files)

    assert [p.policy.name for p in view.policies.policies] == ["alpha"]
    assert [str(p) for p in view.problems] == [
        "policies/alpha.yaml:6: spec.namespace: 'Serving' is not a valid name (fix: use "
        "lower-case letters, digits and '-', starting and ending with a letter or digit, "
        "e.g. my-model-2)",
    ]


def test_validate_exits_1_and_prints_each_problem(tmp_path: Path) -> None:
    write_repo(tmp_path, {**MANIFESTS, POLICY_FILE: POLICY.replace("weight: 50", "weight: -1")})

    result = CliRunner().invoke(cli.main, ["validate", "--repo", str(tmp_path)])

    assert result.exit_code == 1
    assert (
        "policies/demo.yaml:12: spec.strategy.steps[0].weight: -1 is below 0 "
        "(fix: use a percentage from 0 to 100)"
    ) in result.output.splitlines()


def test_validate_exits_0_on_a_valid_repository(tmp_path: Path) -> None:
    write_repo(tmp_path, {**MANIFESTS, POLICY_FILE: POLICY})

    result = CliRunner().invoke(cli.main, ["validate", "--repo", str(tmp_path)])

    assert result.exit_code == 0, result.output
