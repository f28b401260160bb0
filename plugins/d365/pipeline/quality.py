"""Data quality of an extract with Great Expectations 1.x: row-level checks → quarantine, batch-level → stop.

``validate_applicants(records, settings=..., schema=...)`` takes the normalised applicants of one extract
(``records.ApplicantRecord``; anything else in the list is tolerated and reported, never raised on) and
returns a :class:`QualityResult`: the failing checks per row, the batch-level failures and the GX
validation result as JSON. Airflow-free; Great Expectations is imported inside the function (3+ s), never
at DAG parse time.

How (fast and private):

1. pandas derives one boolean column per row-level check from the raw fields. Per-value work (e-mail
   syntax, phone parsing, dates) runs **once per unique value** (``pd.factorize``); e-mail addresses in a
   plain ASCII dot-atom form are accepted by a vectorised (pyarrow RE2) pre-screen that accepts only
   addresses email-validator accepts too (a test checks the subset); everything else goes to
   email-validator.
2. GX validates the *derived* frame (row number, applicant id, the boolean columns) in an ephemeral context:
   ``ExpectColumnValuesToNotBeNull`` / ``ToBeUnique`` on the applicant id, ``ToBeInSet([True])`` on each
   check column, ``ExpectTableRowCountToBeBetween`` for the batch counts. Result format ``COMPLETE`` with
   ``unexpected_index_column_names`` gives every failing row; the quarantine is built from GX's
   ``unexpected_index_list``. GX never sees a name, e-mail or phone, so its result JSON holds only row
   numbers, applicant ids and booleans.
3. A GX result with ``exception_info`` (a metric that could not be computed) is a batch failure: it is
   never read as "no bad rows".

Row-level checks (the reason names the field and the check, never the value):

===================  =========================================================================
reason               fails when
===================  =========================================================================
record               the item is not an applicant record (not a JSON object)
applicant_id         missing, not a positive integer (or digit string) or above 2^63-1
applicant_id unique  the id appears in more than one row: **every** row of that id is quarantined
                     (which of them is current cannot be told; the next change re-sends it)
<field>: not text    a text field (names, e-mail, phone, citizenship, ...) holds a non-string
email                not valid syntax for email-validator (``check_deliverability=False``);
                     missing only when ``quality.quarantine_missing_email``
phone                neither empty nor a number phonenumbers accepts: valid with the citizenship
                     as default region, or typed internationally (+ / 00) with a possible length
                     (the same rule the mapping uses to write E.164)
citizenship          neither empty nor an ISO 3166-1 alpha-2 code (pycountry; ``XK`` allowed)
name                 no given and no family name
registered           present but not an ISO 8601 date/time from 1753 on (Dataverse's range)
applications         not a list of objects, or a created/submitted date present but unparseable
<column>: too long   the value of a column whose fit policy is ``quarantine`` (e-mail: 100)
                     is longer than the column; truncation-policy columns pass
===================  =========================================================================

Batch-level (``settings.quality``): a full extract's row count against DreamApply's ``X-Count``, a full
extract against the previous full extract (``max_drop_fraction``), and the invalid fraction.
"""

from __future__ import annotations

import logging
import math
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import phonenumbers
import pycountry
from email_validator import EmailNotValidError, validate_email

from d365.pipeline.fit import MIN_DATETIME_YEAR, TEXT_TYPES, AttributeSpec, utf16_len
from d365.pipeline.lead_stage import parse_instant
from d365.pipeline.mapping import _EXTRA_COUNTRIES, _PHONE_SHAPE
from d365.pipeline.settings import QualitySettings, Settings

log = logging.getLogger(__name__)

TEXT_FIELDS = (
    "type",
    "registered",
    "name_full",
    "name_given",
    "name_middle",
    "name_family",
    "email",
    "phone",
    "citizenship",
    "reference",
    "matriculation",
)
# source field → record key, for the length checks of quarantine-policy columns
SOURCE_KEYS = {
    "applicant.type": "type",
    "applicant.name.full": "name_full",
    "applicant.name.given": "name_given",
    "applicant.name.middle": "name_middle",
    "applicant.name.family": "name_family",
    "applicant.email": "email",
    "applicant.reference": "reference",
    "applicant.matriculation": "matriculation",
}
APPLICATION_DATES = ("created", "submitted")
MAX_ID = 2**63 - 1
ROW = "row"
APPLICANT_ID = "applicant_id"

# email-validator's special-use names (arpa, invalid, local, localhost, onion, test) go the slow way
_SPECIAL_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# An ASCII dot-atom local part @ LDH labels . alphabetic TLD: a subset of what email-validator accepts
# (with the length, "--" and special-use checks below). Anything else is asked of email-validator.
FAST_EMAIL = rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}"


@dataclass(frozen=True)
class Check:
    """One row-level check: a boolean column of the derived frame (True = passes)."""

    column: str
    reason: str  # names the field and the check, never a value
    identity: bool = False  # record / id checks: decided before consent (see triage)


RECORD = Check("chk_record", "record: not an applicant record", identity=True)
ID_PRESENT = Check("chk_applicant_id", "applicant_id: missing or not a positive integer", identity=True)
ID_UNIQUE = Check("chk_applicant_id_unique", "applicant_id: duplicate (every row of the id quarantined)", True)
EMAIL = Check("chk_email", "email: invalid syntax")
EMAIL_MISSING = Check("chk_email_present", "email: missing")
PHONE = Check("chk_phone", "phone: not parseable to E.164")
CITIZENSHIP = Check("chk_citizenship", "citizenship: not an ISO 3166-1 alpha-2 code")
NAME = Check("chk_name", "name: no given or family name")
REGISTERED = Check("chk_registered", "registered: not an ISO 8601 date/time from 1753 on")
APPLICATIONS = Check("chk_applications", "applications: not a list of application records")
APPLICATION_DATES_CHECK = Check("chk_application_dates", "applications: created/submitted date not parseable")


# One column for the type checks of every text field: "" when all are text, else the failing field names
# ("email,name_given"): GX's unexpected list then names the fields (never a value) with one expectation.
TEXT = Check("chk_text", "<field>: not text")


def type_check(key: str) -> Check:
    return Check(TEXT.column, f"{key}: not text")


def _length_check(attribute: str, key: str, limit: int) -> Check:
    return Check(f"chk_len_{attribute}", f"{attribute} ({key}): longer than the column ({limit})")


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
# per-value checks (called once per unique value)
# --------------------------------------------------------------------------------------------------


def email_valid(text: str) -> bool:
    try:
        validate_email(text, check_deliverability=False)
    except (EmailNotValidError, ValueError, TypeError, UnicodeError):
        return False
    return True


def fast_email_ok(series: pd.Series) -> np.ndarray:
    """True where the (trimmed, str-typed) address is in the plain ASCII form email-validator accepts."""
    s = series.astype("str")
    match = s.str.fullmatch(FAST_EMAIL).fillna(False).to_numpy(dtype=bool)
    if not match.any():
        return match
    at = s.str.rfind("@").to_numpy(dtype="float64", na_value=-1)
    length = s.str.len().to_numpy(dtype="float64", na_value=0)
    tld = s.str.rsplit(".", n=1).str[-1].str.lower()
    special = tld.isin(_SPECIAL_TLDS).to_numpy(dtype=bool)
    # email-validator rejects labels with "--" in positions 3-4 unless they are valid IDNA: ask it instead
    dashes = s.str.contains("--", regex=False).fillna(False).to_numpy(dtype=bool)
    return match & (at <= 64) & (length <= 254) & ~special & ~dashes


def alpha2_ok(text: str) -> bool:
    code = text.strip().upper()
    return len(code) == 2 and (code in _EXTRA_COUNTRIES or pycountry.countries.get(alpha_2=code) is not None)


def phone_ok(text: str, region: str | None) -> bool:
    """The mapping's rule for writing E.164: valid for the region, or international (+/00) and possible."""
    if not _PHONE_SHAPE.fullmatch(text):
        return False
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return False
    if phonenumbers.is_valid_number(number):
        return True
    return text.lstrip().startswith(("+", "00")) and phonenumbers.is_possible_number(number)


def instant_ok(text: str) -> bool:
    dt = parse_instant(text)
    return dt is not None and dt.year >= MIN_DATETIME_YEAR


def date_ok(value: Any) -> bool:
    return parse_instant(value) is not None


def _per_unique(values: pd.Series, fn: Callable[[Any], bool], *, missing: bool = True) -> np.ndarray:
    """``fn`` once per distinct non-null value, spread back over the rows; null rows get ``missing``."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    out = np.full(len(values), missing, dtype=bool)
    if len(uniques):
        results = np.fromiter((fn(u) for u in uniques), dtype=bool, count=len(uniques))
        known = codes >= 0
        out[known] = results[codes[known]]
    return out


def _utf8(text: str | None) -> str | None:
    """Lone surrogates (not encodable as UTF-8) → NUL, so Arrow can hold the text and no check reads it as
    valid (an e-mail, phone, code or date with a NUL fails; a name stays present)."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\x00" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
    return text


def text_series(values: list[Any]) -> pd.Series:
    """Texts (or None) as an Arrow-backed ``str`` series (vectorised string methods run in C)."""
    try:
        return pd.Series(values, dtype="str")
    except UnicodeEncodeError:
        return pd.Series([_utf8(v) for v in values], dtype="str")


def _int_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 < value <= MAX_ID else None
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) < 19:
            number = int(text)
            return number if number > 0 else None
    return None


def length_checks(settings: Settings, schema: Mapping[str, AttributeSpec]) -> list[tuple[Check, str, int]]:
    """(check, record key, limit) for text columns fed straight from an applicant field whose too-long
    policy is ``quarantine``. Truncation-policy columns are not checked: the mapping cuts them."""
    out: list[tuple[Check, str, int]] = []
    for attribute, entry in settings.data_mapping.items():
        spec = schema.get(attribute)
        key = SOURCE_KEYS.get(entry.source or "")
        if spec is None or key is None or entry.form != "source" or entry.value_map is not None:
            continue
        if spec.type not in TEXT_TYPES or not spec.max_length:
            continue
        if settings.too_long_policy(attribute) == "quarantine":
            out.append((_length_check(attribute, key, spec.max_length), key, spec.max_length))
    return out


# --------------------------------------------------------------------------------------------------
# the derived frame
# --------------------------------------------------------------------------------------------------


def derive_frame(
    records: Sequence[Any], settings: Settings, schema: Mapping[str, AttributeSpec]
) -> tuple[pd.DataFrame, list[Check]]:
    """One row per record: ``row``, ``applicant_id`` (nullable) and one boolean column per check."""
    n = len(records)
    q: QualitySettings = settings.quality
    is_map = np.fromiter((isinstance(r, Mapping) for r in records), dtype=bool, count=n)
    cols: dict[str, Any] = {ROW: np.arange(n, dtype="int64")}
    ids = [_int_id(r.get("applicant_id")) if isinstance(r, Mapping) else None for r in records]
    cols[APPLICANT_ID] = pd.array(ids, dtype="Int64")
    checks: list[Check] = [RECORD, ID_PRESENT, ID_UNIQUE]
    cols[RECORD.column] = is_map

    raw = {k: [r.get(k) if isinstance(r, Mapping) else None for r in records] for k in TEXT_FIELDS}
    text: dict[str, pd.Series] = {}
    not_text: dict[str, np.ndarray] = {}
    for key in TEXT_FIELDS:
        values = raw[key]
        not_text[key] = np.fromiter((not (v is None or isinstance(v, str)) for v in values), dtype=bool, count=n)
        series = text_series([v if isinstance(v, str) else None for v in values]).str.strip()
        text[key] = series.where(series.str.len() > 0)  # empty and blank → missing
    wrong = np.zeros(n, dtype=object)
    wrong[:] = ""
    for i in np.flatnonzero(np.logical_or.reduce([not_text[k] for k in TEXT_FIELDS])) if n else ():
        wrong[i] = ",".join(k for k in TEXT_FIELDS if not_text[k][i])
    checks.append(TEXT)
    cols[TEXT.column] = pd.Series(wrong, dtype="str")

    # e-mail: a vectorised pre-screen, then email-validator once per remaining distinct value
    email = text["email"]
    present = email.notna().to_numpy()
    fast = fast_email_ok(email)
    slow = present & ~fast
    email_ok = np.ones(n, dtype=bool)
    if slow.any():
        email_ok[slow] = _per_unique(email[slow], email_valid)
    checks.append(EMAIL)
    cols[EMAIL.column] = email_ok
    if q.quarantine_missing_email:
        checks.append(EMAIL_MISSING)
        cols[EMAIL_MISSING.column] = present | ~is_map

    # citizenship: strict alpha-2; it is also the phone's default region
    citizenship = text["citizenship"]
    cit_ok = _per_unique(citizenship, alpha2_ok)
    checks.append(CITIZENSHIP)
    cols[CITIZENSHIP.column] = cit_ok
    region = citizenship.str.upper().where(pd.Series(cit_ok) & citizenship.notna().to_numpy())
    region = region.where(~region.isin(list(_EXTRA_COUNTRIES)))

    phone = text["phone"]
    has_phone = phone.notna().to_numpy()
    phone_good = np.ones(n, dtype=bool)
    if has_phone.any():
        key = (region.fillna("").astype("str") + "\x1f" + phone.fillna("").astype("str"))[has_phone]

        def _phone(k: str) -> bool:
            reg, _, number = k.partition("\x1f")
            return phone_ok(number, reg or None)

        phone_good[has_phone] = _per_unique(key, _phone)
    checks.append(PHONE)
    cols[PHONE.column] = phone_good

    has_name = (text["name_given"].notna() | text["name_family"].notna()).to_numpy()
    checks.append(NAME)
    cols[NAME.column] = has_name | ~is_map

    checks.append(REGISTERED)
    cols[REGISTERED.column] = _per_unique(text["registered"], instant_ok)

    apps_ok = np.ones(n, dtype=bool)
    dates_ok = np.ones(n, dtype=bool)
    date_rows: list[int] = []
    date_values: list[Any] = []
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            continue
        apps = record.get("applications")
        if apps is None:
            continue
        if not isinstance(apps, list) or not all(isinstance(a, Mapping) for a in apps):
            apps_ok[i] = False
            continue
        for app in apps:
            for name in APPLICATION_DATES:
                value = app.get(name)
                if value is not None:
                    date_rows.append(i)
                    date_values.append(value if isinstance(value, str) else repr(type(value)))
    if date_values:
        good = _per_unique(text_series(date_values), date_ok)
        bad_rows = np.asarray(date_rows, dtype="int64")[~good]
        dates_ok[bad_rows] = False
    checks += [APPLICATIONS, APPLICATION_DATES_CHECK]
    cols[APPLICATIONS.column] = apps_ok
    cols[APPLICATION_DATES_CHECK.column] = dates_ok

    for check, key, limit in length_checks(settings, schema):
        series = text[key]
        chars = series.str.len().to_numpy(dtype="float64", na_value=0)
        too_long = chars > limit  # UTF-16 units ≥ code points
        maybe = (chars * 2 > limit) & ~too_long  # astral characters count twice: measure exactly
        if maybe.any():
            too_long[maybe] = ~_per_unique(
                series[maybe], lambda t, lim=limit: utf16_len(unicodedata.normalize("NFC", t)) <= lim
            )
        checks.append(check)
        cols[check.column] = ~too_long
    return pd.DataFrame(cols), checks


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
        allowed = [""] if column == TEXT.column else [True]
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
    definition = _definition(columns, tuple(row_counts))
    return definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW, APPLICANT_ID]},
    )


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
            elif check is TEXT:
                expected = (frame[TEXT.column] != "").to_numpy()
            else:
                expected = ~frame[check.column].to_numpy(dtype=bool)
            if sorted(rows) != np.flatnonzero(expected).tolist():
                errors.append(f"{config.type} ({name}): GX and the derived column disagree on the failing rows")
                continue
            for row, item in zip(rows, items, strict=True):
                if check is ID_PRESENT and not frame[RECORD.column].iat[row]:
                    continue  # a non-record is reported once, as "record"
                found = [check]
                if check is TEXT:  # the value GX lists is the field names
                    fields = str(item.get(TEXT.column) if isinstance(item, Mapping) else frame[TEXT.column].iat[row])
                    found = [type_check(f) for f in fields.split(",") if f]
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
        applicant_ids=[None if pd.isna(v) else int(v) for v in frame[APPLICANT_ID]],
        full_extract=full_extract,
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
    if files:
        lines += ["", "## Files", ""] + [f"- {f}" for f in files]
    return "\n".join(lines) + "\n"
