"""RolloutPolicy: the declarative, human-owned description of how one model rolls out.

One YAML file per model under ``policies/`` (apiVersion ``gitops-rollout.dev/v1alpha1``). This
module holds the pydantic models (unknown fields are errors), the defaults each target implies,
and `load_policies`, which turns every problem into ``file:line: field.path: reason (fix: ...)``
and keeps going so that one bad policy never stops the others. It knows nothing about clusters,
manifests or Git; `validate` and `reconcile` combine it with those.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from gitops_rollout.errors import Problem
from gitops_rollout.yamlsource import Document, YamlProblem, format_path, load_documents

API_VERSION = "gitops-rollout.dev/v1alpha1"
KIND = "RolloutPolicy"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""RFC 1123 label: Kubernetes names of namespaces, Services and the paths we build from them."""

HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"


class TargetKind(StrEnum):
    """The serving platform a model runs on; selects the adapter in `targets`."""

    KSERVE_MODELMESH = "kserve-modelmesh"
    KSERVE = "kserve"
    SELDON = "seldon"
    DEPLOYMENT = "deployment"


class TargetMode(StrEnum):
    """How versions are laid out for targets that offer two ways (ROUTING.md)."""

    SEPARATE = "separate"
    """One object per version; we write the routing (VirtualService or HTTPRoute)."""
    NATIVE = "native"
    """One object holds every version; we write its traffic fields and it routes itself."""


class StrategyKind(StrEnum):
    CANARY = "canary"
    PROGRESSIVE = "progressive"
    MIRROR = "mirror"
    BLUE_GREEN = "blue-green"
    AB = "ab"


class PromotionMode(StrEnum):
    REPLACE_PRIMARY = "replace-primary"
    """The primary's manifest takes the candidate's spec; the candidate's manifest is removed."""
    ROUTE_ONLY = "route-only"
    """The winner keeps all traffic and becomes the primary; the loser's manifests are removed."""


class TransitionKind(StrEnum):
    """What a pull request does; the gitops section says which kinds the bot may merge."""

    ADOPT = "adopt"
    STEP = "step"
    PROMOTE = "promote"
    FINALIZE = "finalize"
    CLEANUP = "cleanup"
    ROLLBACK = "rollback"
    PAUSE = "pause"
    RESUME = "resume"


class RoutingApi(StrEnum):
    ISTIO = "istio"
    GATEWAY_API = "gateway-api"


class ClusterOrder(StrEnum):
    SEQUENTIAL = "sequential"
    PARALLEL = "parallel"


class NoDataAction(StrEnum):
    HOLD = "hold"
    ROLLBACK = "rollback"


class InconclusiveAction(StrEnum):
    ROLLBACK = "rollback"
    HOLD = "hold"
    PROMOTE = "promote"


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: object) -> timedelta:
    """Parse ``1h30m``, ``5m``, ``90s`` or a number of seconds into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match and any(match.groups()):
            hours, minutes, seconds = (int(g or 0) for g in match.groups())
            return timedelta(hours=hours, minutes=minutes, seconds=seconds)
    raise ValueError(f"{value!r} is not a duration; write it as 30s, 5m, 1h or 1h30m")


def format_duration(value: timedelta) -> str:
    """The inverse of `parse_duration`, shortest form (``1h30m``, ``45s``, ``0s``)."""
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    out += f"{seconds}s" if seconds or not out else ""
    return out


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(\d+h)?(\d+m)?(\d+s)?$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "a duration: 30s, 5m, 1h30m, or seconds",
        }
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        use_enum_values=False,
    )


# ---------------------------------------------------------------------------------------------
# Request matching (canary by match, override headers)


class StringMatch(_Model):
    """One of exact, prefix or regex, as Istio's StringMatch."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one(self) -> StringMatch:
        given = [v for v in (self.exact, self.prefix, self.regex) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of exact, prefix or regex")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as err:
                raise ValueError(f"regex {self.regex!r} does not compile: {err}") from err
        return self


class MatchClause(_Model):
    """Requests the candidate receives: every field given must match (AND)."""

    headers: dict[str, StringMatch] = Field(default_factory=dict)
    uri: StringMatch | None = None
    method: StringMatch | None = None
    query_params: dict[str, StringMatch] = Field(default_factory=dict)
    source_labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, StringMatch]) -> dict[str, StringMatch]:
        for name in value:
            if not re.match(HEADER_NAME, name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> MatchClause:
        if not (self.headers or self.uri or self.method or self.query_params or self.source_labels):
            raise ValueError(
                "an empty match clause matches every request; give headers, uri, method, "
                "queryParams or sourceLabels"
            )
        return self


DEFAULT_MATCH = (MatchClause(headers={"traffic": StringMatch(exact="test")}),)


# ---------------------------------------------------------------------------------------------
# Strategies


class Step(_Model):
    """One weighted step: the candidate's share, how long it must last, and who must approve."""

    weight: int = Field(ge=0, le=100, description="candidate's share of requests, percent")
    min_duration: Duration = Field(
        default=timedelta(0), description="least time at this step after its change took effect"
    )
    min_requests: int = Field(
        default=0, ge=0, description="least candidate requests at this step before advancing"
    )
    approval: bool = Field(
        default=False, description="the PR that starts this step needs a human to merge it"
    )


class Stage(Step):
    """A named blue-green stage (Blue_0, Blue_50, ...); approval is required by default."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    approval: bool = True


class CanaryStrategy(_Model):
    """Requests that match go to the candidate; all others to the primary."""

    type: Literal[StrategyKind.CANARY]
    match: tuple[MatchClause, ...] = Field(default=DEFAULT_MATCH, min_length=1)
    min_duration: Duration = timedelta(0)
    min_requests: int = Field(default=0, ge=0)


class ProgressiveStrategy(_Model):
    """The candidate's weight rises step by step (one PR per step)."""

    type: Literal[StrategyKind.PROGRESSIVE]
    steps: tuple[Step, ...] = Field(min_length=1, max_length=100)

    @field_validator("steps")
    @classmethod
    def _rising(cls, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        for i in range(1, len(steps)):
            if steps[i].weight < steps[i - 1].weight:
                raise ValueError(
                    f"step {i} weight {steps[i].weight} is below step {i - 1} weight "
                    f"{steps[i - 1].weight}; weights must not decrease"
                )
        return steps


class MirrorStrategy(_Model):
    """The primary serves every request; a copy of `mirrorPercent` of them goes to the candidate."""

    type: Literal[StrategyKind.MIRROR]
    mirror_percent: float = Field(default=100.0, ge=0, le=100)
    min_duration: Duration = timedelta(0)
    min_requests: int = Field(default=0, ge=0)


DEFAULT_STAGES = (
    Stage(name="Blue_0", weight=0),
    Stage(name="Blue_50", weight=50),
    Stage(name="Blue_100", weight=100),
)


class BlueGreenStrategy(_Model):
    """Named stages (the Azure pipeline); promotion then rewrites green with blue's spec."""

    type: Literal[StrategyKind.BLUE_GREEN]
    stages: tuple[Stage, ...] = Field(default=DEFAULT_STAGES, min_length=1, max_length=20)
    promote_stage: str = Field(default="Blue_Green", description="name of the promotion stage")
    finalize_stage: str = Field(
        default="Green_100", description="name of the stage routing back to the rewritten primary"
    )

    @field_validator("stages")
    @classmethod
    def _unique(cls, stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
        names = [s.name for s in stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; {', '.join(dupes)} repeats")
        return stages


class ABStrategy(_Model):
    """A/B/n: traffic moves toward the better arm by reward; the winner is promoted."""

    type: Literal[StrategyKind.AB]
    iterations: int = Field(default=10, ge=1, le=1000)
    initial_candidate_weight: int | None = Field(
        default=None, ge=0, le=100, description="candidates' total share at start; default equal"
    )
    exploration_floor: float = Field(
        default=0.10, ge=0, le=0.5, description="least share every surviving arm keeps"
    )
    min_duration: Duration = timedelta(0)


Strategy = Annotated[
    CanaryStrategy | ProgressiveStrategy | MirrorStrategy | BlueGreenStrategy | ABStrategy,
    Field(discriminator="type"),
]


# ---------------------------------------------------------------------------------------------
# Target, routing, promotion, clusters


class Target(_Model):
    """Which serving platform runs the model, and how versions are laid out on it."""

    kind: TargetKind
    mode: TargetMode = TargetMode.SEPARATE
    service_host: str | None = Field(
        default=None,
        description="kserve-modelmesh: the serving Service (default modelmesh-serving)",
    )
    service_port: int | None = Field(
        default=None, ge=1, le=65535, description="port of the versions' Services"
    )
    protocol: Literal["http", "grpc"] = "http"
    predictor: str = Field(
        default="default", pattern=DNS_LABEL, description="seldon: predictor name"
    )
    delete_candidate_on_rollback: bool = False

    @model_validator(mode="after")
    def _mode_allowed(self) -> Target:
        if self.mode is TargetMode.NATIVE and self.kind not in (
            TargetKind.KSERVE,
            TargetKind.SELDON,
        ):
            raise ValueError(
                f"mode native is only for kserve and seldon, not {self.kind.value}; "
                "remove mode or use mode: separate"
            )
        return self


class OverrideHeader(_Model):
    """A header that routes straight to the named version whatever the weights."""

    name: str = Field(pattern=HEADER_NAME)
    values: dict[str, str] = Field(
        default_factory=dict,
        description="header value -> version (object name or version label); default: each "
        "version's own label",
    )


class Routing(_Model):
    """Where the routing object lives and what it serves."""

    api: RoutingApi = RoutingApi.ISTIO
    name: str | None = Field(default=None, pattern=DNS_LABEL)
    namespace: str | None = Field(default=None, pattern=DNS_LABEL)
    hosts: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    include_mesh: bool = True
    version_header: str = Field(default="app-version", pattern=HEADER_NAME)
    override_header: OverrideHeader | None = None
    uri_prefix: str | None = Field(default=None, pattern=r"^/")


class Promotion(_Model):
    mode: PromotionMode | None = None


class ClusterRef(_Model):
    name: str = Field(pattern=DNS_LABEL)


# ---------------------------------------------------------------------------------------------
# Analysis (evaluated by the analysis stage; until then steps advance on time and approvals)


class MetricKind(StrEnum):
    COUNTER = "counter"
    """Per-version counter; the test compares rates of events per request."""
    RATIO = "ratio"
    """Two counters, bad events over all events."""
    MEAN = "mean"
    """A sum and a count, as Prometheus histograms and summaries export them."""


class CustomMetric(_Model):
    """A policy-defined metric; queries may use ``$version``, ``$namespace``, ``$model``."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    kind: MetricKind
    query: str = Field(min_length=1, description="PromQL for the counter, or the numerator")
    denominator: str | None = Field(default=None, description="PromQL for the denominator")
    version_label: str = Field(default="version", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class Objective(_Model):
    """A guardrail on one metric: absolute limits and/or a margin relative to the baseline."""

    metric: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    upper_limit: float | None = None
    lower_limit: float | None = None
    max_increase: float | None = Field(
        default=None,
        ge=0,
        le=10,
        description="relative margin against the baseline (0.05 = 5 %); default per metric",
    )

    @model_validator(mode="after")
    def _limits(self) -> Objective:
        if (
            self.upper_limit is not None
            and self.lower_limit is not None
            and self.lower_limit > self.upper_limit
        ):
            raise ValueError(
                f"lowerLimit {self.lower_limit} is above upperLimit {self.upper_limit}"
            )
        return self


class Reward(_Model):
    metric: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    prefer_higher: bool = True


class Analysis(_Model):
    interval: Duration = Field(default=timedelta(minutes=1), description="one look per interval")
    warmup: Duration = Field(default=timedelta(0), description="time excluded at each step start")
    warmup_requests: int = Field(default=0, ge=0)
    deadline: Duration | None = Field(
        default=None, description="longest a step may run without a verdict"
    )
    on_inconclusive: InconclusiveAction = InconclusiveAction.ROLLBACK
    no_data: NoDataAction = NoDataAction.HOLD
    no_data_timeout: Duration = timedelta(minutes=10)
    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    objectives: tuple[Objective, ...] = ()
    rewards: tuple[Reward, ...] = ()
    metrics: tuple[CustomMetric, ...] = ()

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=5):
            raise ValueError("interval must be at least 5s (Prometheus scrapes every 15-30s)")
        return value


class GitOps(_Model):
    auto_merge: tuple[TransitionKind, ...] = (
        TransitionKind.ADOPT,
        TransitionKind.STEP,
        TransitionKind.FINALIZE,
        TransitionKind.CLEANUP,
        TransitionKind.ROLLBACK,
    )
    reviewers: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# The policy


class Metadata(_Model):
    name: str = Field(pattern=DNS_LABEL, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PolicySpec(_Model):
    model: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="app.kubernetes.io/name of the versions; default metadata.name",
    )
    namespace: str = Field(pattern=DNS_LABEL, max_length=63)
    target: Target
    strategy: Strategy
    routing: Routing = Routing()
    promotion: Promotion = Promotion()
    clusters: tuple[ClusterRef, ...] = Field(min_length=1)
    cluster_order: ClusterOrder = ClusterOrder.SEQUENTIAL
    analysis: Analysis | None = None
    gitops: GitOps = GitOps()

    @field_validator("clusters")
    @classmethod
    def _unique_clusters(cls, value: tuple[ClusterRef, ...]) -> tuple[ClusterRef, ...]:
        names = [c.name for c in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cluster {', '.join(dupes)} is listed twice")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> PolicySpec:
        kind, mode, strategy = self.target.kind, self.target.mode, self.strategy.type
        if (
            kind is TargetKind.KSERVE
            and mode is TargetMode.NATIVE
            and strategy
            in (
                StrategyKind.MIRROR,
                StrategyKind.CANARY,
                StrategyKind.AB,
            )
        ):
            raise ValueError(
                f"kserve native mode supports progressive and blue-green, not {strategy.value}; "
                "use mode: separate (two InferenceServices) for that strategy"
            )
        if (
            kind is TargetKind.SELDON
            and mode is TargetMode.NATIVE
            and strategy in (StrategyKind.CANARY,)
        ):
            raise ValueError(
                "seldon native mode (one SeldonDeployment) cannot route by header; "
                "use mode: separate or strategy progressive"
            )
        if self.routing.api is RoutingApi.GATEWAY_API and strategy is StrategyKind.MIRROR:
            raise ValueError("routing api gateway-api has no weighted mirror; use api: istio")
        if mode is TargetMode.NATIVE and self.routing.override_header is not None:
            raise ValueError("overrideHeader needs a routing object we write; native mode has none")
        if self.strategy.type is StrategyKind.AB and not (self.analysis and self.analysis.rewards):
            raise ValueError("strategy ab needs at least one reward in analysis.rewards")
        return self


class RolloutPolicy(_Model):
    """A rollout policy; ``gitops-rollout schema`` prints its JSON Schema."""

    api_version: Literal["gitops-rollout.dev/v1alpha1"]
    kind: Literal["RolloutPolicy"]
    metadata: Metadata
    spec: PolicySpec

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def model(self) -> str:
        return self.spec.model or self.metadata.name

    @property
    def routing_namespace(self) -> str:
        return self.spec.routing.namespace or self.spec.namespace

    @property
    def routing_name(self) -> str:
        return self.spec.routing.name or self.model

    @property
    def promotion_mode(self) -> PromotionMode:
        if self.spec.promotion.mode is not None:
            return self.spec.promotion.mode
        if self.spec.target.kind is TargetKind.SELDON or self.spec.strategy.type is StrategyKind.AB:
            return PromotionMode.ROUTE_ONLY
        return PromotionMode.REPLACE_PRIMARY

    def auto_merges(self, kind: TransitionKind) -> bool:
        return kind in self.spec.gitops.auto_merge


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class LoadedPolicy:
    """A valid policy and where it came from."""

    policy: RolloutPolicy
    file: str
    line: int
    lines: Mapping[tuple[str | int, ...], int] = field(default_factory=dict, compare=False)
    """Line of each field path in the file, for errors found after loading."""

    def problem(self, path: tuple[str | int, ...], reason: str, fix: str = "") -> Problem:
        """A located problem about one field of this policy."""
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        return Problem(self.file, self.lines.get(probe, self.line), format_path(path), reason, fix)


@dataclass
class PolicySet:
    """Every policy of a repository, and the problems of the files that did not load."""

    policies: list[LoadedPolicy]
    problems: list[Problem]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a RolloutPolicy document, for editors and CI."""
    schema = RolloutPolicy.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://gitops-rollout.dev/schemas/v1alpha1/rolloutpolicy.json"
    schema["title"] = "RolloutPolicy"
    return schema


_FIXES = {
    "extra_forbidden": "remove it, or check its spelling against `gitops-rollout schema`",
    "missing": "add it",
    "literal_error": "use one of the values listed",
    "enum": "use one of the values listed",
    "union_tag_invalid": "use one of the values listed",
    "union_tag_not_found": "add `type:` with one of canary, progressive, mirror, blue-green, ab",
    "string_pattern_mismatch": "use lower-case letters, digits and '-', starting and ending "
    "with a letter or digit",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "int_from_float": "write a whole number",
    "float_parsing": "write a number",
    "float_type": "write a number",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "greater_than_equal": "raise it",
    "greater_than": "raise it",
    "less_than_equal": "lower it",
    "less_than": "lower it",
    "too_short": "add an entry",
    "too_long": "remove entries",
    "dict_type": "write a mapping (key: value lines)",
    "list_type": "write a list (- item lines)",
    "tuple_type": "write a list (- item lines)",
    "model_type": "write a mapping (key: value lines)",
    "model_attributes_type": "write a mapping (key: value lines)",
    "string_type": "write a string (quote it if it looks like a number or boolean)",
    "value_error": "",
}


def _problem_from_error(doc: Document, error: Mapping[str, Any]) -> Problem:
    loc: tuple[str | int, ...] = tuple(
        part for part in error["loc"] if not _is_union_tag(part, error)
    )
    kind = error["type"]
    fix = _FIXES.get(kind, "")
    if kind == "extra_forbidden":
        reason = "unknown field"
    elif kind == "missing":
        reason = "required field is missing"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, "type")
        tags = ", ".join(s.value for s in StrategyKind)
        got = error.get("ctx", {}).get("tag")
        reason = f"unknown strategy {got!r}" if got else "strategy type is missing"
        fix = f"use one of {tags}"
    else:
        reason = str(error["msg"])
        if reason.startswith("Value error, "):
            reason = reason[len("Value error, ") :]
        if "input" in error and kind not in ("model_type", "dict_type", "model_attributes_type"):
            shown = repr(error["input"])
            if len(shown) <= 60 and shown not in reason:
                reason = f"{reason} (got {shown})"
    line = doc.line_of(loc)
    return Problem(doc.file, line, format_path(loc), reason, fix)


def _is_union_tag(part: str | int, error: Mapping[str, Any]) -> bool:
    # pydantic inserts the discriminator value ("canary") into the location of errors inside a
    # tagged union member; users never wrote that key, so it is dropped from the path.
    return isinstance(part, str) and part in {s.value for s in StrategyKind}


def _relevant(errors: list[Any]) -> list[Any]:
    # A list whose items failed is also reported as too short; the item errors say it all.
    locs = [tuple(e["loc"]) for e in errors]
    return [
        e
        for e in errors
        if not (
            e["type"] == "too_short"
            and any(
                len(other) > len(e["loc"]) and other[: len(e["loc"])] == tuple(e["loc"])
                for other in locs
            )
        )
    ]


def parse_policy(doc: Document) -> tuple[RolloutPolicy | None, list[Problem]]:
    """Validate one YAML document as a RolloutPolicy."""
    value = doc.value
    if not isinstance(value, dict):
        return None, [
            Problem(
                doc.file,
                doc.start_line,
                "",
                f"expected a RolloutPolicy mapping, got {type(value).__name__}",
                f"start the document with apiVersion: {API_VERSION} and kind: {KIND}",
            )
        ]
    if value.get("apiVersion") != API_VERSION or value.get("kind") != KIND:
        got = f"{value.get('apiVersion')}/{value.get('kind')}"
        return None, [
            Problem(
                doc.file,
                doc.line_of(("kind",)),
                "kind",
                f"not a RolloutPolicy (got {got})",
                f"use apiVersion: {API_VERSION} and kind: {KIND}, or move the file out of "
                "policies/",
            )
        ]
    try:
        return RolloutPolicy.model_validate(value), []
    except ValidationError as err:
        seen: set[str] = set()
        problems = []
        for error in _relevant(err.errors(include_url=False)):
            problem = _problem_from_error(doc, error)
            if str(problem) not in seen:
                seen.add(str(problem))
                problems.append(problem)
        problems.sort(key=lambda p: (p.line or 0, p.path))
        return None, problems


def load_policy_text(text: str | bytes, *, file: str) -> tuple[list[LoadedPolicy], list[Problem]]:
    """Parse one policy file (one or more documents)."""
    try:
        docs = load_documents(text, file=file)
    except YamlProblem as err:
        return [], [err.problem]
    if not docs:
        return [], [Problem(file, 1, "", "file is empty", "add a RolloutPolicy or delete the file")]
    loaded: list[LoadedPolicy] = []
    problems: list[Problem] = []
    for doc in docs:
        policy, found = parse_policy(doc)
        problems.extend(found)
        if policy is not None:
            loaded.append(LoadedPolicy(policy, file, doc.start_line, doc.lines))
    return loaded, problems


def check_unique(policies: Iterable[LoadedPolicy]) -> PolicySet:
    """Drop policies that clash (two for one model, or two with one name) and say why."""
    kept: list[LoadedPolicy] = []
    problems: list[Problem] = []
    by_name: dict[str, LoadedPolicy] = {}
    by_model: dict[tuple[str, str], LoadedPolicy] = {}
    for loaded in sorted(policies, key=lambda p: (p.file, p.line)):
        pol = loaded.policy
        first = by_name.get(pol.name)
        if first is not None:
            problems.append(
                Problem(
                    loaded.file,
                    loaded.line,
                    "metadata.name",
                    f"policy {pol.name!r} is already defined in {first.file}:{first.line}",
                    "rename one of them or delete the duplicate",
                )
            )
            continue
        clash = [
            by_model[(c.name, pol.model)]
            for c in pol.spec.clusters
            if (c.name, pol.model) in by_model
        ]
        if clash:
            other = clash[0]
            problems.append(
                Problem(
                    loaded.file,
                    loaded.line,
                    "spec.model",
                    f"model {pol.model!r} already has a policy ({other.policy.name} in "
                    f"{other.file}:{other.line}); one model, one policy per cluster",
                    "merge the two policies or remove the cluster from one of them",
                )
            )
            continue
        by_name[pol.name] = loaded
        for c in pol.spec.clusters:
            by_model[(c.name, pol.model)] = loaded
        kept.append(loaded)
    return PolicySet(kept, problems)


def load_policies(root: Path, *, subdir: str = "policies") -> PolicySet:
    """Load every ``*.yaml``/``*.yml`` below ``root/policies``; bad files become problems."""
    base = root / subdir
    loaded: list[LoadedPolicy] = []
    problems: list[Problem] = []
    if not base.is_dir():
        return PolicySet([], [])
    for path in sorted([*base.rglob("*.yaml"), *base.rglob("*.yml")]):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            problems.append(
                Problem(rel, None, "", "policy files may not be symbolic links", "copy the file")
            )
            continue
        found, errs = load_policy_text(path.read_bytes(), file=rel)
        loaded.extend(found)
        problems.extend(errs)
    result = check_unique(loaded)
    result.problems[:0] = problems
    return result
