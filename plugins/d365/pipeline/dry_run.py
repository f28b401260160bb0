"""A dry run's plan summary: what a sync would write, with nothing written.

The ``dry_run`` DAG param runs preflight, extract, transform and plan as usual (reads only: the ledger
and Dynamics are asked, never changed), then the load and the commit are skipped. The plan adds no
picklist option (``plan_step`` lists them as ``would_add``), so Dynamics, the ledger and the cursors stay
as they were. The summary (``plan/dry_run.json``, the report and the run note) holds counts per action,
created leads per owner, and the picklist options that would be added; applicant IDs only, no personal data.
The owner of each create is read from its planned request (the ``ownerid@odata.bind`` the load would send),
labelled with the settings entry it came from (``owner_rules[i]``, the contact owner) as preflight resolved them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from d365.pipeline.owners import OwnerIds
from d365.pipeline.plan import CREATE, UPDATE, WRITES, Operation, summarize

SAMPLE = 20  # applicant IDs listed per action in the summary


def plan_summary(
    ops: Iterable[Operation],
    meta: Mapping[str, Any],
    owners: OwnerIds,
    estimate: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the plan would write: ``meta`` is ``plan/meta.json``, ``owners`` preflight's resolved owner ids,
    ``estimate`` the load-time estimate (``estimate.LoadEstimate.to_json`` plus its ``text``)."""
    ops = list(ops)

    def owner_label(owner_id: str | None) -> str:
        if owner_id is None:
            return "none"
        names = [f"rule {i}" for i, rid in enumerate(owners.rules) if rid == owner_id]
        if owner_id == owners.default:
            names.append("contact owner")
        return f"{owner_id} ({', '.join(names)})" if names else owner_id

    per_owner = Counter(owner_label(op.owner_id) for op in ops if op.action == CREATE)
    options = meta.get("picklist_options") or {}
    would_add = list(options.get("would_add") or [])
    return {
        "dry_run": True,
        "counts": summarize(ops),
        "writes": sum(1 for op in ops if op.action in WRITES),
        "creates_per_owner": dict(sorted(per_owner.items())),
        "picklist_options_would_add": would_add,
        "applicants": {
            action: sorted(op.applicant_id for op in ops if op.action == action)[:SAMPLE]
            for action in (CREATE, UPDATE, *sorted({op.action for op in ops} - {CREATE, UPDATE}))
            if any(op.action == action for op in ops)
        },
        "lookup_requests": meta.get("lookup_requests", 0),
        **({"load_estimate": dict(estimate)} if estimate else {}),
    }


def summary_text(summary: Mapping[str, Any]) -> str:
    counts = summary.get("counts") or {}
    lines = [
        "DRY RUN: nothing was written (no leads, no picklist options, ledger and cursors unchanged)",
        f"plan: {summary.get('writes', 0)} writes; "
        + (", ".join(f"{action} {n}" for action, n in sorted(counts.items())) or "nothing to do"),
    ]
    for owner, n in (summary.get("creates_per_owner") or {}).items():
        lines.append(f"  creates owned by {owner}: {n}")
    would_add = summary.get("picklist_options_would_add") or []
    if would_add:
        lines.append(
            "picklist options that would be added: " + ", ".join(f"{o['attribute']}={o['label']!r}" for o in would_add)
        )
    else:
        lines.append("picklist options that would be added: none")
    for action, ids in (summary.get("applicants") or {}).items():
        more = counts.get(action, len(ids)) - len(ids)
        lines.append(f"  {action}: applicants {', '.join(map(str, ids))}" + (f" (+{more} more)" if more > 0 else ""))
    estimate = summary.get("load_estimate") or {}
    if estimate.get("text"):
        lines.append(str(estimate["text"]))
    return "\n".join(lines)
