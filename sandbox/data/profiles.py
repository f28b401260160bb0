"""Applicant profile fields (names, e-mail, phone, citizenship) from the name tables, with adversarial cases.

``make_profile(rng, kind)`` is the one entry point; ``kind`` forces one adversarial case (see ``KINDS``),
otherwise each oddity appears at a small realistic rate.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from itertools import accumulate

from sandbox.data import names as N

# Locale keys by script, for forcing non-Latin scripts.
SCRIPT_LOCALES = {
    "cyrillic": "ru",
    "greek": "el",
    "arabic": "ar",
    "hebrew": "he",
    "devanagari": "hi",
    "chinese": "zh",
    "japanese": "ja",
    "korean": "ko",
    "thai": "th",
    "georgian": "ka",
    "vietnamese": "vi",
    "latin-diacritics": "pl",
}

# Adversarial cases the generator places at least once (when there are enough applicants).
KINDS: tuple[str, ...] = (
    "apostrophe",
    "apostrophe_nd",
    "hyphen_given",
    "hyphen_family",
    "long_given",
    "long_family",
    "missing_given",
    "missing_family",
    "middle_name",
    "email_none",
    "email_empty",
    "email_invalid",
    "email_shared",
    "email_shared_case",
    "phone_none",
    "phone_empty",
    "phone_garbage",
    "citizenship_none",
    "citizenship_invalid",
    "name_whitespace",
    "name_case",
    *(f"script:{s}" for s in SCRIPT_LOCALES),
)

_LOCALE_BY_KEY = {loc.key: loc for loc in N.LOCALES}
_CUM = list(accumulate(loc.weight for loc in N.LOCALES))
_TOTAL = _CUM[-1]
INVALID_CITIZENSHIPS = ("XX", "UK", "EU", "ZZ", "", "est", "D", "Estonia")


def pick_locale(rng: random.Random) -> N.Locale:
    return N.LOCALES[bisect_right(_CUM, rng.random() * _TOTAL)]


def locale(key: str) -> N.Locale:
    return _LOCALE_BY_KEY[key]


def _long_name(rng: random.Random, parts: tuple[str, ...], joiner_family: bool) -> str:
    out: list[str] = []
    while len(" ".join(out)) <= 50:
        p = rng.choice(parts)
        if p not in out:
            out.append(p)
    return (" y " if joiner_family and rng.random() < 0.3 else " ").join(out)


def make_email(rng: random.Random, given_r: str, family_r: str) -> str:
    g = given_r.replace(" ", "") or "applicant"
    f = family_r.replace(" ", "") or "x"
    r = rng.random()
    if r < 0.35:
        local = f"{g}.{f}"
    elif r < 0.5:
        local = f"{g[0]}.{f}"
    elif r < 0.6:
        local = f"{f}.{g}"
    elif r < 0.72:
        local = f"{g}{f}"
    elif r < 0.8:
        local = f"{g}_{f}"
    elif r < 0.85:
        local = f"{g}+apply"
    else:
        local = g
    if rng.random() < 0.7:
        local += str(rng.randrange(1, 10000))
    if rng.random() < 0.03:
        local = local.capitalize()
    return f"{local}@{rng.choice(N.EMAIL_DOMAINS)}"


def make_phone(rng: random.Random, cc: str) -> str | None:
    r = rng.random()
    d = rng.randrange
    if r < 0.05:
        return None
    if r < 0.12:
        return ""
    if r < 0.14:
        return rng.choice(N.GARBAGE_PHONES)
    if r < 0.45:
        return f"+{cc} {d(1000, 9999)} {d(1000, 9999)}"
    if r < 0.55:
        return f"+{cc}{d(10**7, 10**9)}"
    if r < 0.62:
        return f"(0{d(10, 99)}) {d(1000, 9999)} {d(1000, 9999)}"
    if r < 0.69:
        return f"00{cc}-{d(10, 99)}-{d(100000, 999999)}"
    if r < 0.75:
        return f"{d(200, 999)}.{d(100, 999)}.{d(1000, 9999)}"
    if r < 0.81:
        return f"+1 ({d(200, 999)}) {d(100, 999)}-{d(1000, 9999)}"
    if r < 0.87:
        return f"0{d(100000000, 999999999)}"
    if r < 0.91:
        return f"+{cc}-{d(1, 99)}-{d(1000, 9999)}-{d(1000, 9999)}"
    if r < 0.95:
        return f"00 {cc} {d(1, 9)} {d(10, 99)} {d(10, 99)} {d(10, 99)} {d(10, 99)}"
    if r < 0.98:
        return f"+{cc} {d(1000, 9999)} {d(1000, 9999)} ext. {d(1, 999)}"
    return f" +{cc}  {d(100, 999)}  {d(10000, 99999)} "


def make_profile(rng: random.Random, kind: str | None = None) -> dict:
    """Fields of one applicant: given, middle, family, email, phone, citizenship (and the romanised names)."""
    if kind and kind.startswith("script:"):
        loc = locale(SCRIPT_LOCALES[kind[7:]])
    elif kind in ("apostrophe", "name_case"):
        loc = locale("en")
    elif kind == "apostrophe_nd":
        loc = locale("wa")
    elif kind == "hyphen_family":
        loc = locale("de")
    elif kind == "hyphen_given":
        loc = locale("fr")
    else:
        loc = pick_locale(rng)
    g = rng.choice(loc.given)
    f = rng.choice(loc.family)
    given, given_r = N.native(g), N.roman(g)
    family, family_r = N.native(f), N.roman(f)
    middle: str | None = None
    if kind == "middle_name" or rng.random() < loc.middle_rate:
        m = rng.choice(loc.middles or loc.given)
        if N.native(m) != given:
            middle = N.native(m)
    if kind == "hyphen_family" or rng.random() < loc.hyphen_family_rate:
        f2 = rng.choice(loc.family)
        if f2 != f:
            family = f"{family}-{N.native(f2)}"
            family_r = f"{family_r}-{N.roman(f2)}"
    if kind == "hyphen_given" and "-" not in given:
        given = "Jean-Luc"
        given_r = "jean-luc"
    if kind == "apostrophe":
        family = rng.choice(("O'Brien", "O'Connor", "O'Neill", "D'Angelo", "D'Arcy"))
        family_r = N.ascii_fold(family)
    elif kind == "apostrophe_nd":
        family = rng.choice(("N'Dour", "N'Diaye"))
        family_r = N.ascii_fold(family)
    if kind == "long_given" or (kind is None and rng.random() < 0.003):
        given = _long_name(rng, N.LONG_GIVEN_PARTS, False)
    if kind == "long_family" or (kind is None and rng.random() < 0.003):
        family = _long_name(rng, N.LONG_FAMILY_PARTS, True)
    if kind == "name_whitespace" or (kind is None and rng.random() < 0.003):
        given = f" {given}  "
        family = f"{family} "
    if kind == "name_case" or (kind is None and rng.random() < 0.005):
        if rng.random() < 0.5:
            given, family = given.upper(), family.upper()
        else:
            given, family = given.lower(), family.lower()
    given_out: str | None = given
    family_out: str | None = family
    if kind == "missing_given" or (kind is None and rng.random() < 0.004):
        given_out = rng.choice((None, ""))
    if kind == "missing_family" or (kind is None and rng.random() < 0.004):
        family_out = rng.choice((None, ""))

    email: str | None = make_email(rng, given_r, family_r)
    if kind == "email_none":
        email = None
    elif kind == "email_empty":
        email = ""
    elif kind == "email_invalid":
        email = rng.choice(N.INVALID_EMAILS)
    elif kind is None:
        r = rng.random()
        if r < 0.004:
            email = None
        elif r < 0.007:
            email = ""
        elif r < 0.017:
            email = rng.choice(N.INVALID_EMAILS)

    phone = make_phone(rng, loc.calling_code)
    if kind == "phone_none":
        phone = None
    elif kind == "phone_empty":
        phone = ""
    elif kind == "phone_garbage":
        phone = rng.choice(N.GARBAGE_PHONES)

    citizenship: str | None = rng.choice(loc.countries)
    r = rng.random()
    if kind == "citizenship_none" or (kind is None and r < 0.01):
        citizenship = None
    elif kind == "citizenship_invalid" or (kind is None and r < 0.014):
        citizenship = rng.choice(INVALID_CITIZENSHIPS)
    elif r < 0.08:
        # studying abroad: a different, valid citizenship than the name suggests
        citizenship = rng.choice(pick_locale(rng).countries)
    return {
        "given": given_out,
        "middle": middle,
        "family": family_out,
        "given_r": given_r,
        "family_r": family_r,
        "email": email,
        "phone": phone,
        "citizenship": citizenship,
        "locale": loc.key,
    }


def vary_case(rng: random.Random, email: str) -> str:
    """The same address with different letter case (``Maria.Garcia@Example.COM``)."""
    local, _, domain = email.partition("@")
    local = local.upper() if rng.random() < 0.5 else local[:1].upper() + local[1:]
    return f"{local}@{domain.upper() if rng.random() < 0.5 else domain.capitalize()}"
