"""Serving platforms: per target, the routing objects we render for a rollout.

`ADAPTERS` is the explicit registry (target kind -> adapter); `adapter_for` rejects a kind it
does not know instead of falling back to some default. Each adapter lives in its own module and
implements `TargetAdapter` (base.py). Serialising the objects, the rollout state annotations
and the human-owned manifest edits are `render`'s and `manifest_edits`' business.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gitops_rollout.errors import RolloutError
from gitops_rollout.policy import TargetKind
from gitops_rollout.targets.base import Manifest, TargetAdapter, TargetError
from gitops_rollout.targets.deployment import DeploymentTarget
from gitops_rollout.targets.kserve import KServe
from gitops_rollout.targets.kserve_modelmesh import KServeModelMesh
from gitops_rollout.targets.seldon import Seldon

ADAPTERS: Mapping[TargetKind, TargetAdapter] = MappingProxyType(
    {
        TargetKind.KSERVE_MODELMESH: KServeModelMesh(),
        TargetKind.KSERVE: KServe(),
        TargetKind.SELDON: Seldon(),
        TargetKind.DEPLOYMENT: DeploymentTarget(),
    }
)


class UnknownTargetError(RolloutError):
    """A target kind with no adapter: a programming error, never silently defaulted."""


def adapter_for(kind: TargetKind | str) -> TargetAdapter:
    """The adapter of `kind`; raises `UnknownTargetError` naming the known kinds."""
    known = ", ".join(k.value for k in ADAPTERS)
    try:
        return ADAPTERS[TargetKind(kind)]
    except (ValueError, KeyError):
        raise UnknownTargetError(
            f"no target adapter for kind {str(kind)!r}; known kinds: {known}"
        ) from None


__all__ = [
    "ADAPTERS",
    "Manifest",
    "TargetAdapter",
    "TargetError",
    "UnknownTargetError",
    "adapter_for",
]
