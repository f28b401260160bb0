"""Facts about the sandbox's data, read independently of the pipeline, for e2e assertions."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from d365.pipeline.settings import REPO_SETTINGS
from sandbox.client import SandboxClient


def raw_applicants(client: SandboxClient) -> dict[int, dict[str, Any]]:
    last = client.get("/dreamapply/stats")["next_applicant_id"]
    return {i: client.get(f"/dreamapply/applicants/{i}") for i in range(1, last)}


def accepted_live(raw: dict[int, dict[str, Any]], consent: str = "1") -> set[int]:
    return {
        i
        for i, a in raw.items()
        if not a["erased"] and (a.get("consents") or {}).get(consent, {}).get("decision") == "Accept"
    }


def leads_by_applicant(leads: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    counts = Counter(lead.get("uni_applicantid") for lead in leads if lead.get("uni_applicantid"))
    duplicated = {k: n for k, n in counts.items() if n > 1}
    assert not duplicated, f"applicants with more than one lead: {duplicated}"
    return {int(lead["uni_applicantid"]): lead for lead in leads if lead.get("uni_applicantid")}


def nfc(text: str | None) -> str | None:
    return None if text is None else unicodedata.normalize("NFC", text.strip())


def snapshot(client: SandboxClient) -> dict[int, str]:
    """Every applicant's DreamApply state (profile, consents, applications with courses and offers)."""
    out: dict[int, str] = {}
    for aid, a in raw_applicants(client).items():
        apps = [client.get(f"/dreamapply/applications/{app}") for app in a.get("applications") or []]
        out[aid] = json.dumps({"applicant": a, "applications": apps}, sort_keys=True, default=str)
    return out


def personal_patterns(raw: dict[int, dict[str, Any]]) -> list[tuple[int, str, re.Pattern[str]]]:
    """(applicant, field, pattern) for every name (as a whole word), e-mail and phone of the sandbox."""
    found = []
    for aid, a in raw.items():
        for field in ("given", "middle", "family", "email", "phone"):
            value = (a.get(field) or "").strip()
            # shorter values are not personal enough to find ("123" is in many lead GUIDs)
            if len(value) < (6 if field == "phone" else 3):
                continue
            if field in ("given", "middle", "family"):
                pattern = re.compile(r"(?<!\w)" + re.escape(value) + r"(?!\w)")
            else:
                pattern = re.compile(re.escape(value))
            found.append((aid, field, pattern))
    return found


# -- what the default mapping SHOULD make of a raw DreamApply record (issue 9), read from the docs, not the code --
REPLACEMENT_CHAR = "\ufffd"
# UTF-8 read as Windows-1252: "Ã" or "Â" followed by what a UTF-8 continuation byte becomes ("Ã©", "Ã¶", "Â°")
_MOJIBAKE = re.compile("[ÃÂ][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013-\u2122]")
COLUMN_LIMITS = {"firstname": 50, "middlename": 50, "lastname": 50, "emailaddress1": 100, "mobilephone": 20}


def wrongly_encoded(text: str) -> bool:
    """U+FFFD or classic mojibake: the text went through the wrong character encoding somewhere."""
    return REPLACEMENT_CHAR in text or _MOJIBAKE.search(text) is not None


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` UTF-16 units (Dataverse's count), never half a surrogate pair."""
    return text.encode("utf-16-le")[: 2 * limit].decode("utf-16-le", errors="ignore")


def clean_text(value: Any) -> str | None:
    """A usable text: trimmed, NFC, not empty, not wrongly encoded; else None."""
    text = nfc(value) if isinstance(value, str) else None
    return text if text and not wrongly_encoded(text) else None


def expected_country(value: Any) -> str | None:
    """ISO alpha-2 of a code, alpha-3 or English name (pycountry; XK = Kosovo), as docs/settings.md says."""
    import pycountry

    text = value.strip() if isinstance(value, str) else ""
    if not text:
        return None
    if text.upper() == "XK":
        return "XK"
    if len(text) == 2:
        return text.upper() if pycountry.countries.get(alpha_2=text.upper()) else None
    try:
        return pycountry.countries.lookup(text).alpha_2
    except LookupError:
        return None


def expected_phone(value: Any, citizenship: Any, default_region: str | None = None) -> str | None:
    """E.164 (+ " ext. N" when it fits the column) when phonenumbers finds the number valid for the citizenship's
    region, then ``default_region``, or it is typed internationally (+/00) with a possible length; else None."""
    import phonenumbers

    text = value.strip() if isinstance(value, str) else ""
    if not text or any(ch.isalpha() for ch in re.sub(r"(?i)ext\.?|x", "", text)):
        return None
    country = expected_country(citizenship)
    regions = [r for r in (country, default_region) if r and r in phonenumbers.SUPPORTED_REGIONS] or [None]
    for region in regions:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        international = text.startswith(("+", "00"))
        if phonenumbers.is_valid_number(number) or (international and phonenumbers.is_possible_number(number)):
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            with_ext = f"{e164} ext. {number.extension}" if number.extension else e164
            return with_ext if len(with_ext) <= COLUMN_LIMITS["mobilephone"] else e164
    return None


def expected_email(value: Any) -> str | None:
    from email_validator import EmailNotValidError, validate_email

    text = value.strip() if isinstance(value, str) else ""
    if not text:
        return None
    try:
        validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        return None
    return text


def full_name(a: dict[str, Any]) -> str | None:
    """``name.full`` as DreamApply renders it: the given, middle and family names joined."""
    return " ".join(p for p in (a.get("given"), a.get("middle"), a.get("family")) if p) or None


def usable_identity(a: dict[str, Any], default_region: str | None = None) -> bool:
    """The default identity rule: a family name or full name, and an e-mail or a phone, each valid."""
    named = clean_text(a.get("family")) is not None or clean_text(full_name(a)) is not None
    reachable = expected_email(a.get("email")) is not None or (
        expected_phone(a.get("phone"), a.get("citizenship"), default_region) is not None
    )
    return named and reachable


def expected_profile(a: dict[str, Any], default_region: str | None = None) -> dict[str, Any]:
    """The lead's profile columns for a raw record with a usable identity (None = left out or cleared)."""
    given, middle = clean_text(a.get("given")), clean_text(a.get("middle"))
    family = clean_text(a.get("family")) or clean_text(full_name(a))
    return {
        "firstname": _cut(given, COLUMN_LIMITS["firstname"]) if given else None,
        "middlename": _cut(middle, COLUMN_LIMITS["middlename"]) if middle else None,
        "lastname": _cut(family, COLUMN_LIMITS["lastname"]) if family else None,
        "emailaddress1": expected_email(a.get("email")),
        "mobilephone": expected_phone(a.get("phone"), a.get("citizenship"), default_region),
        "uni_citizenship": expected_country(a.get("citizenship")),
    }


ISSUE_FIELDS = ("name_given", "name_middle", "name_family", "name_full", "email", "phone", "citizenship")


def expected_field_issues(a: dict[str, Any], default_region: str | None = None) -> set[str]:
    """The fields of ``ISSUE_FIELDS`` a raw record holds an invalid value in (present, but unusable)."""
    texts = {
        "name_given": a.get("given"),
        "name_middle": a.get("middle"),
        "name_family": a.get("family"),
        "name_full": full_name(a),
    }
    bad = {f for f, v in texts.items() if isinstance(v, str) and v.strip() and wrongly_encoded(v)}
    email = a.get("email").strip() if isinstance(a.get("email"), str) else ""
    if email and (expected_email(email) is None or len(email) > COLUMN_LIMITS["emailaddress1"]):
        bad.add("email")
    phone = a.get("phone").strip() if isinstance(a.get("phone"), str) else ""
    if phone and expected_phone(phone, a.get("citizenship"), default_region) is None:
        bad.add("phone")
    citizenship = a.get("citizenship").strip() if isinstance(a.get("citizenship"), str) else ""
    if citizenship and expected_country(citizenship) is None:
        bad.add("citizenship")
    return bad


def settings_file(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """The repository's settings with ``change`` applied, written to ``tmp_path/settings.yaml``."""
    data = yaml.safe_load(REPO_SETTINGS.read_text(encoding="utf-8"))
    change(data)
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def autumn_term(data: dict[str, Any]) -> None:
    """Every "Fall semester" needs the new picklist option "Autumn term" (allowlisted, added by the plan)."""
    data["data_mapping"]["uni_academictermtype"] = {
        "source": "term.type",
        "picklist": True,
        "on_missing_option": "add",
        "add_allowlist": ["Autumn term"],
        "value_map": {"Fall semester": "Autumn term"},
    }


def latest_run(env: Any) -> Path:
    """The run folder of the newest run with a report."""
    return max(env.run_root.glob("*/*/report.json"), key=lambda p: p.stat().st_mtime).parent
