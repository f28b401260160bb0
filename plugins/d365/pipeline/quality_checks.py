"""The row-level checks of the data quality step, what each one causes, and the per-value checks.

A :class:`Check` is one column of the derived frame (:mod:`d365.pipeline.quality_frame`); the per-value
functions here run once per distinct value. The validation itself is :mod:`d365.pipeline.quality`.

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
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from email_validator import EmailNotValidError, validate_email

from d365.pipeline.fields import APPLICANT_FIELDS, checked_fields
from d365.pipeline.fit import MIN_DATETIME_YEAR, TEXT_TYPES, AttributeSpec
from d365.pipeline.lead_stage import parse_instant
from d365.pipeline.mapping import country_code, parse_phone
from d365.pipeline.settings import Settings

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
_SPECIAL_TLDS = ("arpa", "invalid", "local", "localhost", "onion", "test")
_SPECIAL_TLD = rf"\.(?:{'|'.join(_SPECIAL_TLDS)})$"
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# An ASCII dot-atom local part @ LDH labels . alphabetic TLD: a subset of what email-validator accepts
# (with the length, "--" and special-use checks below). Anything else is asked of email-validator.
FAST_EMAIL = rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}"

# A phone typed internationally (+ or 00) in ASCII digits and plain separators, optionally with an extension: a
# subset of the shapes mapping.parse_phone reads (it rejects letters before parsing); pyarrow's RE2 and Python's re
# read it alike (ASCII classes only).
INTERNATIONAL_PHONE = r"(?:\+|00)[0-9 ().\-]*(?:(?:[Ee][Xx][Tt]\.?|[Xx]|#) ?[0-9]+)?"
# An ISO 8601 date/time in UTC (or without offset, which parse_instant reads as UTC), in the form DreamApply sends:
# datetime.fromisoformat reads it exactly when the fields are in range (year from 1: see fast_instants_ok).
PLAIN_INSTANT = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:Z|\+00:00)?"
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype="int64")

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


# --------------------------------------------------------------------------------------------------
# per-value checks (called once per unique value)
# --------------------------------------------------------------------------------------------------


def email_valid(text: str) -> bool:
    try:
        validate_email(text, check_deliverability=False)
    except (EmailNotValidError, ValueError, TypeError, UnicodeError):
        return False
    return True


def _arrow_text(series: pd.Series) -> pa.Array:
    """The (str-typed) series as an Arrow string array (zero-copy for the frame's Arrow-backed columns)."""
    return pa.array(series.astype("str"))


def _true(mask: pa.Array) -> np.ndarray:
    """An Arrow boolean result as a numpy mask, null (a missing value) as False."""
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def fast_email_ok(series: pd.Series) -> np.ndarray:
    """True where the (trimmed, str-typed) address is in the plain ASCII form email-validator accepts."""
    text = _arrow_text(series)
    match = _true(pc.match_substring_regex(text, f"^(?:{FAST_EMAIL})$"))
    if not match.any():
        return match
    # the form has one "@" (the local part's characters exclude it) and an alphabetic TLD after the last "."
    at = pc.find_substring(text, "@").to_numpy(zero_copy_only=False)
    length = pc.utf8_length(text).to_numpy(zero_copy_only=False)
    special = _true(pc.match_substring_regex(text, _SPECIAL_TLD, ignore_case=True))
    # email-validator rejects labels with "--" in positions 3-4 unless they are valid IDNA: ask it instead
    dashes = _true(pc.match_substring(text, "--"))
    ok = np.zeros(len(match), dtype=bool)
    ok[match] = (at[match] <= 64) & (length[match] <= 254) & ~special[match] & ~dashes[match]
    return ok


def citizenship_ok(text: str) -> bool:
    return country_code(text) is not None


def phone_ok(text: str, regions: Sequence[str | None] = (None,)) -> bool:
    """The mapping's rule for writing E.164 (``mapping.parse_phone``)."""
    return parse_phone(text, regions) is not None


def international_phone_possible(text: str, regions: Sequence[str | None] = (None,)) -> bool:
    """True only where ``phone_ok`` is True, for a phone in :data:`INTERNATIONAL_PHONE` form: a region (tried in
    the rule's order) reads it as a number of possible length, which the rule accepts for a number typed
    internationally. Asks phonenumbers for the length check (cheap) instead of the rule's ``is_valid_number``
    first (the patterns of every number type). False decides nothing: ask ``phone_ok``."""
    for region in regions or (None,):
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(number):
            return True
    return False


def instant_ok(text: str) -> bool:
    dt = parse_instant(text)
    return dt is not None and dt.year >= MIN_DATETIME_YEAR


def date_ok(value: Any) -> bool:
    return parse_instant(value) is not None


def fast_instants_ok(series: pd.Series, min_year: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(decided, ok)`` per value, vectorised: values in :data:`PLAIN_INSTANT` form are decided, and ``ok`` says
    whether ``parse_instant`` reads them with a UTC year from ``min_year`` (``fromisoformat``: a year from 1, a
    real month and day, 00-23:00-59:00-59; the offset is zero, so the UTC year is the year typed). The others
    (null, another form or offset) are left to ``instant_ok`` / ``date_ok``."""
    text = _arrow_text(series)
    decided = _true(pc.match_substring_regex(text, f"^(?:{PLAIN_INSTANT})$"))
    ok = np.zeros(len(decided), dtype=bool)
    if decided.any():
        plain = text.filter(pa.array(decided))

        def part(start: int, stop: int) -> np.ndarray:
            digits = pc.utf8_slice_codeunits(plain, start, stop)
            return pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False)

        year, month, day = part(0, 4), part(5, 7), part(8, 10)
        leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
        days = _DAYS_IN_MONTH[np.clip(month, 0, 12)] + ((month == 2) & leap)
        ok[decided] = (
            (year >= max(min_year, 1))
            & (month >= 1)
            & (month <= 12)
            & (day >= 1)
            & (day <= days)
            & (part(11, 13) <= 23)
            & (part(14, 16) <= 59)
            & (part(17, 19) <= 59)
        )
    return decided, ok


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
