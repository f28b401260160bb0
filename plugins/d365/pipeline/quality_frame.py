"""The derived frame the data quality step validates: one row per record, one column per check.

How (fast and private):

pandas derives one column per row-level check from the raw fields. Per-value work (e-mail syntax, phone
parsing, dates, wrong-encoding detection) runs **once per unique value** (``pd.factorize``); e-mail
addresses in a plain ASCII dot-atom form are accepted by a vectorised (pyarrow RE2) pre-screen that
accepts only addresses email-validator accepts too (a test checks the subset); everything else goes to
email-validator.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from d365.pipeline.fit import AttributeSpec, utf16_len
from d365.pipeline.mapping import country_code, phone_regions
from d365.pipeline.quality_checks import (
    APPLICANT_ID,
    APPLICATION_DATES,
    APPLICATION_DATES_CHECK,
    APPLICATIONS,
    CITIZENSHIP,
    EMAIL,
    ENCODING,
    ID_PRESENT,
    ID_UNIQUE,
    IDENTITY,
    MALFORMED,
    MAX_ID,
    PHONE,
    RECORD,
    REGISTERED,
    ROW,
    TEXT,
    TEXT_FIELDS,
    Check,
    citizenship_ok,
    date_ok,
    email_valid,
    fast_email_ok,
    instant_ok,
    length_checks,
    phone_ok,
    wrong_encoding,
)
from d365.pipeline.settings import QualitySettings, Settings


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
