"""Readiness of a live object, by kind, as DESIGN.md defines it.

A version gets traffic only while it is Ready: InferenceService condition ``Ready=True``,
Deployment ``Available=True``, SeldonDeployment ``state: Available``; in every case the status
must describe the current generation and the object must not be deleting. Snapshots and live
clusters both call `status_of`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gitops_rollout.inventory.model import VERSION_LABEL, Kind, Readiness, Status


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for cond in status.get("conditions") or []:
        if isinstance(cond, Mapping) and isinstance(cond.get("type"), str):
            out[cond["type"]] = cond
    return out


def status_of(obj: Mapping[str, Any]) -> Status:
    """Readiness of a Kubernetes object dict (with ``status``), by its kind."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    version = labels.get(VERSION_LABEL) if isinstance(labels, Mapping) else None
    if meta.get("deletionTimestamp"):
        return Status(Readiness.NOT_READY, "being deleted", version)
    status = obj.get("status") or {}
    if not isinstance(status, Mapping) or not status:
        return Status(Readiness.NOT_READY, "no status reported yet", version)
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return Status(
            Readiness.NOT_READY,
            f"status describes generation {observed}, the object is at {generation}",
            version,
        )
    kind = obj.get("kind")
    if kind == Kind.SELDON_DEPLOYMENT:
        state = status.get("state")
        if state == "Available":
            return Status(Readiness.READY, "", version)
        return Status(
            Readiness.NOT_READY,
            f"state is {state or 'unset'}"
            + (f": {status['description']}" if status.get("description") else ""),
            version,
        )
    wanted = "Available" if kind == Kind.DEPLOYMENT else "Ready"
    cond = _conditions(status).get(wanted)
    if cond is None:
        return Status(Readiness.NOT_READY, f"no {wanted} condition yet", version)
    if cond.get("status") == "True":
        return Status(Readiness.READY, "", version)
    detail = cond.get("message") or cond.get("reason") or ""
    return Status(
        Readiness.NOT_READY,
        f"{wanted}={cond.get('status')}" + (f": {detail}" if detail else ""),
        version,
    )
