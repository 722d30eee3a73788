"""RolloutPolicy: the declarative, human-owned description of how one model rolls out.

One YAML file per model under ``policies/`` (apiVersion ``gitops-rollout.dev/v1alpha1``). This
module holds the pydantic models (unknown fields are errors), the defaults each target implies,
and `load_policies`, which turns every problem into ``file:line: field.path: reason (fix: ...)``
and keeps going so that one bad policy never stops the others. It knows nothing about clusters,
manifests or Git; `validate` and `reconcile` combine it with those.
"""

from __future__ import annotations

import difflib
import math
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

from gitops_rollout.errors import Problem
from gitops_rollout.yamlsource import Document, YamlProblem, format_path, load_documents

API_VERSION = "gitops-rollout.dev/v1alpha1"
KIND = "RolloutPolicy"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""RFC 1123 label: Kubernetes names of namespaces, Services and the paths we build from them."""

HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
"""An HTTP header name (RFC 9110 token)."""

STAGE_NAME = r"^[A-Za-z0-9_.-]{1,40}$"
METRIC_NAME = r"^[a-z][a-z0-9-]{0,62}$"
PROM_LABEL = r"^[a-zA-Z_][a-zA-Z0-9_]*$"


class _FieldError(ValueError):
    """A validation failure that knows which sub-field is wrong and how to fix it.

    Validators of a list or a whole model raise it so the message points at the entry to
    change (``steps[2].weight``), not at the list; `_problem_from_error` reads `at` and `fix`.
    """

    def __init__(self, reason: str, *, at: tuple[str | int, ...] = (), fix: str = "") -> None:
        super().__init__(reason)
        self.at = at
        self.fix = fix


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
_DURATION_FIX = "write it as 30s, 5m, 1h, 1h30m or a number of seconds"


def parse_duration(value: object) -> timedelta:
    """Parse ``1h30m``, ``5m``, ``90s`` or a number of seconds into a timedelta.

    Raises ValueError (with the fix attached) for anything else, including negative, infinite
    and absurdly large values.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _FieldError(f"expected a duration, got {_kind_of(value)}", fix=_DURATION_FIX)
    if isinstance(value, int | float):
        if value < 0:
            raise _FieldError(f"{_number(value)} is negative", fix="use a duration of 0s or more")
        if not math.isfinite(value):
            raise _FieldError(f"{_number(value)} is not a duration", fix=_DURATION_FIX)
        try:
            return timedelta(seconds=value)
        except OverflowError:
            raise _FieldError(f"{value} seconds is too long", fix=_DURATION_FIX) from None
    match = _DURATION.match(value.strip())
    if match and any(match.groups()):
        hours, minutes, seconds = (int(g or 0) for g in match.groups())
        try:
            return timedelta(hours=hours, minutes=minutes, seconds=seconds)
        except OverflowError:
            raise _FieldError(f"{value!r} is too long", fix=_DURATION_FIX) from None
    raise _FieldError(f"{value!r} is not a duration", fix=_DURATION_FIX)


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
                {"type": "string", "pattern": r"^(\d+h)?(\d+m)?(\d+s)?$", "minLength": 2},
                {"type": "number", "minimum": 0},
            ],
            "description": "a duration: 30s, 5m, 1h30m, or seconds",
        }
    ),
]


class _Model(BaseModel):
    # Validators are built on first use, not on import: a pass whose policies all come from
    # the parse log (`memo`) validates none, and building them costs 30-40 ms of its start-up.
    # The default instances below are made with `model_construct` for that reason;
    # tests/policy/test_policy.py checks that they equal validated ones.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        use_enum_values=False,
        defer_build=True,
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
        given = [k for k in ("exact", "prefix", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise _FieldError(
                f"gives {' and '.join(given)}" if given else "is empty",
                fix="give exactly one of exact, prefix or regex",
            )
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as err:
                raise _FieldError(
                    f"regex {self.regex!r} does not compile: {err}",
                    at=("regex",),
                    fix="correct the regular expression, or use exact or prefix",
                ) from err
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
                raise _FieldError(
                    f"{name!r} is not a valid HTTP header name",
                    at=(name,),
                    fix=_PATTERN_FIXES[HEADER_NAME][1],
                )
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> MatchClause:
        if not (self.headers or self.uri or self.method or self.query_params or self.source_labels):
            raise _FieldError(
                "an empty match clause matches every request",
                fix="give headers, uri, method, queryParams or sourceLabels, or remove the clause",
            )
        return self


DEFAULT_MATCH = (
    MatchClause.model_construct(headers={"traffic": StringMatch.model_construct(exact="test")}),
)


# ---------------------------------------------------------------------------------------------
# Strategies


class Step(_Model):
    """One weighted step: the candidate's share, how long it must last, and who must approve."""

    weight: StrictInt = Field(ge=0, le=100, description="candidate's share of requests, percent")
    min_duration: Duration = Field(
        default=timedelta(0), description="least time at this step after its change took effect"
    )
    min_requests: StrictInt = Field(
        default=0, ge=0, description="least candidate requests at this step before advancing"
    )
    approval: StrictBool = Field(
        default=False, description="the PR that starts this step needs a human to merge it"
    )


class Stage(Step):
    """A named blue-green stage (Blue_0, Blue_50, ...); approval is required by default."""

    name: str = Field(pattern=STAGE_NAME)
    approval: StrictBool = True


class CanaryStrategy(_Model):
    """Requests that match go to the candidate; all others to the primary."""

    type: Literal[StrategyKind.CANARY]
    match: tuple[MatchClause, ...] = Field(default=DEFAULT_MATCH, min_length=1)
    min_duration: Duration = timedelta(0)
    min_requests: StrictInt = Field(default=0, ge=0)


class ProgressiveStrategy(_Model):
    """The candidate's weight rises step by step (one PR per step)."""

    type: Literal[StrategyKind.PROGRESSIVE]
    steps: tuple[Step, ...] = Field(min_length=1, max_length=100)

    @field_validator("steps")
    @classmethod
    def _rising(cls, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        for i in range(1, len(steps)):
            if steps[i].weight < steps[i - 1].weight:
                raise _FieldError(
                    f"{steps[i].weight} is below the {steps[i - 1].weight} of steps[{i - 1}]; "
                    "weights must not decrease",
                    at=(i, "weight"),
                    fix="order the steps by rising weight",
                )
        return steps


class MirrorStrategy(_Model):
    """The primary serves every request; a copy of `mirrorPercent` of them goes to the candidate."""

    type: Literal[StrategyKind.MIRROR]
    mirror_percent: StrictFloat = Field(default=100.0, ge=0, le=100)
    min_duration: Duration = timedelta(0)
    min_requests: StrictInt = Field(default=0, ge=0)


DEFAULT_STAGES = (
    Stage.model_construct(name="Blue_0", weight=0),
    Stage.model_construct(name="Blue_50", weight=50),
    Stage.model_construct(name="Blue_100", weight=100),
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
        first: dict[str, int] = {}
        for i, stage in enumerate(stages):
            if stage.name in first:
                raise _FieldError(
                    f"stage name {stage.name!r} is already used by stages[{first[stage.name]}]",
                    at=(i, "name"),
                    fix="give every stage its own name",
                )
            first[stage.name] = i
        return stages


class ABStrategy(_Model):
    """A/B/n: traffic moves toward the better arm by reward; the winner is promoted."""

    type: Literal[StrategyKind.AB]
    iterations: StrictInt = Field(default=10, ge=1, le=1000)
    initial_candidate_weight: StrictInt | None = Field(
        default=None, ge=0, le=100, description="candidates' total share at start; default equal"
    )
    exploration_floor: StrictFloat = Field(
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

    kind: TargetKind = Field(description="the serving platform the model's versions run on")
    mode: TargetMode = TargetMode.SEPARATE
    service_host: str | None = Field(
        default=None,
        description="kserve-modelmesh: the serving Service (default modelmesh-serving)",
    )
    service_port: StrictInt | None = Field(
        default=None, ge=1, le=65535, description="port of the versions' Services"
    )
    protocol: Literal["http", "grpc"] = "http"
    predictor: str = Field(
        default="default", pattern=DNS_LABEL, description="seldon: predictor name"
    )
    delete_candidate_on_rollback: StrictBool = False

    @model_validator(mode="after")
    def _mode_allowed(self) -> Target:
        if self.mode is TargetMode.NATIVE and self.kind not in (
            TargetKind.KSERVE,
            TargetKind.SELDON,
        ):
            raise _FieldError(
                f"target {self.kind.value} has no native mode (only kserve and seldon do)",
                at=("mode",),
                fix="remove mode, or use mode: separate",
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
    include_mesh: StrictBool = True
    version_header: str = Field(default="app-version", pattern=HEADER_NAME)
    override_header: OverrideHeader | None = None
    uri_prefix: str | None = Field(default=None, pattern=r"^/")


class Promotion(_Model):
    mode: PromotionMode | None = None


class ClusterRef(_Model):
    name: str = Field(pattern=DNS_LABEL, description="a folder under clusters/")


# ---------------------------------------------------------------------------------------------
# Analysis (evaluated by the analysis stage; until then steps advance on time and approvals)


FEEDBACK_METRIC = "feedback"
"""The built-in objective and reward name of Seldon's feedback count (A/B rewards)."""


class MetricKind(StrEnum):
    COUNTER = "counter"
    """Per-version counter; the test compares rates of events per request."""
    RATIO = "ratio"
    """Two counters, bad events over all events."""
    MEAN = "mean"
    """A sum and a count, as Prometheus histograms and summaries export them."""


class CustomMetric(_Model):
    """A policy-defined metric; queries may use ``$version``, ``$namespace``, ``$model``."""

    name: str = Field(pattern=METRIC_NAME)
    kind: MetricKind
    query: str = Field(min_length=1, description="PromQL for the counter, or the numerator")
    denominator: str | None = Field(default=None, description="PromQL for the denominator")
    version_label: str = Field(default="version", pattern=PROM_LABEL)


class Objective(_Model):
    """A guardrail on one metric: absolute limits and/or a margin relative to the baseline."""

    metric: str = Field(pattern=METRIC_NAME)
    upper_limit: StrictFloat | None = None
    lower_limit: StrictFloat | None = None
    max_increase: StrictFloat | None = Field(
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
            raise _FieldError(
                f"lowerLimit {_number(self.lower_limit)} is above upperLimit "
                f"{_number(self.upper_limit)}",
                at=("lowerLimit",),
                fix="make lowerLimit at most upperLimit; did you swap them?",
            )
        return self


class Reward(_Model):
    metric: str = Field(pattern=METRIC_NAME)
    prefer_higher: StrictBool = True


class Analysis(_Model):
    interval: Duration = Field(default=timedelta(minutes=1), description="one look per interval")
    warmup: Duration = Field(default=timedelta(0), description="time excluded at each step start")
    warmup_requests: StrictInt = Field(default=0, ge=0)
    deadline: Duration | None = Field(
        default=None, description="longest a step may run without a verdict"
    )
    on_inconclusive: InconclusiveAction = InconclusiveAction.ROLLBACK
    no_data: NoDataAction = NoDataAction.HOLD
    no_data_timeout: Duration = timedelta(minutes=10)
    alpha: StrictFloat = Field(default=0.01, gt=0, lt=0.5)
    objectives: tuple[Objective, ...] = ()
    rewards: tuple[Reward, ...] = ()
    metrics: tuple[CustomMetric, ...] = ()

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=5):
            raise _FieldError(
                f"{format_duration(value)} is shorter than the 5s minimum",
                fix="use 5s or more; Prometheus scrapes every 15-30s, so 30s or 1m is typical",
            )
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
    name: str = Field(
        pattern=DNS_LABEL, max_length=63, description="the policy's name; unique in the repository"
    )
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PolicySpec(_Model):
    model: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="app.kubernetes.io/name of the versions; default metadata.name",
    )
    namespace: str = Field(
        pattern=DNS_LABEL,
        max_length=63,
        description="the namespace of the model's manifests: clusters/<cluster>/<namespace>/",
    )
    target: Target = Field(description="the serving platform, e.g. kind: deployment")
    strategy: Strategy = Field(description="how traffic moves to the candidate")
    routing: Routing = Routing.model_construct()
    promotion: Promotion = Promotion.model_construct()
    clusters: tuple[ClusterRef, ...] = Field(
        min_length=1, description="clusters to roll out to, in order, as - name: <cluster>"
    )
    cluster_order: ClusterOrder = ClusterOrder.SEQUENTIAL
    analysis: Analysis | None = None
    gitops: GitOps = GitOps.model_construct()

    @field_validator("clusters")
    @classmethod
    def _unique_clusters(cls, value: tuple[ClusterRef, ...]) -> tuple[ClusterRef, ...]:
        first: dict[str, int] = {}
        for i, cluster in enumerate(value):
            if cluster.name in first:
                raise _FieldError(
                    f"cluster {cluster.name!r} is already listed at "
                    f"clusters[{first[cluster.name]}]",
                    at=(i, "name"),
                    fix="remove one of the two entries",
                )
            first[cluster.name] = i
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
            raise _FieldError(
                f"kserve native mode supports progressive and blue-green, not {strategy.value}",
                at=("strategy", "type"),
                fix="use mode: separate (one InferenceService per version) for this strategy",
            )
        if (
            kind is TargetKind.SELDON
            and mode is TargetMode.NATIVE
            and strategy in (StrategyKind.CANARY,)
        ):
            raise _FieldError(
                "seldon native mode (one SeldonDeployment) cannot route by header",
                at=("strategy", "type"),
                fix="use mode: separate, or strategy progressive",
            )
        if self.routing.api is RoutingApi.GATEWAY_API and strategy is StrategyKind.MIRROR:
            raise _FieldError(
                "routing api gateway-api has no weighted mirror",
                at=("routing", "api"),
                fix="use api: istio",
            )
        if mode is TargetMode.NATIVE and self.routing.override_header is not None:
            raise _FieldError(
                "overrideHeader needs a routing object we write; native mode has none",
                at=("routing", "overrideHeader"),
                fix="remove overrideHeader, or use mode: separate",
            )
        if self.strategy.type is StrategyKind.AB and not (self.analysis and self.analysis.rewards):
            raise _FieldError(
                "strategy ab needs at least one reward to compare the versions by",
                at=("analysis", "rewards"),
                fix="add analysis.rewards, e.g. - metric: user-engagement",
            )
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
    "int_type": "write a whole number, without quotes",
    "int_parsing": "write a whole number, without quotes",
    "int_from_float": "write a whole number, without quotes",
    "float_type": "write a number, without quotes",
    "float_parsing": "write a number, without quotes",
    "bool_type": "write true or false, without quotes",
    "bool_parsing": "write true or false, without quotes",
    "string_type": "put the value in quotes; YAML reads unquoted yes, no, on, off, true, false "
    "and numbers as other types",
    "dict_type": "write `key: value` lines indented below it",
    "model_type": "write `key: value` lines indented below it",
    "model_attributes_type": "write `key: value` lines indented below it",
    "list_type": "write one `- item` line per entry, indented below it",
    "tuple_type": "write one `- item` line per entry, indented below it",
    "too_long": "remove entries",
    "string_too_short": "write a value",
}
"""The fix for each pydantic error type whose fix does not depend on the field."""

_SCALAR_TYPES = {"int_type", "float_type", "bool_type", "string_type"}

_PATTERN_FIXES = {
    DNS_LABEL: (
        "a valid name",
        "use lower-case letters, digits and '-', starting and ending with a letter or digit, "
        "e.g. my-model-2",
    ),
    HEADER_NAME: (
        "a valid HTTP header name",
        "use letters, digits and - (no spaces, ':' or '/'), e.g. x-user-group",
    ),
    STAGE_NAME: ("a valid stage name", "use 1 to 40 letters, digits, '_', '.' or '-'"),
    METRIC_NAME: (
        "a valid metric name",
        "start with a lower-case letter, then lower-case letters, digits and '-' (at most 63)",
    ),
    PROM_LABEL: (
        "a valid Prometheus label name",
        "use letters, digits and '_', not starting with a digit",
    ),
    "^/": ("a URI prefix", "start it with /"),
}
"""What a value of each pattern is, and how to write one."""

_PERCENT_FIELDS = {"weight", "mirrorPercent", "initialCandidateWeight"}


def _kind_of(value: object) -> str:
    """How a YAML value reads to its author: ``the number 120``, ``a list``, ``null``."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {_number(value)}"
    if isinstance(value, str):
        return f"the text {value!r}" if len(value) <= 60 else f"a text of {len(value)} characters"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _number(value: object) -> str:
    # repr keeps every digit the user wrote (1e-05, 12345678.0, 50.0 for a whole-number field).
    return repr(value) if isinstance(value, float) else str(value)


def _bound(value: object) -> str:
    """A limit from our own models: 100, not the 100.0 pydantic makes of it for float fields."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _number(value)


@dataclass(frozen=True)
class _Site:
    """Where a pydantic error is, in the user's terms and in our models."""

    path: tuple[str | int, ...]
    """The field path as written in the YAML (discriminator tags removed)."""
    owner: type[BaseModel] | None
    """The model whose field the last part of `path` names (or would name)."""
    info: FieldInfo | None
    """That field, when it exists."""


def _site(loc: tuple[str | int, ...]) -> _Site:
    # Walk RolloutPolicy's fields along the error location. pydantic inserts the discriminator
    # value ("canary") into locations inside a tagged union; users never wrote that key.
    current: Any = RolloutPolicy
    path: list[str | int] = []
    owner: type[BaseModel] | None = None
    info: FieldInfo | None = None
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            owner, info = current, _field(current, part)
            current = info.annotation if info is not None else None
        elif _is_union(current) and (member := _tagged(current, part)) is not None:
            current = member
            continue
        elif get_origin(current) is dict:
            current, info = get_args(current)[1], None
        elif get_origin(current) in (tuple, list):
            current, info = get_args(current)[0], None
        else:
            current, info = None, None
        path.append(part)
    return _Site(tuple(path), owner, info)


def _unwrap(tp: Any) -> Any:
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif _is_union(tp) and type(None) in get_args(tp):
            rest = [a for a in get_args(tp) if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
        else:
            return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _field(model: type[BaseModel], part: str | int) -> FieldInfo | None:
    for name, info in model.model_fields.items():
        if part in (name, info.alias):
            return info
    return None


def _tagged(union: Any, part: str | int) -> type[BaseModel] | None:
    for member in get_args(union):
        if isinstance(member, type) and issubclass(member, BaseModel):
            tag = member.model_fields.get("type")
            if tag is not None and part in [str(v) for v in get_args(tag.annotation)]:
                return member
    return None


def _aliases(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _bounds(info: FieldInfo | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in info.metadata if info is not None else []:
        for key in ("ge", "gt", "le", "lt"):
            if getattr(item, key, None) is not None:
                out[key] = getattr(item, key)
    return out


def _range_fix(site: _Site) -> str:
    """``use a percentage from 0 to 100``, from the limits declared on the field."""
    bounds = {k: _bound(v) for k, v in _bounds(site.info).items()}
    name = site.path[-1] if site.path else ""
    noun = "a percentage" if name in _PERCENT_FIELDS else "a value"
    if "ge" in bounds and "le" in bounds:
        return f"use {noun} from {bounds['ge']} to {bounds['le']}"
    low = {"ge": f"of at least {bounds.get('ge')}", "gt": f"above {bounds.get('gt')}"}
    high = {"le": f"of at most {bounds.get('le')}", "lt": f"below {bounds.get('lt')}"}
    said = [low[k] for k in low if k in bounds] + [high[k] for k in high if k in bounds]
    return f"use {noun} {' and '.join(said)}" if said else "use a value in the allowed range"


def _choices(expected: str) -> str:
    return ", ".join(re.findall(r"'([^']*)'", expected)) or expected


def _explain(kind: str, error: Mapping[str, Any], site: _Site) -> tuple[str, str]:
    """Reason and fix of one pydantic error, in the policy author's terms."""
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    name = next((p for p in reversed(site.path) if isinstance(p, str)), "")
    fix = _FIXES.get(kind, "")
    if value is None and kind in _SCALAR_TYPES:
        fix = "write a value after the colon"
    match kind:
        case "extra_forbidden":
            known = _aliases(site.owner) if site.owner is not None else []
            close = difflib.get_close_matches(str(name), known, n=1)
            if close:
                return "unknown field", f"did you mean `{close[0]}`? Otherwise remove it"
            return "unknown field", "remove it; `gitops-rollout schema` lists every field"
        case "missing":
            parent = format_path(site.path[:-1])
            where = f"under {parent}" if parent else "at the top level"
            described = site.info.description if site.info is not None else None
            return "required field is missing", f"add `{name}:` {where}" + (
                f" ({described})" if described else ""
            )
        case "int_type" | "int_parsing" | "int_from_float":
            return f"expected a whole number, got {_kind_of(value)}", fix
        case "float_type" | "float_parsing":
            return f"expected a number, got {_kind_of(value)}", fix
        case "bool_type" | "bool_parsing":
            return f"expected true or false, got {_kind_of(value)}", fix
        case "string_type":
            if isinstance(value, list | dict):
                fix = "write a single value, not a list or mapping"
            return f"expected a string, got {_kind_of(value)}", fix
        case "dict_type" | "model_type" | "model_attributes_type":
            return f"expected a mapping, got {_kind_of(value)}", fix
        case "list_type" | "tuple_type":
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                fix = f"write it as a list: [{value}]"
            return f"expected a list, got {_kind_of(value)}", fix
        case "enum" | "literal_error":
            choices = _choices(str(ctx.get("expected", "")))
            return f"unknown value {value!r}", f"use one of: {choices}"
        case "greater_than_equal":
            return f"{_number(value)} is below {_bound(ctx['ge'])}", _range_fix(site)
        case "greater_than":
            return f"{_number(value)} is not above {_bound(ctx['gt'])}", _range_fix(site)
        case "less_than_equal":
            return f"{_number(value)} is above {_bound(ctx['le'])}", _range_fix(site)
        case "less_than":
            return f"{_number(value)} is not below {_bound(ctx['lt'])}", _range_fix(site)
        case "string_pattern_mismatch":
            what, how = _PATTERN_FIXES.get(
                str(ctx.get("pattern")), (f"matching {ctx.get('pattern')}", "")
            )
            return f"{value!r} is not {what}", how
        case "string_too_long":
            limit = ctx.get("max_length")
            return (
                f"{len(str(value))} characters long; at most {limit} are allowed",
                f"shorten it to {limit} characters or fewer",
            )
        case "string_too_short":
            return "must not be empty", fix
        case "too_short":
            described = site.info.description if site.info is not None else None
            need = ctx.get("min_length", 1)
            entries = "entry" if need == 1 else "entries"
            return (
                f"needs at least {need} {entries}, got {ctx.get('actual_length', 0)}",
                ("add an entry" if need == 1 else f"add {entries}")
                + (f" ({described})" if described else ""),
            )
        case "too_long":
            return (
                f"has {ctx.get('actual_length')} entries, more than the "
                f"{ctx.get('max_length')} allowed",
                fix,
            )
        case "value_error" | "assertion_error":
            cause = ctx.get("error")
            if isinstance(cause, _FieldError):
                return str(cause), cause.fix
            return str(cause if cause is not None else error["msg"]), ""
        case "union_tag_invalid":
            tags = ", ".join(s.value for s in StrategyKind)
            return f"unknown strategy type {ctx.get('tag')!r}", f"use one of: {tags}"
        case "union_tag_not_found":
            tags = ", ".join(s.value for s in StrategyKind)
            return "strategy type is missing", f"add `type:` with one of: {tags}"
    return str(error["msg"]), fix


def _problem_from_error(doc: Document, error: Mapping[str, Any]) -> Problem:
    site = _site(tuple(error["loc"]))
    kind = error["type"]
    path = site.path
    if kind == "union_tag_not_found" or kind == "union_tag_invalid":
        path = (*path, "type")
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _FieldError):
        path = (*path, *cause.at)
    reason, fix = _explain(kind, error, site)
    return Problem(doc.file, doc.line_of(path), format_path(path), reason, fix)


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
                f"expected a RolloutPolicy mapping, got {_kind_of(value)}",
                f"start the document with apiVersion: {API_VERSION} and kind: {KIND}",
            )
        ]
    if value.get("kind") != KIND:
        return None, [
            Problem(
                doc.file,
                doc.line_of(("kind",)),
                "kind",
                f"expected kind {KIND}, got {_kind_of(value['kind'])}"
                if "kind" in value
                else "required field is missing",
                f"use kind: {KIND} with apiVersion: {API_VERSION}; other kinds do not belong "
                "in policies/",
            )
        ]
    api_version = value.get("apiVersion")
    if api_version != API_VERSION:
        if "apiVersion" not in value:
            reason = "required field is missing"
        elif isinstance(api_version, str):
            reason = f"unsupported apiVersion {api_version!r}"
        else:
            reason = f"expected apiVersion {API_VERSION}, got {_kind_of(api_version)}"
        return None, [
            Problem(
                doc.file,
                doc.line_of(("apiVersion",)),
                "apiVersion",
                reason,
                f"use apiVersion: {API_VERSION}",
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
                loaded.problem(
                    ("metadata", "name"),
                    f"policy {pol.name!r} is already defined in {_where(first)}",
                    "rename one of them, or delete the duplicate",
                )
            )
            continue
        clash = [
            (c.name, by_model[(c.name, pol.model)])
            for c in pol.spec.clusters
            if (c.name, pol.model) in by_model
        ]
        if clash:
            cluster, other = clash[0]
            problems.append(
                loaded.problem(
                    ("spec", "model") if pol.spec.model else ("metadata", "name"),
                    f"model {pol.model!r} in cluster {cluster!r} is already rolled out by policy "
                    f"{other.policy.name!r} ({_where(other)}); a model has one policy per cluster",
                    "merge the two policies, or remove the cluster from one of them",
                )
            )
            continue
        by_name[pol.name] = loaded
        for c in pol.spec.clusters:
            by_model[(c.name, pol.model)] = loaded
        kept.append(loaded)
    return PolicySet(kept, problems)


def _where(loaded: LoadedPolicy) -> str:
    return f"{loaded.file}:{loaded.lines.get(('metadata', 'name'), loaded.line)}"


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
