"""The data quality page of a run folder (``quality/summary.md``), from :meth:`QualityResult.summary`.

Counts per check, field and reason, the batch checks and the field policies; the applicant ids with their
reasons live in the JSONL file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def summary_markdown(summary: Mapping[str, Any], *, quarantined: int | None = None, files: Sequence[str] = ()) -> str:
    """A short human-readable page for the run folder (ids and reasons only live in the JSONL file)."""
    lines = ["# Data quality of this extract", ""]
    lines.append(f"- rows: {summary['rows']}, invalid: {summary['invalid_rows']} ({summary['invalid_fraction']:.1%})")
    if quarantined is not None:
        lines.append(f"- quarantined in this run (quality and mapping): {quarantined}")
    lines.append(f"- full extract: {'yes' if summary.get('full_extract') else 'no'}")
    lines.append(f"- result: {'passed' if summary['ok'] else 'FAILED: the run stopped before any write'}")
    gx = summary.get("gx") or {}
    lines.append(
        f"- Great Expectations: {gx.get('successful_expectations')} of {gx.get('evaluated_expectations')} "
        "expectations met"
    )
    lines += ["", "## Batch checks", "", "| check | ok | detail |", "|---|---|---|"]
    lines += [f"| {b['check']} | {'yes' if b['ok'] else 'NO'} | {b['detail']} |" for b in summary["batch"]]
    lines += ["", "## Failing rows by check", ""]
    if summary["checks"]:
        lines += ["| check | rows |", "|---|---|"]
        lines += [f"| {reason} | {count} |" for reason, count in summary["checks"].items()]
    else:
        lines.append("none")
    lines += [
        "",
        "## Field issues (per field and reason; the applicant is still sent unless the policy quarantines)",
        "",
    ]
    field_issues = summary.get("field_issues") or {}
    if field_issues:
        policies = summary.get("field_policy") or {}
        lines += ["| field | reason | rows | policy |", "|---|---|---|---|"]
        for name, per_code in field_issues.items():
            lines += [
                f"| {name} | {code} | {count} | {policies.get(name, 'drop')} |" for code, count in per_code.items()
            ]
    else:
        lines.append("none")
    if files:
        lines += ["", "## Files", ""] + [f"- {f}" for f in files]
    return "\n".join(lines) + "\n"
