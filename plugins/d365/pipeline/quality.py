"""Data quality of an extract with Great Expectations 1.x: record checks, field checks, identity, batch limits.

``validate_applicants(records, settings=..., schema=...)`` takes the normalised applicants of one extract
(``records.ApplicantRecord``; anything else in the list is tolerated and reported, never raised on) and
returns a :class:`QualityResult`: the failing checks per row, what each one causes (the field policy), the
batch-level failures and the GX validation result as JSON. Airflow-free; Great Expectations is imported
inside the function (3+ s), never at DAG parse time.

How (fast and private):

1. pandas derives one column per row-level check from the raw fields. Per-value work (e-mail syntax, phone
   parsing, dates, wrong-encoding detection) runs **once per unique value** (``pd.factorize``); e-mail
   addresses in a plain ASCII dot-atom form are accepted by a vectorised (pyarrow RE2) pre-screen that
   accepts only addresses email-validator accepts too (a test checks the subset); everything else goes to
   email-validator.
2. GX validates the *derived* frame (row number, applicant id, the check columns) in an ephemeral context:
   ``ExpectColumnValuesToNotBeNull`` / ``ToBeUnique`` on the applicant id, ``ToBeInSet`` on each check
   column, ``ExpectTableRowCountToBeBetween`` for the batch counts. Result format ``COMPLETE`` with
   ``unexpected_index_column_names`` gives every failing row; the failures are built from GX's
   ``unexpected_index_list``. GX never sees a name, e-mail or phone: its result JSON holds only row
   numbers, applicant ids, booleans and field names.
3. A GX result with ``exception_info`` (a metric that could not be computed) is a batch failure: it is
   never read as "no bad rows".

Every check is one of three kinds (``Check.kind``), and only the kind decides what a failure causes:

- ``record`` — the row cannot be named or trusted: always quarantined, before consent (triage);
- ``identity`` — the identity rule (``quality.identity``): quarantined, after consent;
- ``field`` — one invalid value of one field (``settings.QUALITY_FIELDS``): follows
  ``quality.field_policy`` (:meth:`QualityResult.action`): ``drop`` (default: the column is left out on
  create and cleared on update), ``send_as_entered`` or ``quarantine``.

===================  ======  =================================================================
reason               kind    fails when
===================  ======  =================================================================
record               record  the item is not an applicant record (not a JSON object)
record: malformed    record  extract could not read the record's shape (``malformed``: a name
                             that is not an object, an id that is not an integer, applications,
                             consents, trackers, courses or offers of the wrong shape, ...)
applicant_id         record  missing, not a positive integer (or digit string) or above 2^63-1
applicant_id unique  record  the id appears in more than one row: **every** row of that id is
                             quarantined (which of them is current cannot be told)
applications         record  not a list of objects
identity             identity  no usable field in a group of ``quality.identity`` (default: a
                             family or full name, and an e-mail or a phone); usable = present and
                             no field check of it failed; ``quarantine_missing_email`` adds [email]
<field>: not text    field   a text field (names, e-mail, phone, citizenship, ...) holds a non-string
<field>: wrong       field   the text holds U+FFFD (the replacement character), a lone surrogate,
encoding                     or mojibake: a run of 2-4 characters that are exactly the cp1252 /
                             latin-1 reading of one UTF-8 multi-byte character ("Ã©" for "é",
                             "â€™" for "’"); see :func:`wrong_encoding`
email                field   not valid syntax for email-validator (``check_deliverability=False``)
phone                field   neither empty nor a number phonenumbers accepts: valid with the
                             citizenship's region, then ``quality.default_region``, or typed
                             internationally (+ / 00) with a possible length (``mapping.parse_phone``,
                             the rule the mapping writes E.164 with)
citizenship          field   neither empty nor a country ``mapping.country_code`` knows (ISO 3166-1
                             alpha-2 or alpha-3, English name; ``XK``)
registered           field   present but not an ISO 8601 date/time from 1753 on (Dataverse's range)
application_dates    field   an application's created/submitted/revised date present but unparseable
<column>: too long   field   the value of a column whose fit policy is ``quarantine`` (e-mail: 100)
                             is longer than the column: quarantined (fit_policy's explicit choice)
===================  ======  =================================================================

Batch-level (``settings.quality``): a full extract's row count against DreamApply's ``X-Count``, a full
extract against the previous full extract (``max_drop_fraction``), and the invalid fraction (rows with any
failing check, whatever it causes: a broken extract stops the run before it can clear good values).
"""

from __future__ import annotations

import logging
import math
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from email_validator import EmailNotValidError, validate_email

from d365.pipeline.fields import APPLICANT_FIELDS, checked_fields
from d365.pipeline.fit import MIN_DATETIME_YEAR, TEXT_TYPES, AttributeSpec, utf16_len
from d365.pipeline.lead_stage import parse_instant
from d365.pipeline.mapping import country_code, parse_phone, phone_regions
from d365.pipeline.settings import QUALITY_FIELDS, QualitySettings, Settings

log = logging.getLogger(__name__)

# record keys of the applicant fields the text checks (not text, wrong encoding) apply to
TEXT_FIELDS = checked_fields("text")
# source field → record key, for the length checks of quarantine-policy columns: the fields whose record
# value is sent as it is (kind text; phones, dates and countries are reformatted by the mapping)
SOURCE_KEYS = {f.name: f.record_key for f in APPLICANT_FIELDS if f.kind == "text" and f.record_key}
APPLICATION_DATES = ("created", "submitted", "revised")
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

Kind = Literal["record", "identity", "field"]
Action = Literal["drop", "send_as_entered", "quarantine"]


@dataclass(frozen=True)
class Check:
    """One row-level check: a column of the derived frame (True, or "" for the list columns, = passes)."""

    column: str
    reason: str  # names the field and the check, never a value
    kind: Kind = "field"
    field: str | None = None  # the QUALITY_FIELDS name a field check is about
    code: str = "invalid"  # invalid, not_text, wrong_encoding, too_long (field checks)

    @property
    def identity(self) -> bool:
        """Decided before consent (record-level): see triage."""
        return self.kind == "record"


RECORD = Check("chk_record", "record: not an applicant record", "record")
ID_PRESENT = Check("chk_applicant_id", "applicant_id: missing or not a positive integer", "record")
ID_UNIQUE = Check("chk_applicant_id_unique", "applicant_id: duplicate (every row of the id quarantined)", "record")
APPLICATIONS = Check("chk_applications", "applications: not a list of application records", "record")
EMAIL = Check("chk_email", "email: invalid syntax", field="email")
PHONE = Check("chk_phone", "phone: not parseable to E.164", field="phone")
CITIZENSHIP = Check("chk_citizenship", "citizenship: not a known country (ISO 3166-1)", field="citizenship")
REGISTERED = Check("chk_registered", "registered: not an ISO 8601 date/time from 1753 on", field="registered")
APPLICATION_DATES_CHECK = Check(
    "chk_application_dates",
    "application_dates: created/submitted/revised date not parseable",
    field="application_dates",
)

# List columns: "" when the row passes, else what failed (field names, group numbers, malformation notes),
# so GX's unexpected list names them (never a value) with one expectation each.
TEXT = Check("chk_text", "<field>: not text")
ENCODING = Check("chk_encoding", "<field>: wrong encoding")
MALFORMED = Check("chk_malformed", "record: malformed", "record")
IDENTITY = Check("chk_identity", "identity: no usable identity", "identity")
LIST_CHECKS = (TEXT, ENCODING, MALFORMED, IDENTITY)


def type_check(key: str) -> Check:
    return Check(TEXT.column, f"{key}: not text", field=key, code="not_text")


def encoding_check(key: str) -> Check:
    return Check(ENCODING.column, f"{key}: wrong encoding (U+FFFD or mojibake)", field=key, code="wrong_encoding")


def malformed_check(notes: str) -> Check:
    return Check(MALFORMED.column, f"record: malformed ({notes})", "record")


def identity_check(group: Sequence[str]) -> Check:
    return Check(IDENTITY.column, f"identity: no usable {' or '.join(group)}", "identity")


def _length_check(attribute: str, key: str, limit: int) -> Check:
    reason = f"{attribute} ({key}): longer than the column ({limit})"
    return Check(f"chk_len_{attribute}", reason, field=key, code="too_long")


@dataclass(frozen=True)
class FieldIssue:
    """A field check that failed for one row, and what it causes there."""

    field: str
    code: str
    reason: str
    action: Action

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "reason": self.reason, "action": self.action}


def effective_action(check: Check, policy: Action) -> Action:
    """What a failed field check does under the field's policy. Exceptions to the policy: a too-long value
    of a ``quarantine`` fit-policy column quarantines (fit_policy's explicit choice); text in a wrong
    encoding is never sent (``send_as_entered`` drops it); application dates are no column (dropped)."""
    if check.code == "too_long":
        return "quarantine"
    if policy == "send_as_entered" and (check.code == "wrong_encoding" or check.field == "application_dates"):
        return "drop"
    return policy


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


def citizenship_ok(text: str) -> bool:
    return country_code(text) is not None


def phone_ok(text: str, regions: Sequence[str | None] = (None,)) -> bool:
    """The mapping's rule for writing E.164 (``mapping.parse_phone``)."""
    return parse_phone(text, regions) is not None


def instant_ok(text: str) -> bool:
    dt = parse_instant(text)
    return dt is not None and dt.year >= MIN_DATETIME_YEAR


def date_ok(value: Any) -> bool:
    return parse_instant(value) is not None


# cp1252 characters for the bytes 0x80-0x9F (the others of 0x80-0xBF are the latin-1 characters U+0080-U+00BF)
_CP1252_HIGH = "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ"
_CONT = "[\u0080-\u00bf" + re.escape(_CP1252_HIGH) + "]"
# one UTF-8 multi-byte character read as cp1252/latin-1: a lead byte (C2-F4 as a character) + its continuations
_MOJIBAKE = re.compile(f"[\u00c2-\u00df]{_CONT}|[\u00e0-\u00ef]{_CONT}{{2}}|[\u00f0-\u00f4]{_CONT}{{3}}")


def _byte(ch: str) -> int:
    try:
        return ch.encode("cp1252")[0]
    except UnicodeEncodeError:
        return ord(ch)  # U+0080-U+00BF (and U+0081, U+008D, ... that cp1252 leaves undefined): latin-1


def wrong_encoding(text: str) -> bool:
    """True for text that was decoded with the wrong codec somewhere on its way. Conservative: U+FFFD (the
    replacement character a decoder puts for bytes it could not read), a lone surrogate, or a run of 2-4
    characters that is exactly the cp1252/latin-1 reading of one valid UTF-8 multi-byte character ("Ã©",
    "Ã¼", "â€™", "Ã…"); a lead character followed by letters ("Ãngel", "SÃO") is not mojibake."""
    if "\ufffd" in text or any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        return True
    for match in _MOJIBAKE.finditer(text):
        try:
            bytes(_byte(ch) for ch in match.group()).decode("utf-8")
        except (UnicodeDecodeError, ValueError):
            continue
        return True
    return False


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
    """Lone surrogates (not encodable as UTF-8) → U+FFFD, so Arrow can hold the text; the wrong-encoding
    check then flags the field and no other check reads it as valid."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
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


def _malformed_notes(record: Mapping[str, Any]) -> str:
    """The extract's notes on a record's shape (value-free texts), its applications' included."""
    notes: list[str] = []
    for note in record.get("malformed") or ():
        notes.append(str(note)[:200])
    apps = record.get("applications")
    if isinstance(apps, list):
        for app in apps:
            if isinstance(app, Mapping):
                notes += [f"application: {str(n)[:200]}" for n in app.get("malformed") or ()]
    return "; ".join(dict.fromkeys(notes))


# --------------------------------------------------------------------------------------------------
# the derived frame
# --------------------------------------------------------------------------------------------------


def _joined(n: int, flags: dict[str, np.ndarray], sep: str = ",") -> pd.Series:
    """Per row: the names whose flag is set, joined ("" when none)."""
    out = np.zeros(n, dtype=object)
    out[:] = ""
    if n and flags:
        for i in np.flatnonzero(np.logical_or.reduce(list(flags.values()))):
            out[i] = sep.join(k for k, f in flags.items() if f[i])
    return pd.Series(out, dtype="str")


def derive_frame(
    records: Sequence[Any], settings: Settings, schema: Mapping[str, AttributeSpec]
) -> tuple[pd.DataFrame, list[Check]]:
    """One row per record: ``row``, ``applicant_id`` (nullable) and one column per check."""
    n = len(records)
    q: QualitySettings = settings.quality
    is_map = np.fromiter((isinstance(r, Mapping) for r in records), dtype=bool, count=n)
    cols: dict[str, Any] = {ROW: np.arange(n, dtype="int64")}
    ids = [_int_id(r.get("applicant_id")) if isinstance(r, Mapping) else None for r in records]
    cols[APPLICANT_ID] = pd.array(ids, dtype="Int64")
    checks: list[Check] = [RECORD, ID_PRESENT, ID_UNIQUE]
    cols[RECORD.column] = is_map

    malformed = np.zeros(n, dtype=object)
    malformed[:] = ""
    for i, record in enumerate(records):
        if isinstance(record, Mapping) and (record.get("malformed") or record.get("applications")):
            malformed[i] = _malformed_notes(record)
    checks.append(MALFORMED)
    cols[MALFORMED.column] = pd.Series(malformed, dtype="str")

    raw = {k: [r.get(k) if isinstance(r, Mapping) else None for r in records] for k in TEXT_FIELDS}
    text: dict[str, pd.Series] = {}
    not_text: dict[str, np.ndarray] = {}
    bad: dict[str, np.ndarray] = {}  # field → rows where any field check failed (for the identity rule)
    encoding: dict[str, np.ndarray] = {}
    for key in TEXT_FIELDS:
        values = raw[key]
        not_text[key] = np.fromiter((not (v is None or isinstance(v, str)) for v in values), dtype=bool, count=n)
        series = text_series([v if isinstance(v, str) else None for v in values]).str.strip()
        text[key] = series.where(series.str.len() > 0)  # empty and blank → missing
        wrong = np.zeros(n, dtype=bool)
        non_ascii = text[key].str.contains(r"[^\x00-\x7f]").fillna(False).to_numpy(dtype=bool)
        if non_ascii.any():
            wrong[non_ascii] = _per_unique(text[key][non_ascii], wrong_encoding, missing=False)
        encoding[key] = wrong
        bad[key] = not_text[key] | wrong
    checks.append(TEXT)
    cols[TEXT.column] = _joined(n, {k: v for k, v in not_text.items() if v.any()})
    checks.append(ENCODING)
    cols[ENCODING.column] = _joined(n, {k: v for k, v in encoding.items() if v.any()})

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
    bad["email"] |= ~email_ok

    # citizenship: a country mapping.country_code knows; it is also the phone's first region
    citizenship = text["citizenship"]
    cit_ok = _per_unique(citizenship, citizenship_ok)
    checks.append(CITIZENSHIP)
    cols[CITIZENSHIP.column] = cit_ok
    bad["citizenship"] |= ~cit_ok
    codes = _per_unique_values(citizenship.where(pd.Series(cit_ok) & ~pd.Series(encoding["citizenship"])))

    phone = text["phone"]
    has_phone = phone.notna().to_numpy()
    phone_good = np.ones(n, dtype=bool)
    if has_phone.any():
        key = (codes.fillna("").astype("str") + "\x1f" + phone.fillna("").astype("str"))[has_phone]
        default_region = q.default_region

        def _phone(k: str) -> bool:
            country, _, number = k.partition("\x1f")
            return phone_ok(number, phone_regions(country or None, default_region))

        phone_good[has_phone] = _per_unique(key, _phone)
    checks.append(PHONE)
    cols[PHONE.column] = phone_good
    bad["phone"] |= ~phone_good

    registered_ok = _per_unique(text["registered"], instant_ok)
    checks.append(REGISTERED)
    cols[REGISTERED.column] = registered_ok
    bad["registered"] |= ~registered_ok

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
        bad[key] = bad[key] | too_long

    # identity: every group needs one field that is present and passed every check
    failing: dict[str, np.ndarray] = {}
    for number, group in enumerate(q.identity_groups()):
        usable = np.zeros(n, dtype=bool)
        for name in group:
            usable |= text[name].notna().to_numpy() & ~bad[name]
        failing[str(number)] = ~usable & is_map
    checks.append(IDENTITY)
    cols[IDENTITY.column] = _joined(n, failing)
    return pd.DataFrame(cols), checks


def _per_unique_values(values: pd.Series) -> pd.Series:
    """The ISO alpha-2 code of each (valid) citizenship, computed once per distinct value."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    mapped = [country_code(u) for u in uniques]
    out = [mapped[c] if c >= 0 else None for c in codes]
    return pd.Series(out, dtype="str")


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
        applicant_ids=[None if pd.isna(v) else int(v) for v in frame[APPLICANT_ID]],
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
