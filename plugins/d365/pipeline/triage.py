"""Every extracted applicant → exactly one of: a lead payload, skipped for consent, quarantined with reasons.

Airflow-free; ``transform_step`` calls :func:`triage_applicants` and :func:`write_artifacts`.

Order, per row (the quality checks run first, over the whole batch, in one Great Expectations validation):

1. **Record** (quality, ``Check.kind == "record"``): not a record, a malformed record, no usable applicant
   id, or a duplicated id → quarantined. Nothing else can be said about a row that cannot be named or read.
2. **Consent**: the required consents (settings ``consent.required``) not all accepted → skipped for
   consent, whatever the rest of the data looks like. Such an applicant is never sent, and the ledger and
   report say "consent" rather than a data problem the university cannot act on without consent anyway.
   Consent comes before the content checks also because a lead sent earlier must then be withdrawn
   (plan), which a quarantine would prevent. (Their data problems still count in the batch's invalid
   fraction.)
3. **Identity** (``quality.identity``: default a family or full name, and an e-mail or a phone, each
   present and valid) → quarantined without one; so is a field whose ``quality.field_policy`` is
   ``quarantine`` (an explicit opt-in) or a too-long value of a ``quarantine`` fit-policy column.
4. **Fields**: every other invalid value (phone, citizenship, dates, e-mail, names in a wrong encoding,
   ...) is handed to the mapping with its policy's action: ``drop`` (default: the column is written
   ``null``, left empty on create and **cleared on update**) or ``send_as_entered`` (when it fits the column).
   The applicant is still sent.
5. **Mapping** (``Mapper``): a value that does not fit its column → quarantined; otherwise a lead payload.

Field issues are listed per applicant in ``quality/field_issues.jsonl`` (one line per row with an invalid
field: ``applicant_id``, ``row``, ``state`` (lead / skipped_consent / quarantined) and ``issues``: ``field``,
``code``, ``reason``, ``action`` — never a value) and counted per field and reason code in
``quality/summary.json`` (``field_issues``) and ``summary.md``.

Reasons name the check and the field, never a value: quality reasons come from ``quality.Check``; mapping
reasons are rebuilt from the fit issues' attribute and code (a fit message may quote the value).

The batch fails (``TriageResult.ok`` is False; the caller stops before any write) when a quality batch
check fails: the row count against ``X-Count`` or the previous full extract, or more rows failing the
quality checks than ``quality.max_invalid_fraction`` (every row counts, with or without consent: the
extract is judged as a whole). Mapping quarantines (a missing picklist option, a value of the wrong type
for its column) are configuration matters and do not count towards the fraction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from d365.pipeline.fit import AttributeSpec
from d365.pipeline.ledger import LeadState
from d365.pipeline.mapping_result import MappedLead
from d365.pipeline.quality import QualityResult, summary_markdown, validate_applicants
from d365.pipeline.runfiles import (
    QUALITY_FIELD_ISSUES,
    QUALITY_GX_RESULT,
    QUALITY_QUARANTINE,
    QUALITY_SUMMARY,
    QUALITY_SUMMARY_JSON,
)
from d365.pipeline.settings import Settings

# fit issue codes whose message holds no value (sizes, "no value") and may be shown in a reason
_SAFE_MESSAGES = frozenset({"too_long", "empty", "unknown_attribute", "error"})


@dataclass
class TriageResult:
    leads: list[MappedLead]  # what the transform writes to transform/leads.jsonl (``MappedLead.to_dict``)
    outcomes: list[dict[str, Any]]  # one per row that is not a lead: applicant_id, state, reason, row
    quality: QualityResult
    lead_rows: list[int] = field(default_factory=list)  # row position of each lead

    def field_issue_rows(self) -> list[dict[str, Any]]:
        """quality/field_issues.jsonl: per row with a failed field check, its id, state and issues (field,
        code, reason, action); never a value."""
        state = {row: "lead" for row in self.lead_rows}
        state.update({o["row"]: o["state"] for o in self.outcomes})
        out = []
        for row in sorted(self.quality.failures):
            issues = self.quality.field_issues(row)
            if issues:
                out.append(
                    {
                        "applicant_id": self.quality.applicant_ids[row],
                        "row": row,
                        "state": state.get(row),
                        "issues": [i.to_dict() for i in issues],
                    }
                )
        return out

    @property
    def batch(self) -> list[dict[str, Any]]:
        """The batch-level checks (row count, drop, invalid fraction): the quality step's."""
        return self.quality.batch

    @property
    def batch_failures(self) -> list[str]:
        return self.quality.batch_failures

    @property
    def ok(self) -> bool:
        return self.quality.ok

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {"leads": len(self.leads)}
        for o in self.outcomes:
            out[o["state"]] = out.get(o["state"], 0) + 1
        return out

    def quarantine_rows(self) -> list[dict[str, Any]]:
        """The quarantine file's rows: applicant id (None when unknown), row number, reasons."""
        return [
            {"applicant_id": o["applicant_id"], "row": o["row"], "reasons": o["reasons"]}
            for o in self.outcomes
            if o["state"] == LeadState.QUARANTINED.value
        ]

    def ledger_outcomes(self) -> list[dict[str, Any]]:
        """transform/outcomes.jsonl: one row per applicant id (the rows of a duplicated id share one
        quarantine), plus every row without an id (``applicant_id`` None and its ``row``: counted in the
        report, never recorded in the ledger)."""
        seen: set[int] = set()
        out = []
        for o in self.outcomes:
            aid = o["applicant_id"]
            if aid is not None:
                if aid in seen:
                    continue
                seen.add(aid)
            out.append({"applicant_id": aid, "row": o["row"], "state": o["state"], "reason": o["reason"]})
        return out


def consent_reason(missing: Iterable[int]) -> str:
    ids = list(missing)
    if not ids:
        return "required consent not accepted: a consent reference matches no consent definition"
    return "required consent not accepted: " + ", ".join(f"consent {cid}" for cid in ids)


def mapping_reason(mapped: Any) -> str:
    parts = []
    for issue in getattr(mapped, "issues", ()) or ():
        if getattr(issue, "quarantines", False):
            text = f"{issue.attribute}: {issue.code}"
            if issue.code in _SAFE_MESSAGES:
                text += f" ({issue.message})"
            parts.append(text)
    reason = "mapping: " + ("; ".join(parts) if parts else "the record could not be mapped")
    return reason if len(reason) <= 1000 else reason[:997] + "..."


def triage_applicants(
    records: Sequence[Any],
    *,
    catalog: Any,
    settings: Settings,
    schema: Mapping[str, AttributeSpec],
    instance: str,
    api_count: int | None = None,
    previous_full_count: int | None = None,
    full_extract: bool = False,
    add_options: bool = False,
) -> TriageResult:
    """Quality (GX) → consent → mapping for one extract. Never raises on data: a row that breaks
    anything is quarantined with a reason (an error of Great Expectations itself propagates).

    ``add_options``: a lead that needs a picklist option its mapping allows adding stays a lead, pending,
    with ``options_needed`` (the plan adds the option, ``picklists``); without it such a lead is
    quarantined. A lead matching an owner rule carries ``owner_rule`` (its index)."""
    from d365.pipeline.mapping import Mapper, consent_status

    records = list(records)
    quality = validate_applicants(
        records,
        settings=settings,
        schema=schema,
        api_count=api_count,
        previous_full_count=previous_full_count,
        full_extract=full_extract,
    )
    mapper = Mapper(settings, schema, catalog if isinstance(catalog, Mapping) else {}, instance=instance)
    email_column = settings.dedupe.email_column
    leads: list[MappedLead] = []
    lead_rows: list[int] = []
    outcomes: list[dict[str, Any]] = []

    def out(row: int, state: LeadState, reasons: list[str]) -> None:
        outcomes.append(
            {
                "applicant_id": quality.applicant_ids[row],
                "row": row,
                "state": state.value,
                "reason": "; ".join(reasons),
                "reasons": reasons,
            }
        )

    for row, applicant in enumerate(records):
        unreadable = quality.record_reasons(row)
        if unreadable:
            out(row, LeadState.QUARANTINED, unreadable)
            continue
        try:
            consented, missing = consent_status(applicant, catalog, settings)
        except Exception as exc:  # never raise on data
            out(row, LeadState.QUARANTINED, [f"consent: could not be read ({type(exc).__name__})"])
            continue
        if not consented:
            out(row, LeadState.SKIPPED_CONSENT, [consent_reason(missing)])
            continue
        withheld = quality.withheld_reasons(row)
        if withheld:  # the field issues behind it too (an identity fails because its fields were invalid)
            explained = withheld + [i.reason for i in quality.field_issues(row) if i.reason not in withheld]
            out(row, LeadState.QUARANTINED, explained)
            continue
        actions = quality.field_actions(row)
        mapped = mapper.map(applicant, actions)  # never raises
        if not mapped.ok:
            out(row, LeadState.QUARANTINED, [mapping_reason(mapped)])
            continue
        if mapped.options_needed and not add_options:
            needed = ", ".join(f"{attr}={label!r}" for attr, label in mapped.options_needed)
            out(row, LeadState.QUARANTINED, [f"no picklist option for {needed}"])
            continue
        # adoption by e-mail only with an address that passed its checks
        mapped.email = None if "email" in actions else (mapped.payload.get(email_column) or applicant.get("email"))
        mapped.applicant_id = quality.applicant_ids[row]
        leads.append(mapped)
        lead_rows.append(row)

    return TriageResult(leads, outcomes, quality, lead_rows=lead_rows)


def write_artifacts(folder: Any, result: TriageResult) -> dict[str, str]:
    """quality/quarantine.jsonl (ids + reasons), gx_result.json, summary.json and summary.md in the run
    folder (anything with ``write_json``/``write_jsonl``/``file`` and ``url``). Returns name → path."""
    folder.write_jsonl(QUALITY_QUARANTINE, result.quarantine_rows())
    folder.write_jsonl(QUALITY_FIELD_ISSUES, result.field_issue_rows())
    folder.write_json(QUALITY_GX_RESULT, result.quality.gx_result)
    summary = result.quality.summary()
    summary["batch"] = result.batch
    summary["ok"] = result.ok
    summary["counts"] = result.counts()
    base = str(getattr(folder, "url", "")).rstrip("/")
    paths = {
        "summary": f"{base}/{QUALITY_SUMMARY}",
        "gx_result": f"{base}/{QUALITY_GX_RESULT}",
        "quarantine": f"{base}/{QUALITY_QUARANTINE}",
        "field_issues": f"{base}/{QUALITY_FIELD_ISSUES}",
    }
    summary["files"] = paths
    folder.write_json(QUALITY_SUMMARY_JSON, summary)
    text = summary_markdown(
        summary, quarantined=result.counts().get(LeadState.QUARANTINED.value, 0), files=list(paths.values())
    )
    with folder.file(QUALITY_SUMMARY).open("w", encoding="utf-8") as fh:
        fh.write(text)
    return paths
