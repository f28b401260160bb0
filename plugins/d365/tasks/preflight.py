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
    the attribute), every application user the load writes through (the connection's and its pool's: token,
    WhoAmI, the user exists, is enabled, holds a security role; a failure names the connection and client id), the
    contact owner and every owner-rule owner (exists, enabled, a person), then the DreamApply connection. Dynamics
    problems stop the run before DreamApply is asked anything. The pool preflight checked is recorded in the target,
    so the load writes through exactly these users."""
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
    app_users, user_errors = _check_application_users(dyn, who)
    errors += user_errors

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

    try:  # the bulk messages the org offers for the table (sdkmessagefilters), where the settings allow them
        bulk = dyn.bulk_messages(meta.logical_name) if s.dynamics.bulk_messages else frozenset()
    except ApiError as exc:
        raise _preflight_api_failure("reading which bulk messages Dynamics 365 supports", exc) from exc
    # every later Dynamics call uses it; the load writes through its connection and pool
    target = LeadTarget.from_metadata(
        s.dynamics.connection_id, meta, pool=[u.connection_id for u in app_users[1:]], bulk_messages=bulk
    )
    doc = {
        "instance": instance,
        "target": target.to_json(),
        "application_users": [u.to_json() for u in app_users],
        "owner_id": owners.default,
        "owners": owners.to_json(),
        "caller_id": who.get("UserId"),
        "dop_hint": dyn.dop_hint,
        "throttle": dyn.throttle.snapshot(),  # the limits and the measured request time, for the dry run's estimate
        "alternate_key_status": key_status,
        "schema": schema_doc,
    }
    rc.folder.write_json(PREFLIGHT, doc)
    log.info(
        "preflight ok: instance %s, target %s on connection %s (%d application users), owner %s (%d owner rules), "
        "alternate key %s",
        instance,
        target.entity_set,
        target.connection_id,
        len(target.connections),
        owners.default,
        len(owners.rules),
        key_status,
    )
    return {"run_folder": rc.folder.url, "instance": instance, "target": target.to_json()}


def _check_application_users(dyn: Any, who: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """The connection's application user and every pool member's (``d365.hooks.dynamics_pool``): each must get a
    token, answer WhoAmI, exist, be enabled and hold a security role; a member must be of the same org and tenant.
    Returns the users that passed (the connection's first) and one error line per user that did not, naming its
    connection and client id. A service that cannot be reached raises (the task's retries apply)."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    from d365.hooks.dynamics import DynamicsHook
    from d365.hooks.dynamics_pool import ApplicationUserProblem, DynamicsPool, auth_reason, check_application_user
    from d365.hooks.errors import DynamicsAuthError

    try:
        pool = DynamicsPool([dyn, *(DynamicsHook(conn_id) for conn_id in dyn.settings.pool)])
    except ApiError as exc:  # the pool extra or a member's connection cannot share the load
        raise _preflight_api_failure("the Dynamics 365 credential pool", exc) from exc
    except AirflowNotFoundException as exc:  # the pool names a connection Airflow does not have
        raise PreflightError(f"preflight failed: the credential pool of {dyn.dynamics365_conn_id!r}: {exc}") from exc
    passed: list[Any] = []
    errors: list[str] = []
    try:
        for member in pool.members:
            hook = member.hook
            where = f"application user {hook.dynamics365_conn_id!r} (client {hook.settings.client_id})"
            try:
                passed.append(check_application_user(hook, who if hook is dyn else None))
            except DynamicsAuthError as exc:
                errors.append(f"{where}: {exc.code + ' ' if exc.code else ''}{auth_reason(exc)} ({exc.describe()})")
            except ApiError as exc:
                if exc.retryable:
                    raise _preflight_api_failure(where, exc) from exc
                errors.append(f"{where}: {exc.message if isinstance(exc, ApplicationUserProblem) else exc.describe()}")
    finally:
        for member in pool.members[1:]:
            member.hook.close()
    return passed, errors


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
