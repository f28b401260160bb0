"""Data quality of an extract with Great Expectations 1.x: record checks, field checks, identity, batch limits.

``validate_applicants(records, settings=..., schema=...)`` takes the normalised applicants of one extract
(``records.ApplicantRecord``; anything else in the list is tolerated and reported, never raised on) and
returns a :class:`QualityResult`: the failing checks per row, what each one causes (the field policy), the
batch-level failures and the GX validation result as JSON. Airflow-free; Great Expectations is imported
inside the function (3+ s), never at DAG parse time.

How (fast and private):

1. pandas derives one column per row-level check (:mod:`d365.pipeline.quality_frame`): vectorised
   pre-screens decide the common forms exactly, the rest runs once per unique value; the phones, most of
   the time on a large extract, run on a second process when the machine has a core for it
   (:mod:`d365.pipeline.quality_parallel`).
2. GX validates the *derived* frame (row number, applicant id, the check columns) in an ephemeral context:
   ``ExpectColumnValuesToNotBeNull`` / ``ToBeUnique`` on the applicant id, ``ToBeInSet`` on each check
   column, ``ExpectTableRowCountToBeBetween`` for the batch counts. Result format ``COMPLETE`` with
   ``unexpected_index_column_names`` gives every failing row; the failures are built from GX's
   ``unexpected_index_list``. GX never sees a name, e-mail or phone: its result JSON holds only row
   numbers, applicant ids, booleans and field names.
3. A GX result with ``exception_info`` (a metric that could not be computed) is a batch failure: it is
   never read as "no bad rows".

Batch-level (``settings.quality``): a full extract's row count against DreamApply's ``X-Count``, a full
extract against the previous full extract (``max_drop_fraction``), and the invalid fraction (rows with any
failing check, whatever it causes: a broken extract stops the run before it can clear good values).

The checks, their kinds and reasons and what a failure causes: :mod:`d365.pipeline.quality_checks`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from d365.pipeline.fit import AttributeSpec
from d365.pipeline.quality_checks import (
    APPLICANT_ID,
    APPLICATION_DATES_CHECK,
    CITIZENSHIP,
    EMAIL,
    ENCODING,
    ID_PRESENT,
    ID_UNIQUE,
    IDENTITY,
    LIST_CHECKS,
    MALFORMED,
    PHONE,
    RECORD,
    REGISTERED,
    ROW,
    SOURCE_KEYS,
    TEXT,
    TEXT_FIELDS,
    Action,
    Check,
    FieldIssue,
    effective_action,
    email_valid,
    encoding_check,
    fast_email_ok,
    identity_check,
    length_checks,
    malformed_check,
    type_check,
    wrong_encoding,
)
from d365.pipeline.quality_frame import derive_frame
from d365.pipeline.quality_summary import summary_markdown
from d365.pipeline.settings import QUALITY_FIELDS, QualitySettings, Settings

# the public names, those of quality_checks and quality_frame included (importers keep reading them from here)
__all__ = [
    "APPLICATION_DATES_CHECK",
    "CITIZENSHIP",
    "EMAIL",
    "ENCODING",
    "ID_PRESENT",
    "ID_UNIQUE",
    "PHONE",
    "REGISTERED",
    "SOURCE_KEYS",
    "TEXT_FIELDS",
    "Action",
    "Check",
    "FieldIssue",
    "QualityResult",
    "derive_frame",
    "effective_action",
    "email_valid",
    "fast_email_ok",
    "invalid_fraction_check",
    "length_checks",
    "run_gx",
    "summary_markdown",
    "validate_applicants",
    "wrong_encoding",
]

log = logging.getLogger(__name__)
GX_LOGGER = "great_expectations"


@contextmanager
def quiet_gx(level: int = logging.WARNING) -> Iterator[None]:
    """Great Expectations logs hundreds of registration lines at import and context set-up (INFO/DEBUG); they
    bury the task's own lines. Its loggers (some set their own level, e.g. INFO) are held at ``level`` while it
    runs and restored after; its results stay in the run files."""
    held: dict[str, int] = {}

    def hold() -> None:
        for name, logger in list(logging.root.manager.loggerDict.items()):
            in_gx = name == GX_LOGGER or name.startswith(GX_LOGGER + ".")
            if in_gx and isinstance(logger, logging.Logger) and name not in held and logger.level < level:
                held[name] = logger.level
                logger.setLevel(level)

    logging.getLogger(GX_LOGGER)  # exists before the import, so the import's own lines are held too
    hold()
    try:
        import great_expectations  # noqa: F401  (its modules create their loggers, some with a level of their own)

        hold()
        yield
    finally:
        for name, before in held.items():
            logging.getLogger(name).setLevel(before)


@dataclass
class QualityResult:
    rows: int
    failures: dict[int, list[Check]]  # row position → failing checks (rows that pass are absent)
    batch: list[dict[str, Any]]  # batch-level checks: {"check", "ok", "detail"}
    gx_result: dict[str, Any]  # the GX ExpectationSuiteValidationResult as JSON
    check_counts: dict[str, int]  # reason → failing rows
    applicant_ids: list[int | None]  # per row, as the id check read it
    full_extract: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    policies: dict[str, Action] = field(default_factory=dict)  # field → quality.field_policy (all fields)

    @property
    def invalid_rows(self) -> int:
        return len(self.failures)

    @property
    def invalid_fraction(self) -> float:
        return self.invalid_rows / self.rows if self.rows else 0.0

    @property
    def batch_failures(self) -> list[str]:
        return [f"{b['check']}: {b['detail']}" for b in self.batch if not b["ok"]]

    @property
    def ok(self) -> bool:
        return not self.batch_failures

    def reasons(self, row: int) -> list[str]:
        return [c.reason for c in self.failures.get(row, ())]

    def action(self, check: Check) -> Action:
        """What this failed check causes: quarantine for record and identity checks, else the field policy."""
        if check.kind != "field" or check.field is None:
            return "quarantine"
        return effective_action(check, self.policies.get(check.field, "drop"))

    def record_reasons(self, row: int) -> list[str]:
        """Reasons that withhold the row before consent: it cannot be named or trusted."""
        return [c.reason for c in self.failures.get(row, ()) if c.kind == "record"]

    def withheld_reasons(self, row: int) -> list[str]:
        """Reasons that withhold a consenting row: the identity rule and field checks whose policy quarantines."""
        return [c.reason for c in self.failures.get(row, ()) if c.kind != "record" and self.action(c) == "quarantine"]

    def field_issues(self, row: int) -> list[FieldIssue]:
        """Every failed field check of the row with what it causes (reasons name the field, never a value)."""
        return [
            FieldIssue(c.field, c.code, c.reason, self.action(c))
            for c in self.failures.get(row, ())
            if c.kind == "field" and c.field is not None
        ]

    def field_actions(self, row: int) -> dict[str, Action]:
        """field → ``drop`` / ``send_as_entered`` for the row's invalid values the mapping must handle
        (drop wins over send_as_entered when a field fails two checks)."""
        out: dict[str, Action] = {}
        for issue in self.field_issues(row):
            if issue.action == "quarantine":
                continue
            if out.get(issue.field) != "drop":
                out[issue.field] = issue.action
        return out

    def field_issue_counts(self) -> dict[str, dict[str, int]]:
        """field → reason code → rows (every row, whatever its consent or final state)."""
        counts: dict[str, dict[str, int]] = {}
        for row in self.failures:
            seen: set[tuple[str, str]] = set()
            for issue in self.field_issues(row):
                if (issue.field, issue.code) not in seen:
                    seen.add((issue.field, issue.code))
                    per = counts.setdefault(issue.field, {})
                    per[issue.code] = per.get(issue.code, 0) + 1
        return {f: dict(sorted(c.items())) for f, c in sorted(counts.items())}

    def add_batch(self, check: str, ok: bool, detail: str) -> None:
        self.batch.append({"check": check, "ok": bool(ok), "detail": detail})

    def summary(self) -> dict[str, Any]:
        stats = self.gx_result.get("statistics") or {}
        return {
            "rows": self.rows,
            "invalid_rows": self.invalid_rows,
            "invalid_fraction": round(self.invalid_fraction, 6),
            "full_extract": self.full_extract,
            "checks": dict(sorted(self.check_counts.items())),
            "field_issues": self.field_issue_counts(),
            "field_policy": dict(sorted(self.policies.items())),
            "batch": self.batch,
            "ok": self.ok,
            "gx": {
                "success": self.gx_result.get("success"),
                "evaluated_expectations": stats.get("evaluated_expectations"),
                "successful_expectations": stats.get("successful_expectations"),
                "unsuccessful_expectations": stats.get("unsuccessful_expectations"),
            },
            "seconds": {k: round(v, 3) for k, v in self.timings.items()},
        }


# --------------------------------------------------------------------------------------------------
# Great Expectations
# --------------------------------------------------------------------------------------------------


def _exception(result: Any) -> str | None:
    """The message of a result's exception_info (either shape GX uses), or None."""
    info = getattr(result, "exception_info", None) or {}
    if not isinstance(info, Mapping):
        return None
    items = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, Mapping)]
    for item in items:
        if item.get("raised_exception"):
            return str(item.get("exception_message") or "unknown error")[:300]
    return None


_LIST_COLUMNS = frozenset(c.column for c in LIST_CHECKS)
_DEFINITIONS: dict[tuple[Any, ...], Any] = {}  # suite signature → ValidationDefinition (per process)


def _definition(columns: tuple[str, ...], row_counts: tuple[tuple[str, int | None, int | None], ...]) -> Any:
    """An ephemeral context with the suite for these check columns and row-count limits, built once per
    process and signature (building a suite costs more than validating 100 000 rows with it)."""
    key = (columns, row_counts)
    found = _DEFINITIONS.get(key)
    if found is not None:
        return found
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        ctx.data_sources.add_pandas("dreamapply")
        .add_dataframe_asset("applicants")
        .add_batch_definition_whole_dataframe("extract")
    )
    expectations: list[Any] = [
        gxe.ExpectColumnValuesToNotBeNull(column=APPLICANT_ID, meta={"check": ID_PRESENT.column}),
        gxe.ExpectColumnValuesToBeUnique(column=APPLICANT_ID, meta={"check": ID_UNIQUE.column}),
    ]
    for column in columns:
        allowed = [""] if column in _LIST_COLUMNS else [True]
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=allowed, meta={"check": column}))
    for name, low, high in row_counts:
        expectations.append(gxe.ExpectTableRowCountToBeBetween(min_value=low, max_value=high, meta={"check": name}))
    suite = ctx.suites.add(gx.ExpectationSuite(name="dreamapply_applicants", expectations=expectations))
    definition = ctx.validation_definitions.add(
        gx.ValidationDefinition(name="dreamapply_applicants", data=batch, suite=suite)
    )
    if len(_DEFINITIONS) >= 8:
        _DEFINITIONS.clear()
    _DEFINITIONS[key] = definition
    return definition


def run_gx(
    frame: pd.DataFrame, checks: Sequence[Check], row_counts: Sequence[tuple[str, int | None, int | None]] = ()
) -> Any:
    """Validate the derived frame (COMPLETE results, failing rows named by ``row`` and ``applicant_id``);
    ``row_counts``: ``(name, min, max)`` table checks."""
    columns = tuple(c.column for c in checks if c not in (ID_PRESENT, ID_UNIQUE))
    with quiet_gx():
        definition = _definition(columns, tuple(row_counts))
        return definition.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW, APPLICANT_ID]},
        )


def _list_checks(check: Check, listed: str, q: QualitySettings) -> list[Check]:
    """The checks one value of a list column stands for."""
    if check is MALFORMED:
        return [malformed_check(listed)]
    if check is IDENTITY:
        groups = q.identity_groups()
        return [identity_check(groups[int(i)]) for i in listed.split(",") if i.isdigit() and int(i) < len(groups)]
    make = type_check if check is TEXT else encoding_check
    return [make(f) for f in listed.split(",") if f]


def _rows_of(items: Sequence[Any]) -> list[int]:
    return [int(item[ROW]) if isinstance(item, Mapping) else int(item) for item in items]


def validate_applicants(
    records: Sequence[Any],
    *,
    settings: Settings,
    schema: Mapping[str, AttributeSpec],
    api_count: int | None = None,
    previous_full_count: int | None = None,
    full_extract: bool = False,
) -> QualityResult:
    """Row- and batch-level checks of one extract. Never raises on data. An expectation GX could not
    evaluate (``exception_info``) is a failed batch check ("great_expectations"), never "no bad rows";
    an error of GX itself (import, context) propagates and fails the task."""
    q = settings.quality
    started = time.perf_counter()
    records = list(records)
    frame, checks = derive_frame(records, settings, schema)
    derived = time.perf_counter()

    n = len(records)
    row_counts: list[tuple[str, int | None, int | None]] = []
    if full_extract and q.check_api_count and api_count is not None:
        slack = math.ceil(q.api_count_tolerance * api_count)
        row_counts.append(("row_count_vs_api", max(api_count - slack, 0), api_count + slack))
    if full_extract and previous_full_count:
        row_counts.append(
            ("row_count_vs_previous_full", math.ceil(previous_full_count * (1 - q.max_drop_fraction)), None)
        )
    gx_result = run_gx(frame, checks, row_counts)
    validated = time.perf_counter()

    by_column = {c.column: c for c in checks}
    failures: dict[int, list[Check]] = {}
    batch: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    errors: list[str] = []
    for res in gx_result.results:
        config = res.expectation_config
        name = (config.meta or {}).get("check") or config.kwargs.get("column") or config.type
        error = _exception(res)
        if error is not None:
            errors.append(f"{config.type} ({name}) could not be evaluated: {error}")
            continue
        if name in by_column:
            check = by_column[name]
            items = (res.result.get("unexpected_index_list") or []) if not res.success else []
            rows = _rows_of(items)
            if check is ID_PRESENT:
                expected = frame[APPLICANT_ID].isna().to_numpy()
            elif check is ID_UNIQUE:
                ids = frame[APPLICANT_ID]
                expected = (ids.duplicated(keep=False) & ids.notna()).to_numpy()
            elif check.column in _LIST_COLUMNS:
                expected = (frame[check.column] != "").to_numpy()
            else:
                expected = ~frame[check.column].to_numpy(dtype=bool)
            if sorted(rows) != np.flatnonzero(expected).tolist():
                errors.append(f"{config.type} ({name}): GX and the derived column disagree on the failing rows")
                continue
            for row, item in zip(rows, items, strict=True):
                if check is ID_PRESENT and not frame[RECORD.column].iat[row]:
                    continue  # a non-record is reported once, as "record"
                found = [check]
                if check.column in _LIST_COLUMNS:  # the value GX lists: field names, group numbers or notes
                    listed = item.get(check.column) if isinstance(item, Mapping) else None
                    found = _list_checks(check, str(listed if listed is not None else frame[check.column].iat[row]), q)
                for c in found:
                    failures.setdefault(row, []).append(c)
                    counts[c.reason] = counts.get(c.reason, 0) + 1
        else:
            observed = res.result.get("observed_value")
            low, high = config.kwargs.get("min_value"), config.kwargs.get("max_value")
            limits = f"{low if low is not None else 0}..{high if high is not None else 'any'}"
            batch.append({"check": name, "ok": bool(res.success), "detail": f"{observed} rows, expected {limits}"})
    for error in errors:
        batch.append({"check": "great_expectations", "ok": False, "detail": error})

    result = QualityResult(
        rows=n,
        failures=failures,
        batch=batch,
        gx_result=gx_result.to_json_dict(),
        check_counts=counts,
        applicant_ids=frame[APPLICANT_ID].to_numpy(dtype=object, na_value=None).tolist(),
        full_extract=full_extract,
        policies={name: q.policy(name) for name in QUALITY_FIELDS},
    )
    result.add_batch(*invalid_fraction_check(result.invalid_rows, n, q))
    result.timings = {"derive": derived - started, "gx": validated - derived, "total": time.perf_counter() - started}
    log.info(
        "quality: %d rows, %d invalid (%.1f%%), batch %s in %.2fs",
        n,
        result.invalid_rows,
        100 * result.invalid_fraction,
        "ok" if result.ok else "FAILED",
        result.timings["total"],
    )
    return result


def invalid_fraction_check(invalid: int, rows: int, q: QualitySettings) -> tuple[str, bool, str]:
    """("invalid_fraction", ok, detail): more than ``max_invalid_fraction`` invalid from ``min_rows_for_threshold``
    rows on fails the batch."""
    fraction = invalid / rows if rows else 0.0
    applies = rows >= q.min_rows_for_threshold
    ok = not applies or fraction <= q.max_invalid_fraction
    detail = f"{invalid} of {rows} rows invalid ({fraction:.1%}), limit {q.max_invalid_fraction:.1%}"
    if not applies:
        detail += f" (not applied below {q.min_rows_for_threshold} rows)"
    return "invalid_fraction", ok, detail
