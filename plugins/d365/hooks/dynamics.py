"""Airflow hook for the Dynamics 365 (Dataverse) Web API v9.2: the public ``DynamicsHook``.

Connection (type ``dynamics365``): host = Organization URL (with or without scheme), login = application
(client) id, password = client secret, extras ``tenant_id`` (else discovered from the org's 401 challenge),
``authority_host`` (national clouds, or a local token service) and ``ca_bundle`` (PEM to verify TLS against).

The hook is assembled from one module per concern (see the Dataverse reference, §1, §2, §5-§7):

* ``d365.hooks.dynamics_settings``: the connection read into settings, with its transport policy;
* ``d365.hooks.dynamics_connection``: the pooled session (no cookies), the shared throttle, one attempt;
* ``d365.hooks.dynamics_core``: MSAL auth, retries (a non-idempotent POST is never resent after it may have run),
  the check of every answer, typed errors without tokens, secrets, bodies or query strings;
* ``d365.hooks.dynamics_metadata``: table metadata, option sets, alternate keys;
* ``d365.hooks.dynamics_query``: paged queries, lookups by a column's values (``query_in``), users;
* ``d365.hooks.odata``: literals, key segments, query strings, ``In()`` filters;
* ``d365.hooks.dynamics_batch``: the ``$batch`` wire format;
* ``d365.hooks.dynamics_bulk``: ``write_operations``, planned upserts as UpsertMultiple where the org has it
  (``bulk_messages``, in ``dynamics_metadata``), ``$batch`` for the rest and as the fallback of a failed group;
* this module: identity (WhoAmI), the single upsert and ``$batch`` execution (the sync sends every write,
  deletes included, as ``$batch`` operations).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import requests

from d365.hooks.answers import odata_entity
from d365.hooks.dynamics_batch import (
    MAX_BATCH_OPERATIONS,
    BatchOperation,
    BatchRequest,
    BatchResult,
    build_batch,
    map_batch_results,
    parse_batch_response,
)
from d365.hooks.dynamics_bulk import DEFAULT_GROUP_SIZE, BulkResult, write_operations
from d365.hooks.dynamics_connection import DEFAULT_CONN_ID
from d365.hooks.dynamics_metadata import (
    BULK_MESSAGES,
    AlternateKey,
    AttributeInfo,
    DynamicsMetadataReads,
    EntityMetadata,
)
from d365.hooks.dynamics_query import DynamicsQueries, ValueLookup
from d365.hooks.dynamics_settings import DynamicsConnectionSettings
from d365.hooks.errors import DynamicsMalformedAnswer
from d365.hooks.odata import ENTITY_ID_RE, GUID_RE, entity_path, key_segment, odata_literal, query_string

__all__ = [
    "BULK_MESSAGES",
    "DEFAULT_GROUP_SIZE",
    "GUID_RE",
    "MAX_BATCH_OPERATIONS",
    "AlternateKey",
    "AttributeInfo",
    "BatchOperation",
    "BatchRequest",
    "BatchResult",
    "BulkResult",
    "DynamicsConnectionSettings",
    "DynamicsHook",
    "EntityMetadata",
    "UpsertResult",
    "ValueLookup",
    "entity_path",
    "key_segment",
    "odata_literal",
    "write_operations",
]


class UpsertResult(NamedTuple):
    status: int
    entity_id: str | None  # GUID when known (GUID key, representation, or a GUID OData-EntityId)
    created: bool | None  # True 201 / False 200 with return_representation; None for 204
    etag: str | None


def _guess_primary_id(entity_set: str) -> str:
    # leads → leadid, systemusers → systemuserid; metadata reads replace the guess when available.
    name = entity_set[:-1] if entity_set.endswith("s") else entity_set
    return f"{name}id"


class DynamicsHook(DynamicsQueries, DynamicsMetadataReads):
    """Dataverse Web API client for one Airflow connection; safe to share between worker threads."""

    conn_name_attr = "dynamics365_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "dynamics365"
    hook_name = "Dynamics 365"

    # -- identity / health ------------------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        """WhoAmI: proves auth end to end and reads ``x-ms-dop-hint`` (recommended parallelism) into ``dop_hint``."""
        response, who = self._request_json(
            "GET", "WhoAmI", shape=lambda body, where: odata_entity(body, where, ("UserId",))
        )
        hint = response.headers.get("x-ms-dop-hint")
        if hint and hint.strip().isdigit():
            self.dop_hint = int(hint.strip())
            self.throttle.configure(dop_hint=self.dop_hint)
        return who

    def test_connection(self) -> tuple[bool, str]:
        """For the Airflow UI's Test button: a WhoAmI round trip."""
        try:
            who = self.whoami()
        except Exception as exc:  # the UI shows the message; never raise from here
            return False, str(exc)
        return True, f"Connected to {self.org_url} as application user {who.get('UserId')}"

    # -- writing ----------------------------------------------------------------------------------------------
    def _primary_id(self, entity_set: str) -> str:
        return self._primary_ids.get(entity_set) or _guess_primary_id(entity_set)

    def _strip_key_columns(
        self, entity_set: str, key: str | uuid.UUID | Mapping[str, Any], payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The body without the key's columns (Dataverse uses body values over the URL's on create)."""
        names = {k.lower() for k in key} if isinstance(key, Mapping) else {self._primary_id(entity_set).lower()}
        return {k: v for k, v in payload.items() if k.lower() not in names}

    def upsert(
        self,
        entity_set: str,
        key: str | uuid.UUID | Mapping[str, Any],
        payload: Mapping[str, Any],
        *,
        record: str | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
        return_representation: bool = False,
        suppress_duplicate_detection: bool = True,
    ) -> UpsertResult:
        """PATCH by GUID or alternate key: creates or updates, so it is safe to retry.

        ``if_match="*"`` = update only (404 → DynamicsNotFound); ``if_none_match="*"`` = create only
        (412 → DynamicsConflict). ``return_representation`` tells create (201) from update (200).
        """
        path = entity_path(entity_set, key)
        headers: dict[str, str] = {}
        if if_match:
            headers["If-Match"] = if_match
        if if_none_match:
            headers["If-None-Match"] = if_none_match
        if not suppress_duplicate_detection:
            headers["MSCRM.SuppressDuplicateDetection"] = "false"
        primary_id = self._primary_id(entity_set)
        if return_representation:
            headers["Prefer"] = "return=representation"
            path += "?" + query_string({"$select": primary_id})
        response = self._request(
            "PATCH", path, json_body=self._strip_key_columns(entity_set, key, payload), headers=headers, record=record
        )
        body = self._json(response) or {}
        entity_id = body.get(primary_id)
        if not entity_id:
            match = ENTITY_ID_RE.search(response.headers.get("OData-EntityId", ""))
            if match:
                entity_id = match.group(1)
            elif not isinstance(key, Mapping):
                entity_id = str(key).strip("{}").lower()
        created = {201: True, 200: False}.get(response.status_code)
        etag = response.headers.get("ETag") or body.get("@odata.etag")
        return UpsertResult(response.status_code, entity_id, created, etag)

    # -- $batch -----------------------------------------------------------------------------------------------
    def execute_batch(
        self,
        operations: Sequence[BatchRequest],
        *,
        continue_on_error: bool = True,
        changeset_per_operation: bool = False,
        idempotent: bool = True,
    ) -> list[BatchResult]:
        """Run up to 1000 operations in one ``$batch`` request; one result per operation, in order. Each is sent
        as it is (a ``BatchOperation``, or the sync's planned ``Operation``: any ``BatchRequest``).

        ``idempotent`` (all operations safe to repeat, e.g. upserts) lets a 5xx/timeout resend the whole batch.
        With ``continue_on_error=False`` the batch stops at the first failure: later operations come back with
        ``executed=False`` so the caller can resend them.
        """
        if len(operations) > MAX_BATCH_OPERATIONS:
            raise ValueError(f"a batch holds at most {MAX_BATCH_OPERATIONS} operations, got {len(operations)}")
        if not operations:
            return []
        plan, body = build_batch(operations, changeset_per_operation=changeset_per_operation, api_path=self.api_path)
        headers = {"Content-Type": plan.content_type}
        if continue_on_error:
            headers["Prefer"] = "odata.continue-on-error"
        parsed: list[list[Any]] = []

        def read(answer: requests.Response) -> None:
            # Inside the retry loop: a lying 200 to an idempotent batch is resent like a 5xx (_request_json).
            try:
                parsed[:] = [parse_batch_response(answer.headers.get("Content-Type"), answer.content)]
            except ValueError as exc:
                raise DynamicsMalformedAnswer(
                    f"unreadable $batch answer: {exc}",
                    status=answer.status_code,
                    code="WrongShape",
                    method="POST",
                    path=self.api_path + "$batch",
                ) from None

        response = self._request(
            "POST", "$batch", data=body, headers=headers, idempotent=idempotent, multipart_errors=True, read=read
        )
        parts = parsed[0]
        results = map_batch_results(
            operations,
            plan,
            parts,
            stopped=response.status_code >= 400,
            default_retry_after=self.default_retry_after,
        )
        failed = sum(1 for r in results if r.error is not None)
        skipped = sum(1 for r in results if not r.executed)
        self.log.info(
            "Dynamics 365: $batch of %d -> HTTP %d, %d failed, %d not executed",
            len(operations),
            response.status_code,
            failed,
            skipped,
        )
        return results
