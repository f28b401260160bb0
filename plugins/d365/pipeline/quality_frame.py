"""The derived frame the data quality step validates: one row per record, one column per check.

How (fast and private):

pandas derives one column per row-level check from the raw fields. Per-value work (e-mail syntax, phone
parsing, dates, wrong-encoding detection) runs **once per unique value** (``pd.factorize``), after
vectorised (pyarrow RE2) pre-screens that decide the common forms exactly and leave the rest to the
per-value checks:

- e-mail addresses in a plain ASCII dot-atom form are accepted (only addresses email-validator accepts
  too; a test checks the subset);
- dates in DreamApply's form (``2025-11-24T23:56:34+00:00``) are decided by their fields' ranges (what
  ``datetime.fromisoformat`` checks; a test compares them with ``parse_instant``);
- phones are asked of the rule (``mapping.parse_phone``), whose cache the mapping then reads, while the
  cache holds them all; beyond that (a large extract) a phone typed internationally in plain digits is
  accepted once phonenumbers finds it of possible length, which the rule accepts for such a number (every
  other phone, and one of impossible length, is asked of the rule), and a worker process takes part of
  them (:mod:`d365.pipeline.quality_parallel`).
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from d365.pipeline.fit import MIN_DATETIME_YEAR, AttributeSpec, utf16_len
from d365.pipeline.mapping import country_code, parse_phone, phone_regions
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
    INTERNATIONAL_PHONE,
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
    fast_instants_ok,
    instant_ok,
    international_phone_possible,
    length_checks,
    phone_ok,
    wrong_encoding,
)
from d365.pipeline.quality_parallel import MIN_PARALLEL, ParallelChecks
from d365.pipeline.settings import QualitySettings, Settings


def _per_unique(values: pd.Series, fn: Callable[[Any], bool], *, missing: bool = True) -> np.ndarray:
    """``fn`` once per distinct non-null value, spread back over the rows; null rows get ``missing``."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    out = np.full(len(values), missing, dtype=bool)
    if len(uniques):
        # a list first: iterating an Arrow-backed Index yields its items one by one through pandas
        results = np.fromiter(map(fn, uniques.tolist()), dtype=bool, count=len(uniques))
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


def _is_mapping(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)  # dict first: the ABC check costs ten times more


_NOT_TEXT = object()  # stands for a value that is there but no string (a sentinel: equal to nothing else)
_STR_OR_NONE = frozenset({str, type(None)})


def _text_column(values: list[Any]) -> tuple[pd.Series, np.ndarray]:
    """The trimmed texts (empty and blank → missing) and where a value is there but no string."""
    not_text = np.zeros(len(values), dtype=bool)
    texts = values
    if not set(map(type, values)) <= _STR_OR_NONE:  # else the values are the texts as they are
        texts = [v if isinstance(v, str) else (None if v is None else _NOT_TEXT) for v in values]
        if texts.count(_NOT_TEXT):
            not_text = np.fromiter((t is _NOT_TEXT for t in texts), dtype=bool, count=len(texts))
            texts = [None if t is _NOT_TEXT else t for t in texts]
    series = text_series(texts).str.strip()
    return series.where(series.str.len() > 0), not_text


def _instants_ok(values: pd.Series, fn: Callable[[Any], bool], min_year: int) -> np.ndarray:
    """``fn`` (``instant_ok`` / ``date_ok``) per row: the plain UTC form vectorised, the rest once per value."""
    decided, ok = fast_instants_ok(values, min_year)
    rest = ~decided
    if rest.any():
        ok[rest] = _per_unique(values[rest], fn)
    return ok


def _split(key: str, default_region: str | None) -> tuple[str, tuple[str | None, ...]]:
    """A phone key ``<1|0><country>\\x1f<phone>`` (1: the phone is in :data:`INTERNATIONAL_PHONE` form) → the
    phone and the regions it is read with."""
    region, _, number = key[1:].partition("\x1f")
    return number, phone_regions(region or None, default_region)


def phone_verdicts(keys: list[str], default_region: str | None) -> list[bool]:
    """``phone_ok`` per phone key, asked of the rule itself, which caches the parsed numbers
    (``mapping.parse_phone``): the mapping reads them from the cache."""
    return [phone_ok(*_split(key, default_region)) for key in keys]


def prescreened_phone_verdicts(keys: list[str], default_region: str | None) -> list[bool]:
    """The same verdicts where the rule's cache cannot keep them for the mapping: a phone in the international
    form is first offered to ``international_phone_possible`` (a length check instead of the rule's patterns).
    Module level: worker processes run it."""
    out = []
    for key in keys:
        number, regions = _split(key, default_region)
        out.append((key[0] == "1" and international_phone_possible(number, regions)) or phone_ok(number, regions))
    return out


def phones_parallel_from() -> int:
    """How many distinct phones it takes to check them by the quicker route (:func:`prescreened_phone_verdicts`)
    and on worker processes too. Not while the rule's cache (``mapping.parse_phone``, in this process) can hold
    them all: the mapping reads each parsed number from it, and a phone checked another way or elsewhere would
    be parsed again there (measured on 50 000 applicants: validation 1.9 s faster, the mapping 2.3 s slower).
    Beyond the cache's size the mapping parses every phone anyway."""
    info = getattr(parse_phone, "cache_info", None)
    size = info().maxsize if info is not None else 0
    return sys.maxsize if size is None else max(MIN_PARALLEL, size + 1)


class _Phones:
    """The phone check of every row, once per distinct (country, phone), started on creation (for a large
    extract by the quicker route and shared with a worker process: :func:`phones_parallel_from`) and collected
    by :meth:`ok`."""

    def __init__(self, phone: pd.Series, country: pd.Series, default_region: str | None) -> None:
        self._n = len(phone)
        self._present = phone.notna().to_numpy()
        international = phone.str.fullmatch(INTERNATIONAL_PHONE).fillna(False).to_numpy(dtype=bool)
        flag = pd.Series(np.where(international, "1", "0"), dtype="str")
        keys = (flag + country.fillna("").astype("str") + "\x1f" + phone.fillna("").astype("str"))[self._present]
        self._codes, uniques = pd.factorize(keys)
        many = phones_parallel_from()
        check = prescreened_phone_verdicts if len(uniques) >= many else phone_verdicts
        self._verdicts = ParallelChecks(check, uniques.tolist(), default_region, min_items=many)

    def ok(self) -> np.ndarray:
        """True where the phone passes or is missing."""
        good = np.ones(self._n, dtype=bool)
        good[self._present] = self._verdicts.result()[self._codes]
        return good

    def close(self) -> None:
        self._verdicts.close()


def _applications(views: list[Mapping[str, Any]]) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """One walk over the records and their applications: the malformation notes (the extract's, its
    applications' included), where the applications are no list of records, where a date of one fails."""
    n = len(views)
    malformed = np.zeros(n, dtype=object)
    malformed[:] = ""
    apps_ok = np.ones(n, dtype=bool)
    date_rows: list[int] = []
    date_values: list[Any] = []
    for i, record in enumerate(views):
        noted = bool(record.get("malformed"))
        apps = record.get("applications")
        if apps is not None and not isinstance(apps, list):
            apps_ok[i] = False
        elif apps:
            mark = len(date_values)
            for app in apps:
                if not (type(app) is dict or isinstance(app, Mapping)):
                    apps_ok[i] = False
                    noted = True  # the notes of the applications that are records
                    del date_rows[mark:], date_values[mark:]  # no dates of a list that is not all records
                    break
                if app.get("malformed"):
                    noted = True
                for name in APPLICATION_DATES:
                    value = app.get(name)
                    if value is not None:
                        date_rows.append(i)
                        date_values.append(value if isinstance(value, str) else repr(type(value)))
        if noted:
            malformed[i] = _malformed_notes(record)
    dates_ok = np.ones(n, dtype=bool)
    if date_values:
        good = _instants_ok(text_series(date_values), date_ok, 1)
        dates_ok[np.asarray(date_rows, dtype="int64")[~good]] = False
    return pd.Series(malformed, dtype="str"), apps_ok, dates_ok


def derive_frame(
    records: Sequence[Any], settings: Settings, schema: Mapping[str, AttributeSpec]
) -> tuple[pd.DataFrame, list[Check]]:
    """One row per record: ``row``, ``applicant_id`` (nullable) and one column per check."""
    n = len(records)
    q: QualitySettings = settings.quality
    empty: Mapping[str, Any] = {}
    record_flags = [_is_mapping(r) for r in records]
    is_map = np.array(record_flags, dtype=bool)
    views: list[Mapping[str, Any]] = [r if ok else empty for r, ok in zip(records, record_flags, strict=True)]

    text: dict[str, pd.Series] = {}
    not_text: dict[str, np.ndarray] = {}
    bad: dict[str, np.ndarray] = {}  # field → rows where any field check failed (for the identity rule)
    encoding: dict[str, np.ndarray] = {}

    def read_text(key: str) -> None:
        # a list per field (a tuple per record would be 100 000 objects more for the garbage collector)
        text[key], not_text[key] = _text_column([r.get(key) for r in views])
        wrong = np.zeros(n, dtype=bool)
        non_ascii = (text[key].notna() & ~text[key].str.isascii()).to_numpy(dtype=bool)
        if non_ascii.any():
            wrong[non_ascii] = _per_unique(text[key][non_ascii], wrong_encoding, missing=False)
        encoding[key] = wrong
        bad[key] = not_text[key] | wrong

    # the phones first (the longest check; on worker processes for a large extract): they need the phone and the
    # citizenship, a country mapping.country_code knows, which is the phone's first region
    read_text("phone")
    read_text("citizenship")
    citizenship = text["citizenship"]
    cit_ok = _per_unique(citizenship, citizenship_ok)
    bad["citizenship"] |= ~cit_ok
    codes = _per_unique_values(citizenship.where(pd.Series(cit_ok) & ~pd.Series(encoding["citizenship"])))
    phones = _Phones(text["phone"], codes, q.default_region)
    try:  # the other columns meanwhile
        for key in TEXT_FIELDS:
            if key not in text:
                read_text(key)
        ids = [_int_id(r.get("applicant_id")) for r in views]
        malformed, apps_ok, dates_ok = _applications(views)

        # e-mail: a vectorised pre-screen, then email-validator once per remaining distinct value
        email = text["email"]
        slow = email.notna().to_numpy() & ~fast_email_ok(email)
        email_ok = np.ones(n, dtype=bool)
        if slow.any():
            email_ok[slow] = _per_unique(email[slow], email_valid)
        bad["email"] |= ~email_ok

        registered_ok = _instants_ok(text["registered"], instant_ok, MIN_DATETIME_YEAR)
        bad["registered"] |= ~registered_ok

        lengths: list[tuple[Check, np.ndarray]] = []
        for check, key, limit in length_checks(settings, schema):
            series = text[key]
            chars = series.str.len().to_numpy(dtype="float64", na_value=0)
            too_long = chars > limit  # UTF-16 units ≥ code points
            maybe = (chars * 2 > limit) & ~too_long  # astral characters count twice: measure exactly
            if maybe.any():
                too_long[maybe] = ~_per_unique(
                    series[maybe], lambda t, lim=limit: utf16_len(unicodedata.normalize("NFC", t)) <= lim
                )
            lengths.append((check, ~too_long))
            bad[key] = bad[key] | too_long

        phone_good = phones.ok()
    finally:
        phones.close()
    bad["phone"] |= ~phone_good

    # identity: every group needs one field that is present and passed every check
    failing: dict[str, np.ndarray] = {}
    for number, group in enumerate(q.identity_groups()):
        usable = np.zeros(n, dtype=bool)
        for name in group:
            usable |= text[name].notna().to_numpy() & ~bad[name]
        failing[str(number)] = ~usable & is_map

    # the columns, in the order of the checks (GX validates them in this order)
    columns: list[tuple[Check, Any]] = [
        (RECORD, is_map),
        (ID_PRESENT, None),  # read from the applicant_id column
        (ID_UNIQUE, None),
        (MALFORMED, malformed),
        (TEXT, _joined(n, {k: not_text[k] for k in TEXT_FIELDS if not_text[k].any()})),  # in the fields' order
        (ENCODING, _joined(n, {k: encoding[k] for k in TEXT_FIELDS if encoding[k].any()})),
        (EMAIL, email_ok),
        (CITIZENSHIP, cit_ok),
        (PHONE, phone_good),
        (REGISTERED, registered_ok),
        (APPLICATIONS, apps_ok),
        (APPLICATION_DATES_CHECK, dates_ok),
        *lengths,
        (IDENTITY, _joined(n, failing)),
    ]
    cols: dict[str, Any] = {ROW: np.arange(n, dtype="int64"), APPLICANT_ID: pd.array(ids, dtype="Int64")}
    cols.update({check.column: values for check, values in columns if values is not None})
    return pd.DataFrame(cols), [check for check, _ in columns]


def _per_unique_values(values: pd.Series) -> pd.Series:
    """The ISO alpha-2 code of each (valid) citizenship, computed once per distinct value."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    mapped = np.array([country_code(u) for u in uniques.tolist()] + [None], dtype=object)
    return pd.Series(mapped[codes], dtype="str")  # code -1 (missing) → the trailing None
