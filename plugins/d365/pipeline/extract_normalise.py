"""The DreamApply catalog and the normalisation of wire records into the shapes of ``records.py``.

Airflow-free. Every wire value is shape-checked here: a value of the wrong shape is read as empty and noted in
the record's ``malformed`` list (value-free texts), never raised on; the quality step quarantines such records.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from d365.pipeline.fields import APPLICANT_FIELDS, SourceField
from d365.pipeline.records import (
    AcademicTerm,
    ApplicantRecord,
    ApplicationRecord,
    Catalog,
    ConsentDefinition,
    Course,
    CourseChoice,
    OfferRecord,
)

log = logging.getLogger(__name__)


# -- small wire helpers -----------------------------------------------------------------------
def link_id(value: Any) -> int | None:
    """The ID a link (``/api/v9/courses/7``), an expanded object (``{"id": 7}``) or a bare number names."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return link_id(value.get("id"))
    if isinstance(value, str):
        tail = value.rstrip("/").rsplit("/", 1)[-1]
        return int(tail) if tail.isdigit() else None
    return None


def _key_id(key: str, item: Mapping[str, Any]) -> int | None:
    value = item.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(key) if key.isdigit() else None


# -- catalog ----------------------------------------------------------------------------------
def load_catalog(client: Any) -> tuple[Catalog, list[int]]:
    """The reference data (7 requests) and the academic year keys (for /applications' required filter)."""
    years = client.get_collection("/academic-years")
    terms = client.get_collection("/academic-terms")
    term_types = client.get_collection("/academic-terms/types")
    courses = client.get_collection("/courses")
    consents = client.get_collection("/applicants/consents")
    trackers = client.get_collection("/applicants/trackers")
    offer_types = client.get_collection("/applications/offers/types")

    out_terms: dict[str, AcademicTerm] = {}
    for key, t in terms.items():
        tid = _key_id(key, t)
        if tid is None:
            continue
        year = link_id(t.get("year"))
        type_id = link_id(t.get("type"))
        out_terms[str(tid)] = AcademicTerm(
            id=tid,
            name=t.get("name"),
            year=year,
            year_name=(years.get(str(year)) or {}).get("name") if year is not None else None,
            type_id=type_id,
            type_name=(term_types.get(str(type_id)) or {}).get("name") if type_id is not None else None,
            start=t.get("start"),
            finish=t.get("finish"),
        )
    out_courses: dict[str, Course] = {}
    for key, c in courses.items():
        cid = _key_id(key, c)
        if cid is None:
            continue
        out_courses[str(cid)] = Course(
            id=cid,
            name=c.get("name"),
            code=c.get("code"),
            code_internal=c.get("code_internal"),
            type=c.get("type"),
            mode=c.get("mode"),
        )
    out_consents: dict[str, ConsentDefinition] = {}
    for key, c in consents.items():
        cid = _key_id(key, c)
        if cid is not None:
            out_consents[str(cid)] = ConsentDefinition(id=cid, type=c.get("type"), text=c.get("text"))
    catalog = Catalog(
        terms=out_terms,
        courses=out_courses,
        consents=out_consents,
        trackers={str(_key_id(k, t)): t.get("code") for k, t in trackers.items() if _key_id(k, t) is not None},
        offer_types={str(_key_id(k, t)): t.get("title") for k, t in offer_types.items() if _key_id(k, t) is not None},
    )
    year_keys = sorted({y for k, v in years.items() if (y := _key_id(k, v)) is not None})
    if not year_keys:  # fall back to the years the terms name
        year_keys = sorted({t["year"] for t in out_terms.values() if t["year"] is not None})
    return catalog, year_keys


# -- normalisation ----------------------------------------------------------------------------
def _association(client: Any, value: Any) -> Mapping[str, Any]:
    """An expanded association map; a link (the server ignored ``expand``) is fetched as a fallback."""
    if isinstance(value, str) and client is not None:
        log.warning("expand was not honoured; fetching %s (one request per record)", value)
        return client.get_collection(value)
    if isinstance(value, Mapping):
        return value
    return {}


def normalise_applicant(
    raw: Any,
    catalog: Catalog,
    applications: list[ApplicationRecord],
    reason: str,
    client: Any = None,
    key_id: int | None = None,
) -> ApplicantRecord:
    """One wire record → an ``ApplicantRecord``. Never raises on data (only a fetch through ``client`` can):
    a record of the wrong shape (not an object, an id that is not an integer, a name that is not an object,
    consents or trackers that are not ID-keyed objects, a malformed application) comes back with
    ``malformed`` notes that name the key and what it held, never a value, and ``applicant_id`` None when the
    id cannot be read (``key_id``, the id the ID-keyed collection filed it under, when given: the record is
    still malformed, but its quarantine names the applicant); the quality step quarantines it per row.
    Scalars of the wrong type (an e-mail given as a number) are kept as they are: they are field issues for
    the quality step."""
    notes: list[str] = []
    key_id = key_id if isinstance(key_id, int) and not isinstance(key_id, bool) and key_id > 0 else None
    if not isinstance(raw, Mapping):
        return _malformed_applicant(key_id, reason, [f"record: {_shape(raw)} instead of an object"], applications)
    applicant_id = _whole(raw.get("id"))
    if applicant_id is None:
        notes.append(f"id: {_shape(raw.get('id'))} instead of a positive integer")
        applicant_id = key_id
    elif key_id is not None and applicant_id != key_id:
        notes.append("id: differs from the key the record is listed under")
        applicant_id = key_id
    wire_fields = _wire_fields(raw, notes)
    consent_map = _id_keyed(client, raw.get("consents"), "consents", notes)
    tracker_map = _id_keyed(client, raw.get("trackers"), "trackers", notes)
    try:
        consents: dict[str, str] = {}
        for key, item in consent_map.items():
            if not isinstance(item, Mapping):
                continue
            cid = link_id(item.get("consent")) or (int(key) if str(key).isdigit() else None)
            decision = item.get("decision")
            if cid is not None and decision in ("Accept", "Reject"):
                consents[str(cid)] = decision
        tracker_ids: list[int] = []
        for key, item in tracker_map.items():
            tid = link_id(item.get("tracker")) if isinstance(item, Mapping) else None
            if tid is None and str(key).isdigit():
                tid = int(key)
            if tid is not None and tid not in tracker_ids:
                tracker_ids.append(tid)
        known = catalog.get("trackers") if isinstance(catalog, Mapping) else None
        known = known if isinstance(known, Mapping) else {}
        codes = [known[str(t)] for t in tracker_ids if isinstance(known.get(str(t)), str) and known[str(t)]]
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as exc:  # never raise on data
        return _malformed_applicant(applicant_id, reason, [*notes, f"record: unreadable ({type(exc).__name__})"], [])
    record = ApplicantRecord(  # type: ignore[typeddict-item] - the field keys come from the registry
        applicant_id=applicant_id,
        **wire_fields,
        consents=consents,
        tracker_ids=tracker_ids,
        tracker_codes=codes,
        applications=_sorted_applications(applications),
        reason=reason,
    )
    if notes:
        record["malformed"] = notes
    return record


# per registry field, in registry order: record key, the object it is in (None: the applicant itself), wire key
_WirePlan = tuple[tuple[str, str | None, str], ...]
_wire_plans: dict[int, tuple[tuple[SourceField, ...], _WirePlan]] = {}


def _wire_plan(applicant_fields: tuple[SourceField, ...]) -> _WirePlan:
    """How to read the registry's wire paths (``email``; ``name.given`` inside the ``name`` object): computed
    once per registry, found by identity (hashing the entries would cost more than reading the fields)."""
    cached = _wire_plans.get(id(applicant_fields))
    if cached is not None and cached[0] is applicant_fields:
        return cached[1]
    plan: list[tuple[str, str | None, str]] = []
    for f in applicant_fields:
        if not f.wire or not f.record_key:
            continue
        parts = f.wire.split(".")
        if len(parts) > 2:
            raise ValueError(f"{f.name}: wire path {f.wire!r} is deeper than one object (DreamApply has none)")
        plan.append((f.record_key, parts[0], parts[1]) if len(parts) == 2 else (f.record_key, None, parts[0]))
    _wire_plans[id(applicant_fields)] = (applicant_fields, tuple(plan))
    return tuple(plan)


def _wire_fields(raw: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """Record key → the value at each registry field's wire path, as DreamApply sent it (None when absent), in
    registry order. An object a path reads in that is null reads as empty; anything else but an object is noted
    as malformed (what it held, never its value) and its fields read as empty."""
    get = raw.get
    out: dict[str, Any] = {}
    objects: dict[str, Mapping[str, Any]] = {}
    for key, parent, wire_key in _wire_plan(APPLICANT_FIELDS):
        if parent is None:
            out[key] = get(wire_key)
            continue
        obj = objects.get(parent)
        if obj is None:
            value = get(parent)
            if value is not None and not isinstance(value, Mapping):
                notes.append(f"{parent}: {_shape(value)} instead of an object")
            obj = objects[parent] = value if isinstance(value, Mapping) else {}
        out[key] = obj.get(wire_key)
    return out


def _shape(value: Any) -> str:
    """What a value is, never what it says (malformed notes reach quarantine files and the report)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a yes/no value"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _whole(value: Any) -> int | None:
    """A positive integer id (an int, or a digit string); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) < 19:
        return int(value.strip()) or None
    return None


def _id_keyed(client: Any, value: Any, key: str, notes: list[str]) -> Mapping[str, Any]:
    """An expanded association (ID-keyed object); null or an empty list (PHP's empty array) is empty; a link
    is fetched (``_association``); anything else is noted as malformed and read as empty."""
    if value is None or value == []:
        return {}
    if isinstance(value, Mapping) or (isinstance(value, str) and client is not None):
        found = _association(client, value)
        if isinstance(found, Mapping):
            return found
        notes.append(f"{key}: the linked collection is {_shape(found)}, not an object")
        return {}
    notes.append(f"{key}: {_shape(value)} instead of an object")
    return {}


def _sorted_applications(applications: Any) -> list[ApplicationRecord]:
    if not isinstance(applications, list):
        return []
    return sorted(applications, key=lambda a: (not isinstance(a.get("id"), int), a.get("id") or 0))


def _malformed_applicant(applicant_id: int | None, reason: str, notes: list[str], applications: Any) -> ApplicantRecord:
    return ApplicantRecord(  # type: ignore[typeddict-item]
        applicant_id=applicant_id,
        **dict.fromkeys(f.record_key for f in APPLICANT_FIELDS),
        consents={},
        tracker_ids=[],
        tracker_codes=[],
        applications=_sorted_applications(applications),
        reason=reason,
        malformed=notes,
    )


def normalise_application(raw: Any, catalog: Catalog, client: Any = None) -> ApplicationRecord:
    """One wire application → an ``ApplicationRecord``. Never raises on data: a wrong shape (not an object,
    an id that is not an integer, courses or offers that are not ID-keyed objects) is noted in
    ``malformed`` (value-free), which makes the applicant's record malformed for the quality step."""
    notes: list[str] = []
    if not isinstance(raw, Mapping):
        raw, notes = {}, [f"application: {_shape(raw)} instead of an object"]
    app_id = _whole(raw.get("id"))
    if app_id is None and not notes:
        notes.append(f"application id: {_shape(raw.get('id'))} instead of a positive integer")
    course_map = _id_keyed(client, raw.get("courses"), "courses", notes)
    offer_map = _id_keyed(client, raw.get("offers"), "offers", notes)
    offer_types = catalog.get("offer_types") if isinstance(catalog, Mapping) else None
    offer_types = offer_types if isinstance(offer_types, Mapping) else {}
    courses: list[CourseChoice] = []
    offers: list[OfferRecord] = []
    term_id: int | None = None
    try:
        term_id = link_id(raw.get("academic_term"))
        for key, item in course_map.items():
            if not isinstance(item, Mapping):
                continue
            cid = link_id(item.get("course")) or (int(key) if str(key).isdigit() else None)
            if cid is None:
                continue
            prio = item.get("priority")
            courses.append(
                CourseChoice(
                    course_id=cid,
                    priority=int(prio) if isinstance(prio, (int, str)) and str(prio).isdigit() else None,
                    intake_id=link_id(item.get("intake")),
                )
            )
        courses.sort(key=lambda c: (c["priority"] is None, c["priority"] or 0, c["course_id"]))
        for key, item in offer_map.items():
            if not isinstance(item, Mapping):
                continue
            oid = _key_id(str(key), item)
            if oid is None:
                continue
            type_id = link_id(item.get("type"))
            offers.append(
                OfferRecord(
                    id=oid,
                    course_id=link_id(item.get("course")),
                    type_id=type_id,
                    type_title=offer_types.get(str(type_id)) if type_id is not None else None,
                    decision=item.get("decision"),
                    inserted=item.get("inserted"),
                    saved=item.get("saved"),
                    confirmed=item.get("confirmed"),
                )
            )
        offers.sort(key=lambda o: o["id"])
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as exc:  # never raise on data
        notes.append(f"application: unreadable ({type(exc).__name__})")
        courses, offers = [], []
    record = ApplicationRecord(
        id=app_id,  # type: ignore[typeddict-item]
        status=raw.get("status"),
        created=raw.get("created"),
        revised=raw.get("revised"),
        submitted=raw.get("submitted"),
        academic_term_id=term_id,
        courses=courses,
        offers=offers,
    )
    if notes:
        record["malformed"] = notes
    return record
