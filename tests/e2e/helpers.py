"""Facts about the sandbox's data, read independently of the pipeline, for e2e assertions."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from typing import Any

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
