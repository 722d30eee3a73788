"""Value types of the inventory stage: which versions of a model exist, where, and are they Ready.

Adapters (Git manifests, kubectl snapshots, live clusters) produce these; every later stage
reads them and never sees a raw Kubernetes dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

WATCH_LABEL = "gitops-rollout.dev/watch"
ROLE_LABEL = "gitops-rollout.dev/role"
ITER8_WATCH_LABEL = "iter8.tools/watch"
NAME_LABEL = "app.kubernetes.io/name"
VERSION_LABEL = "app.kubernetes.io/version"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "gitops-rollout"
MODELMESH_ANNOTATION = "serving.kserve.io/deploymentMode"


class Kind(StrEnum):
    """Kubernetes kinds the inventory understands."""

    INFERENCE_SERVICE = "InferenceService"
    SELDON_DEPLOYMENT = "SeldonDeployment"
    DEPLOYMENT = "Deployment"
    SERVICE = "Service"


class Role(StrEnum):
    PRIMARY = "primary"
    CANDIDATE = "candidate"
    UNKNOWN = "unknown"


class Readiness(StrEnum):
    READY = "Ready"
    NOT_READY = "NotReady"
    UNKNOWN = "Unknown"
    """No snapshot or live data covers the object; treated as not Ready (no traffic)."""


@dataclass(frozen=True, order=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Status:
    """Readiness of one object as a cluster reports it."""

    readiness: Readiness
    reason: str = ""
    """Why it is not Ready, in the cluster's words (condition message, Seldon state)."""
    version: str | None = None
    """The version label the live object carries (differs from Git until synced)."""


UNKNOWN_STATUS = Status(Readiness.UNKNOWN, "no inventory data for this object")


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int


@dataclass(frozen=True)
class ModelVersion:
    """One version of a model: an object (or a predictor of one) in one cluster."""

    ref: ObjectRef
    model: str
    version: str
    """The version label; what response headers and PR titles name."""
    role: Role
    file: str
    """Repository path of the human-owned manifest that defines it."""
    doc_index: int
    """Index of the document in `file` (multi-document YAML)."""
    status: Status = UNKNOWN_STATUS
    spec_digest: str = ""
    """Digest of the object's spec: a changed spec is a new candidate."""
    predictor: str | None = None
    """Seldon native mode: the predictor this version is; None otherwise."""
    iter8_index: int | None = None
    """For Iter8-style names ``<model>-<n>``: n (0 is the primary)."""
    services: tuple[ServicePort, ...] = ()
    """Deployment target: the Service(s) selecting this version's pods, with ports."""
    service_name: str | None = None
    modelmesh: bool = False
    traffic: int | None = None
    """Native modes: the traffic field the manifest carries now (percent)."""

    @property
    def ready(self) -> bool:
        return self.status.readiness is Readiness.READY

    @property
    def key(self) -> str:
        """A stable id of this version within its rollout (``namespace/name[/predictor]``)."""
        base = f"{self.ref.namespace}/{self.ref.name}"
        return f"{base}/{self.predictor}" if self.predictor else base


@dataclass
class ClusterModels:
    """Every watched version in one cluster, grouped by model name."""

    cluster: str
    models: dict[str, list[ModelVersion]] = field(default_factory=dict)

    def versions(self, model: str) -> list[ModelVersion]:
        return self.models.get(model, [])


@dataclass
class Inventory:
    """Versions by cluster, plus which clusters exist in the repository."""

    clusters: dict[str, ClusterModels] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    """Clusters whose live state could not be read, with the reason: their rollouts hold."""

    def versions(self, cluster: str, model: str) -> list[ModelVersion]:
        found = self.clusters.get(cluster)
        return found.versions(model) if found else []
