"""Messy values applicants and upstream systems really produce, for edits that test a sync's data quality.

Used by ``advance`` (rate ``messy_edits``, 0 by default) and by tests that place such values on purpose. The
generator's own population already carries a realistic share of oddities (``profiles.KINDS``); these are the
cases a sync must survive *in an edit*: a phone that cannot be parsed, a country that does not exist, a name
that went through the wrong character encoding somewhere on its way.
"""

from __future__ import annotations

import random

from sandbox.data.model import Applicant

# Unparseable or odd phones: too short, a reserved US area code (555, and 1xx which no area code starts
# with) typed without a country code, and a UK mobile number one digit too long. None is a valid number
# without a region or for a US or Estonian applicant; some are for others ("(555) 123-4567" in GB is
# +44 555 123 4567): whether a number is usable depends on the applicant's citizenship.
MESSY_PHONES: tuple[str, ...] = ("12", "(555) 123-4567", "127.555.6451", "+44 7700 9040040")
# Not ISO 3166-1 codes: the user-assigned XX, and UK (the United Kingdom is GB).
MESSY_CITIZENSHIPS: tuple[str, ...] = ("XX", "UK")
REPLACEMENT = "\ufffd"
_ACCENTED = {"e": "é", "a": "á", "o": "ó", "i": "í", "u": "ú"}


def with_accent(text: str) -> str:
    """``text`` with at least one non-ASCII letter (its last plain vowel accented, or "é" appended)."""
    if not text.isascii():
        return text
    for pos in range(len(text) - 1, -1, -1):
        if text[pos] in _ACCENTED:
            return text[:pos] + _ACCENTED[text[pos]] + text[pos + 1 :]
    return text + "é"


def mojibake(text: str) -> str:
    """UTF-8 bytes read as Windows-1252, as a misconfigured import does: "José" → "JosÃ©"."""
    return with_accent(text).encode("utf-8").decode("cp1252", errors="replace")


def replacement_chars(text: str) -> str:
    """Single-byte text read as UTF-8 with replacement: every non-ASCII character becomes U+FFFD
    ("José" → "Jos\ufffd")."""
    return "".join(ch if ch.isascii() else REPLACEMENT for ch in with_accent(text))


def messy_edit(rng: random.Random, a: Applicant) -> list[str]:
    """Give ``a`` one messy value; returns the changed journal fields (``journal.EDIT_FIELDS`` names)."""
    r = rng.random()
    if r < 0.4:
        old = a.phone
        a.phone = rng.choice(MESSY_PHONES)
        return ["phone"] if a.phone != old else []
    if r < 0.7:
        old = a.citizenship
        a.citizenship = rng.choice(MESSY_CITIZENSHIPS)
        return ["citizenship"] if a.citizenship != old else []
    old_given = a.given
    broken = replacement_chars if r < 0.85 else mojibake
    a.given = broken(a.given or "Jose")
    return ["name"] if a.given != old_given else []
