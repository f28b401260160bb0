"""Applicant profile fields (names, e-mail, phone, citizenship) from the name tables, with adversarial cases.

``make_profile(rng, kind)`` is the one entry point; ``kind`` forces one adversarial case (see ``KINDS``),
otherwise each oddity appears at a small realistic rate.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from functools import cache
from itertools import accumulate

import phonenumbers

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


# Real applicants mostly type a valid number. ``draw_phone`` is the sandbox's original phone draw (same
# calls on the main generator, so names, e-mails, consents and applications are unchanged);
# ``realistic_phone`` then turns 97 in 100 of its random-digit numbers into a valid number of the locale's
# country (phonenumbers' example numbers with random last digits, in the shapes people type them), with a
# generator of its own seeded from the draw. Missing, empty and garbage phones stay as drawn. Templates
# are built once per calling code; a number is string work (plus one parse for national and 00 forms).
_SUFFIX_DIGITS = 4
_MALFORMED_SHARE = 0.03


def _with_suffix(text: str, suffix: str) -> str:
    """``text`` with its last ``len(suffix)`` digits replaced by ``suffix`` (separators kept)."""
    out = list(text)
    k = len(suffix)
    for i in range(len(out) - 1, -1, -1):
        if k == 0:
            break
        if out[i].isdigit():
            k -= 1
            out[i] = suffix[k]
    return "".join(out)


@cache
def phone_templates(cc: str) -> tuple[tuple[str, str, str], ...]:
    """``(national significant number, national format, international format)`` per example number of the
    calling code's main region whose last digits can be anything (checked once, here)."""
    region = phonenumbers.region_code_for_country_code(int(cc))
    found: list[tuple[str, str, str]] = []
    for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE):
        example = phonenumbers.example_number_for_type(region, kind)
        if example is None:
            continue
        nsn = phonenumbers.national_significant_number(example)
        national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
        international = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        if all(
            phonenumbers.is_valid_number(phonenumbers.parse(_with_suffix(international, s), None))
            for s in ("0000", "1234", "5678", "9999")
        ):
            found.append((nsn, national, international))
    return tuple(found)


def _typed_at_home(text: str, citizenship: str | None) -> bool:
    """Whether a national (or ``00``) form reads as a valid number with the citizenship as region."""
    if not citizenship or len(citizenship) != 2:
        return False
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(text, citizenship.upper()))
    except phonenumbers.NumberParseException:
        return False


def draw_phone(rng: random.Random, cc: str) -> str | None:
    """The original draw: ``None``, ``""``, garbage or digits of a random shape. It consumes the main
    generator exactly as before, so every other field of the dataset stays what it was."""
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


def realistic_phone(drawn: str | None, cc: str, citizenship: str | None = None) -> str | None:
    """A drawn phone as applicants type it: most random-digit draws become valid numbers. National and
    ``00`` forms are used where they are valid for the citizenship (a home number typed the local way),
    otherwise the international form."""
    if not drawn or not any(ch.isdigit() for ch in drawn) or drawn in N.GARBAGE_PHONES:
        return drawn
    templates = phone_templates(cc)
    rng = random.Random(f"phone:{cc}:{drawn}")
    r = rng.random()
    if r < _MALFORMED_SHARE or not templates:
        return drawn
    nsn, national, intl = rng.choice(templates)
    suffix = f"{rng.randrange(10**_SUFFIX_DIGITS):0{_SUFFIX_DIGITS}d}"
    if r < 0.40:
        return _with_suffix(intl, suffix)  # +372 5123 4567
    if r < 0.55:
        return _with_suffix(f"+{cc}{nsn}", suffix)  # +37251234567
    if r < 0.62:
        # 5123 4567, 8 (912) 345-67-89, 0037251234567: valid only read with the citizenship's region
        typed = _with_suffix(national if r < 0.58 else f"00{cc}-{nsn}", suffix)
        return typed if _typed_at_home(typed, citizenship) else _with_suffix(intl, suffix)
    if r < 0.76:
        head, _, rest = intl.partition(" ")
        group, _, tail = rest.partition(" ")
        return _with_suffix(f"{head} ({group}) {tail}" if tail else intl, suffix)  # +372 (5123) 4567
    if r < 0.82:
        return _with_suffix(intl.replace(" ", "-"), suffix)  # +372-5123-4567
    if r < 0.85:
        typed = _with_suffix(f"00 {cc} {nsn}", suffix)
        return typed if _typed_at_home(typed, citizenship) else _with_suffix(intl, suffix)
    if r < 0.97:
        return _with_suffix(intl, suffix) + f" ext. {rng.randrange(1, 999)}"
    return " " + _with_suffix(intl, suffix).replace(" ", "  ") + " "


def make_phone(rng: random.Random, cc: str, citizenship: str | None = None) -> str | None:
    """One phone (``draw_phone`` + ``realistic_phone``)."""
    return realistic_phone(draw_phone(rng, cc), cc, citizenship)


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

    phone = draw_phone(rng, loc.calling_code)
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
    phone = realistic_phone(phone, loc.calling_code, citizenship)
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
