"""Consent withdrawal, erasure (the right to be forgotten) and data minimisation. No Airflow here.

**Withdrawal.** An applicant whose lead was sent (the ledger names a lead) and who no longer has a required
consent (the transform's ``skipped_consent`` outcome) is never updated again; ``consent.on_withdrawal``
decides what happens to the lead:

* ``flag`` — ``PATCH`` the ``consent.withdrawal_flags`` Boolean columns to true ("Do Not Allow");
* ``deactivate`` — ``PATCH`` ``statecode`` 2 / ``statuscode`` 6 (Disqualified, "No Longer Interested");
* ``delete`` — ``DELETE`` the lead.

The ledger records ``withdrawn`` with the action in ``reason`` (the lead id is kept, or forgotten after a
delete). Withdrawal PATCHes carry ``If-Match: *``: they update, they never create a lead that is gone.
An applicant who was never sent and lacks consent stays ``skipped_consent`` (no request). A withdrawn
applicant who accepts again is mapped and sent again like any known applicant: an update of the same lead
(re-created with the same deterministic id after a delete). Flags and the Disqualified state set by the
withdrawal are not reverted: whether to contact the person again is the CRM users' decision.

**Erasure.** Applicants DreamApply purged with ``request_to_be_forgotten`` (``extract/meta.json``) that the
ledger knows with a lead get ``erasure.action``: ``delete`` (``DELETE``), ``anonymise`` (``PATCH`` the
personal columns to null, see ``personal_columns``/``anonymise_payload``) or ``flag`` (the withdrawal
flags). The load records a done action as ``erasing``; erased applicants without a lead get ``erasing``
with no request. Then the commit scrubs every run folder's files (``scrub_run_files``) and, only once that
succeeded, the ledger row (``Ledger.scrub``: no payload hash, no errors; state ``erased``). The ledger's
``erased`` state is final: such an applicant is never sent again. An erasure is **pending until the scrub
succeeded**: a failed Dynamics action stays ``failed`` with its reason (the lead id kept), a failed commit
leaves ``erasing``; both are planned again by the next run (``pending_erasures``: an ``erasing`` one as
``erased``, no request, so only the scrub runs again).

Anonymised leads keep the non-personal columns (stage, programme, term, consent flags...), the
``uni_applicantid`` alternate key and the instance column: the lead stays recognisable as the erased
applicant's (DreamApply IDs are never reused and the person behind it is gone from DreamApply), so it is
never adopted or re-created. A personal column that the lead table requires (``ApplicationRequired``, e.g.
``lastname``) gets the placeholder ``ERASED_PLACEHOLDER`` instead of null, so CRM forms can still be saved.

**Minimisation.** Only mapped columns leave DreamApply (``unexpected_columns``); messages written to the
run folder, the report and the ledger name applicant IDs, attributes and checks, never values
(``redact`` removes payload values from Dynamics error texts).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from d365.pipeline.fields import personal_sources, scrubbed_record_keys
from d365.pipeline.ledger import LeadState, LedgerEntry
from d365.pipeline.plan import ERASE, ERASED, UPSERTS, WITHDRAW, Operation
from d365.pipeline.runfolder import StoragePath
from d365.pipeline.settings import FieldMapping, Settings, template_placeholders

if TYPE_CHECKING:
    from d365.pipeline.fit import AttributeSpec

# Source fields that hold personal data (fields.REGISTRY, privacy identifying or personal): a column fed by one
# of them (as source, fallback or template placeholder) is a personal column.
PERSONAL_SOURCES = personal_sources()
# Columns of the default lead payload (include/mappings/settings.yaml) that hold personal values.
DEFAULT_PERSONAL_COLUMNS = frozenset(
    {
        "firstname",
        "middlename",
        "lastname",
        "fullname",
        "emailaddress1",
        "emailaddress2",
        "emailaddress3",
        "mobilephone",
        "telephone1",
        "uni_reference",
        "uni_matriculation",
    }
)
# Keys of an extracted applicant record (every identifying field of the registry) and of the default lead
# payload holding personal values; what scrub_run_files also redacts from files that are not JSON Lines (e.g. a
# validation result listing values).
PERSONAL_RECORD_KEYS = scrubbed_record_keys() | DEFAULT_PERSONAL_COLUMNS
ERASED_PLACEHOLDER = "(erased)"
REQUIRED_LEVELS = frozenset({"ApplicationRequired", "SystemRequired"})
DEACTIVATE = {"statecode": 2, "statuscode": 6}  # Disqualified / No Longer Interested
WITHDRAWAL_REASON = "consent withdrawn"
ERASURE_REASON = "right to be forgotten"
REDACTED = "[redacted]"
SCRUBBED = "[erased]"
MIN_SUBSTRING = 6  # shorter personal values are replaced only where they are a whole JSON string


class DataMinimisationError(Exception):
    """A payload would send a column that no setting maps: the run stops before any write."""


# -- columns -----------------------------------------------------------------------------------------
def entry_sources(entry: FieldMapping) -> set[str]:
    """Every source field a mapping entry reads (source, fallbacks, template placeholders)."""
    if entry.form == "template":
        return {name.strip() for name in template_placeholders(entry.template or "")}
    if entry.form == "constant":
        return set()
    return {name for name in (entry.source, *entry.fallback) if name}


def personal_columns(settings: Settings) -> list[str]:
    """Mapped lead columns that carry personal data, in mapping order (what ``anonymise`` clears)."""
    return [attr for attr, entry in settings.data_mapping.items() if entry_sources(entry) & PERSONAL_SOURCES]


def anonymise_payload(settings: Settings, schema: Mapping[str, AttributeSpec] | None = None) -> dict[str, Any]:
    """The PATCH body of ``erasure.action: anonymise``: every personal column null, except required text
    columns, which get ``ERASED_PLACEHOLDER`` (cut to their MaxLength)."""
    schema = schema or {}
    body: dict[str, Any] = {}
    for column in personal_columns(settings):
        spec = schema.get(column)
        if spec is not None and spec.required_level in REQUIRED_LEVELS and spec.type in ("String", "Memo"):
            body[column] = ERASED_PLACEHOLDER[: spec.max_length or None]
        else:
            body[column] = None
    return body


def flag_payload(settings: Settings) -> dict[str, Any]:
    return dict.fromkeys(settings.consent.withdrawal_flags, True)


def withdrawal_request(settings: Settings) -> tuple[str, dict[str, Any]]:
    """``(method, body)`` for ``consent.on_withdrawal``."""
    action = settings.consent.on_withdrawal
    if action == "delete":
        return "DELETE", {}
    if action == "deactivate":
        return "PATCH", dict(DEACTIVATE)
    return "PATCH", flag_payload(settings)


def erasure_request(
    settings: Settings, schema: Mapping[str, AttributeSpec] | None = None
) -> tuple[str, dict[str, Any]]:
    """``(method, body)`` for ``erasure.action``."""
    action = settings.erasure.action
    if action == "delete":
        return "DELETE", {}
    if action == "anonymise":
        return "PATCH", anonymise_payload(settings, schema)
    return "PATCH", flag_payload(settings)


def allowed_columns(settings: Settings) -> set[str]:
    """What a lead payload may hold: the mapped columns and the identity columns (a create's owner is bound
    after this check, by the plan's final request: ``plan.final_requests``)."""
    identity = {settings.dynamics.alternate_key, settings.dynamics.instance_column}
    return set(settings.data_mapping) | {c for c in identity if c}


def unexpected_columns(ops: Iterable[Operation], settings: Settings) -> dict[int, list[str]]:
    """Payload columns an operation would send that no setting asks for: ``{applicant id: columns}``.
    Upserts may carry ``allowed_columns``; withdrawals and erasures also the withdrawal flags and the state."""
    mapped = allowed_columns(settings)
    privacy = mapped | set(settings.consent.withdrawal_flags) | set(DEACTIVATE)
    found: dict[int, list[str]] = {}
    for op in ops:
        allowed = mapped if op.action in UPSERTS else privacy
        extra = sorted(set(op.body or {}) - allowed)
        if extra:
            found[op.applicant_id] = extra
    return found


# -- planning ----------------------------------------------------------------------------------------
def withdrawal_operations(
    skipped_consent: Iterable[int],
    entries: Mapping[int, LedgerEntry],
    settings: Settings,
    *,
    exclude: Iterable[int] = (),
) -> list[Operation]:
    """One ``withdraw`` per applicant without consent whose lead the ledger names (and who is not already
    withdrawn or erased). Applicants never sent get nothing: they stay ``skipped_consent``."""
    method, body = withdrawal_request(settings)
    skip = {int(i) for i in exclude}
    reason = f"{WITHDRAWAL_REASON}: {settings.consent.on_withdrawal}"
    ops: list[Operation] = []
    for aid in sorted({int(i) for i in skipped_consent} - skip):
        entry = entries.get(aid)
        if entry is None or not entry.lead_id or entry.state in (LeadState.WITHDRAWN, LeadState.ERASED):
            continue
        ops.append(Operation(aid, WITHDRAW, entry.lead_id, "", dict(body), method=method, reason=reason))
    return ops


def erasure_operations(
    erased: Iterable[int],
    entries: Mapping[int, LedgerEntry],
    settings: Settings,
    schema: Mapping[str, AttributeSpec] | None = None,
) -> list[Operation]:
    """For each applicant purged with a request to be forgotten: ``erase`` the lead the ledger names, or
    ``erased`` (no request) when there is none or when an earlier run already did the CRM action (state
    ``erasing``: only the scrub is left). Applicants the ledger already marks erased are left out."""
    method, body = erasure_request(settings, schema)
    ops: list[Operation] = []
    for aid in sorted({int(i) for i in erased}):
        entry = entries.get(aid)
        if entry is not None and entry.state is LeadState.ERASED:
            continue
        if entry is not None and entry.state is LeadState.ERASING:
            reason = entry.reason or f"{ERASURE_REASON}: {settings.erasure.action}"
            ops.append(Operation(aid, ERASED, entry.lead_id, "", reason=reason))
            continue
        if entry is None or not entry.lead_id:
            ops.append(Operation(aid, ERASED, None, "", reason=f"{ERASURE_REASON}: no lead was sent"))
            continue
        reason = f"{ERASURE_REASON}: {settings.erasure.action}"
        ops.append(Operation(aid, ERASE, entry.lead_id, "", dict(body), method=method, reason=reason))
    return ops


def pending_erasures(entries: Mapping[int, LedgerEntry]) -> list[int]:
    """Erasures an earlier run did not finish: the CRM action failed (state failed, erasure reason), or it was
    done but the scrub of ledger and run files did not succeed (state erasing, e.g. the commit failed)."""
    return sorted(
        aid
        for aid, e in entries.items()
        if e.state is LeadState.ERASING or (e.state is LeadState.FAILED and (e.reason or "").startswith(ERASURE_REASON))
    )


def redact(text: str | None, values: Iterable[Any]) -> str | None:
    """``text`` with every string value of ``values`` (3+ characters) replaced by ``[redacted]``: Dynamics
    error messages may quote what was sent ("Cannot convert the literal '...'")."""
    if not text:
        return text
    for value in sorted({v for v in values if isinstance(v, str) and len(v.strip()) >= 3}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


# -- run files ---------------------------------------------------------------------------------------
def _row_id(row: Any) -> int | None:
    if not isinstance(row, Mapping):
        return None
    value = row.get("applicant_id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _personal_values(data: Any, keys: frozenset[str], out: set[str]) -> None:
    if isinstance(data, Mapping):
        for key, value in data.items():
            if key in keys and isinstance(value, str) and len(value.strip()) >= 3:
                out.add(value.strip())
            elif isinstance(value, Mapping | list):
                _personal_values(value, keys, out)
    elif isinstance(data, list):
        for item in data:
            _personal_values(item, keys, out)


def _scrub_json(data: Any, ids: set[int], secrets: list[str]) -> tuple[Any, int]:
    """(cleaned data, changes): list items that are records of these applicants dropped, secret strings
    replaced."""
    if isinstance(data, list):
        kept: list[Any] = []
        changes = 0
        for item in data:
            if _row_id(item) in ids:
                changes += 1
                continue
            cleaned, n = _scrub_json(item, ids, secrets)
            kept.append(cleaned)
            changes += n
        return kept, changes
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        changes = 0
        for key, value in data.items():
            cleaned, n = _scrub_json(value, ids, secrets)
            out[key] = cleaned
            changes += n
        return out, changes
    if isinstance(data, str) and secrets:
        text = _replace_secrets(data, secrets)
        return text, int(text != data)
    return data, 0


def _replace_secrets(text: str, secrets: list[str]) -> str:
    """Short values (under ``MIN_SUBSTRING`` characters: "Lee", "Ana") only when they are the whole text,
    longer ones wherever they occur."""
    if text.strip() in secrets:
        return SCRUBBED
    for secret in secrets:
        if len(secret) >= MIN_SUBSTRING and secret in text:
            text = text.replace(secret, SCRUBBED)
    return text


def scrub_run_files(
    root: StoragePath,
    applicant_ids: Iterable[int],
    *,
    personal_keys: Iterable[str] = (),
) -> int:
    """Remove these applicants from every file under the run root; returns the number of lines, items and
    values removed.

    * JSON Lines (``*.jsonl``): lines whose ``applicant_id`` is one of them are dropped; the personal values
      of the dropped lines (keys of ``PERSONAL_RECORD_KEYS`` + ``personal_keys``) are remembered.
    * JSON (``*.json``): list items that are their records are dropped, and remembered values replaced by
      ``[erased]`` (validation results list unexpected values, not records): a whole string equal to one,
      and values of ``MIN_SUBSTRING`` characters or more wherever they occur.
    * any other UTF-8 text file: remembered values of ``MIN_SUBSTRING`` characters or more replaced.

    Other applicants' JSON Lines records are never changed (two applicants may share an e-mail address).

    A file is rewritten only when something changed. ``root`` is a ``StoragePath`` (the runtime gives an
    ``ObjectStoragePath``: local ``file://`` or any fsspec store, ``d365.runtime.runfolder.storage_path``).
    """
    ids = {int(i) for i in applicant_ids}
    if not ids:
        return 0
    if not root.exists():
        return 0
    keys = PERSONAL_RECORD_KEYS | frozenset(personal_keys)
    files = sorted((p for p in root.rglob("*") if p.is_file()), key=str)
    secrets: set[str] = set()
    changes = 0
    for path in files:
        if path.name.endswith(".jsonl"):
            changes += _scrub_jsonl(path, ids, keys, secrets)
    ordered = sorted(secrets, key=len, reverse=True)
    for path in files:
        if path.name.endswith(".jsonl"):
            continue
        try:
            with path.open("r", encoding="utf-8") as fh:
                text = fh.read()
        except (UnicodeDecodeError, OSError):
            continue
        if path.name.endswith(".json"):
            try:
                data = json.loads(text)
            except ValueError:
                data = None
            if data is not None:
                cleaned, n = _scrub_json(data, ids, ordered)
                if n:
                    with path.open("w", encoding="utf-8") as fh:
                        json.dump(cleaned, fh, ensure_ascii=False, indent=2, sort_keys=True, default=str)
                    changes += n
                continue
        new = text
        for secret in ordered:
            if len(secret) >= MIN_SUBSTRING:
                new = new.replace(secret, SCRUBBED)
        if new != text:
            with path.open("w", encoding="utf-8") as fh:
                fh.write(new)
            changes += 1
    return changes


def _scrub_jsonl(path: Any, ids: set[int], keys: frozenset[str], secrets: set[str]) -> int:
    kept: list[str] = []
    removed = 0
    with path.open("r", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                kept.append(line if line.endswith("\n") else line + "\n")
                continue
            if _row_id(row) in ids:
                removed += 1
                _personal_values(row, keys, secrets)
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    if removed:
        with path.open("w", encoding="utf-8") as fh:
            fh.writelines(kept)
    return removed
