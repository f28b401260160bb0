"""The preflight task: Dynamics 365 and DreamApply checked before any extract (pause guard included)."""

from __future__ import annotations

import logging
from typing import Any

from d365.errors import PreflightError, PreflightUnavailable
from d365.hooks.errors import ApiError
from d365.pipeline.runfiles import (
    PREFLIGHT,
)
from d365.pipeline.target import LeadTarget
from d365.tasks.context import RunContext, dreamapply_instance

log = logging.getLogger(__name__)


def _preflight_api_failure(what: str, exc: ApiError) -> Exception:
    cls = PreflightUnavailable if exc.retryable else PreflightError
    return cls(f"preflight failed: {what}: {exc}")


def preflight(rc: RunContext) -> dict[str, Any]:
    """Refuses to run while the integration is paused; an irrecoverable failure counts towards the automatic
    pause (``d365.pause``). Then ``_preflight``."""
    from d365.pause import preflight_guard

    with preflight_guard(rc.settings, rc.ledger_url, rc.run_id):
        return _preflight(rc)


def _preflight(rc: RunContext) -> dict[str, Any]:
    """Before any extract: token and WhoAmI, the mapping against the live lead metadata (schema drift names
    the attribute), the contact owner and every owner-rule owner (exists, enabled, a person), then the
    DreamApply connection. Dynamics problems stop the run before DreamApply is asked anything."""
    from d365.hooks.dreamapply import DreamApplyHook
    from d365.hooks.dynamics import DynamicsHook
    from d365.pipeline.fit import LeadSchema, check_mapping
    from d365.pipeline.owners import resolve_owners

    s = rc.settings
    errors: list[str] = []
    dyn = DynamicsHook(s.dynamics.connection_id)
    try:
        who = dyn.whoami()
        meta = dyn.get_entity_metadata(s.dynamics.entity)
        keys = dyn.alternate_keys(s.dynamics.entity)
    except ApiError as exc:
        what = f"Dynamics 365 connection {s.dynamics.connection_id!r} (token, WhoAmI, metadata)"
        raise _preflight_api_failure(what, exc) from exc
    schema_doc = {
        "entity": {"LogicalName": meta.logical_name, "EntitySetName": meta.entity_set_name},
        "attributes": [_attribute_doc(a) for a in meta.attributes.values()],
        "alternate_keys": [{"KeyAttributes": list(k.key_attributes), "Status": k.status} for k in keys],
    }
    schema = LeadSchema.from_metadata_json(schema_doc)
    errors += check_mapping(s, schema)

    key_status = None
    if s.dynamics.alternate_key:
        matching = [k for k in keys if list(k.key_attributes) == [s.dynamics.alternate_key]]
        key_status = matching[0].status if matching else "missing"
        if key_status != "Active":
            log.warning(
                "alternate key on %s is %s: leads are addressed by their deterministic id, lookups by the "
                "column still work",
                s.dynamics.alternate_key,
                key_status,
            )

    try:
        owners, owner_errors = resolve_owners(s, dyn.find_systemuser, caller_id=who.get("UserId"))
    except ApiError as exc:
        raise _preflight_api_failure("looking up the lead owners in Dynamics 365", exc) from exc
    errors += owner_errors
    if errors:
        raise PreflightError("preflight failed:\n- " + "\n- ".join(errors))

    da = DreamApplyHook(s.dreamapply.connection_id)
    try:
        instance = dreamapply_instance(da)
        da.get_json("/ping")
    except ApiError as exc:
        raise _preflight_api_failure(f"DreamApply connection {s.dreamapply.connection_id!r}", exc) from exc

    target = LeadTarget.from_metadata(s.dynamics.connection_id, meta)  # every later Dynamics call uses it
    doc = {
        "instance": instance,
        "target": target.to_json(),
        "owner_id": owners.default,
        "owners": owners.to_json(),
        "caller_id": who.get("UserId"),
        "dop_hint": dyn.dop_hint,
        "alternate_key_status": key_status,
        "schema": schema_doc,
    }
    rc.folder.write_json(PREFLIGHT, doc)
    log.info(
        "preflight ok: instance %s, target %s on connection %s, owner %s (%d owner rules), alternate key %s",
        instance,
        target.entity_set,
        target.connection_id,
        owners.default,
        len(owners.rules),
        key_status,
    )
    return {"run_folder": rc.folder.url, "instance": instance, "target": target.to_json()}


def _attribute_doc(a: Any) -> dict[str, Any]:
    return {
        "LogicalName": a.logical_name,
        "Type": a.type,
        "MaxLength": a.max_length,
        "IsValidForCreate": a.valid_for_create,
        "IsValidForUpdate": a.valid_for_update,
        "RequiredLevel": a.required_level,
        "Format": a.format,
        "DateTimeBehavior": a.date_behavior,
        "Options": [{"Value": v, "Label": label} for v, label in (a.options or {}).items()] if a.options else None,
    }
