"""The real DAG against the sandbox's adversarial data: quality (Great Expectations) → consent → mapping.

Every extracted applicant ends in exactly one of: sent (a lead), skipped for consent, quarantined with a
reason; the counts add up; the expectations are checked against the sandbox's own records with the same
libraries (email-validator, phonenumbers, pycountry), not just against the report. And a batch over the
threshold stops the run before any lead data request or write reaches Dynamics.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import phonenumbers
import pycountry
from e2e.helpers import accepted_live, leads_by_applicant, raw_applicants
from email_validator import EmailNotValidError, validate_email

from d365.pipeline.settings import REPO_SETTINGS

DAG_DIR = "dreamapply_to_dynamics365"


def _newest_run(env: Any) -> Path:
    return max(env.run_root.glob(f"{DAG_DIR}/*/report.json"), key=lambda p: p.stat().st_mtime).parent


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _bad_fields(a: dict[str, Any]) -> set[str]:
    """What the sandbox's own record gets wrong, by an independent reading of the rules."""
    bad: set[str] = set()
    email = _text(a.get("email"))
    if email is not None:
        try:
            validate_email(email, check_deliverability=False)
        except EmailNotValidError:
            bad.add("email")
        if len(email.encode("utf-16-le")) // 2 > 100:
            bad.add("emailaddress1")
    cit = _text(a.get("citizenship"))
    region = None
    if cit is not None:
        if len(cit) == 2 and (cit.upper() == "XK" or pycountry.countries.get(alpha_2=cit.upper())):
            region = cit.upper() if cit.upper() != "XK" else None
        else:
            bad.add("citizenship")
    phone = _text(a.get("phone"))
    if phone is not None:
        try:
            number = phonenumbers.parse(phone, region)
            ok = phonenumbers.is_valid_number(number) or (
                phone.startswith(("+", "00")) and phonenumbers.is_possible_number(number)
            )
        except phonenumbers.NumberParseException:
            ok = False
        if not ok or any(ch.isalpha() for ch in phone.replace("ext", "")):
            bad.add("phone")
    if _text(a.get("given")) is None and _text(a.get("family")) is None:
        bad.add("name")
    return bad


def test_adversarial_data_every_applicant_in_exactly_one_state(sync_env) -> None:  # type: ignore[no-untyped-def]
    env = sync_env(applicants=150)
    assert env.run().state == "success"
    raw = raw_applicants(env.client)
    live = {i for i, a in raw.items() if not a["erased"]}
    eligible = accepted_live(raw)
    report = env.reports()[-1]
    run = _newest_run(env)
    outcomes = {o["applicant_id"]: o for o in _jsonl(run / "transform" / "outcomes.jsonl")}
    quarantine = {q["applicant_id"]: q for q in _jsonl(run / "quality" / "quarantine.jsonl")}
    leads = leads_by_applicant(env.leads())

    # the sandbox really holds the adversarial cases the issue names
    consented = [raw[i] for i in eligible]
    assert any(_text(a["email"]) is None for a in consented), "missing e-mails"
    assert any("email" in _bad_fields(a) for a in consented), "invalid e-mails"
    assert any(_text(a["given"]) is None or _text(a["family"]) is None for a in consented), "missing names"
    assert any(len(_text(a["family"]) or "") > 50 or len(_text(a["given"]) or "") > 50 for a in consented)
    emails = [(_text(raw[i]["email"]) or "").lower() for i in live]
    assert any(e and emails.count(e) > 1 for e in emails), "shared e-mails"
    scripts = {unicodedata.name(ch, "?").split()[0] for a in consented for ch in (a["family"] or "") if ord(ch) > 0x2FF}
    assert len(scripts) >= 5, scripts

    # exactly one state each, and the three sets cover every extracted applicant
    sent = set(leads)
    skipped = {i for i, o in outcomes.items() if o["state"] == "skipped_consent"}
    quarantined = {i for i, o in outcomes.items() if o["state"] == "quarantined"}
    assert not (sent & skipped) and not (sent & quarantined) and not (skipped & quarantined)
    assert sent | skipped | quarantined == live
    assert skipped == live - eligible  # consent decides first: never sent, whatever the data
    assert set(quarantine) == quarantined and all(q["reasons"] for q in quarantine.values())
    out = report["outcomes"]
    assert (out["created"], out["skipped_consent"], out["quarantined"]) == (len(sent), len(skipped), len(quarantined))
    assert out["created"] + out["skipped_consent"] + out["quarantined"] == len(live) == report["extracted"]

    # against the sandbox's own records: every consented applicant with bad data is quarantined for it,
    # and every quarantine is explained by its data (or, for the mapping, by a picklist option to add)
    for i in eligible:
        bad = _bad_fields(raw[i])
        reasons = " ".join(quarantine.get(i, {}).get("reasons", []))
        if bad:
            assert i in quarantined, (i, bad)
            for field in bad:
                assert f"{field}:" in reasons or f"{field} (" in reasons, (i, field, reasons)
        elif i in quarantined:
            assert reasons.startswith(("no picklist option", "mapping:")), (i, reasons)
    for i in sent:  # long names are cut (truncate policy), shared e-mails both sent
        family = unicodedata.normalize("NFC", _text(raw[i]["family"]) or "")
        if len(family) > 50:
            assert leads[i]["lastname"] == family[:50]

    # quality artefacts: linked from the report, GX result present, no personal data in any of them
    quality = report["quality"]
    assert quality["ok"] and quality["quarantined"] == len(quarantined)
    assert quality["summary"].endswith("quality/summary.md") and quality["gx_result"].endswith("gx_result.json")
    summary = json.loads((run / "quality" / "summary.json").read_text())
    assert {b["check"]: b["ok"] for b in summary["batch"]} == {"row_count_vs_api": True, "invalid_fraction": True}
    gx = json.loads((run / "quality" / "gx_result.json").read_text())
    assert gx["statistics"]["evaluated_expectations"] >= 10
    texts = [(run / "quality" / n).read_text() for n in ("quarantine.jsonl", "gx_result.json", "summary.md")]
    texts += [(run / "report.json").read_text(), (run / "transform" / "outcomes.jsonl").read_text()]
    personal = set()
    for i in live:
        a = raw[i]
        personal |= {v for v in (_text(a["email"]), _text(a["given"]), _text(a["family"])) if v and len(v) >= 6}
        digits = "".join(ch for ch in a["phone"] or "" if ch.isdigit())
        if len(digits) >= 8:
            personal.add(digits)
    for text in texts:
        leaked = [p for p in personal if p in text]
        assert not leaked, leaked[:5]

    # a resync is compared with the first load's size and X-Count too
    assert env.run(full_resync=True).state == "success"
    summary = json.loads((_newest_run(env) / "quality" / "summary.json").read_text())
    assert {b["check"] for b in summary["batch"] if b["ok"]} == {
        "row_count_vs_api",
        "row_count_vs_previous_full",
        "invalid_fraction",
    }


def test_the_threshold_stops_the_run_before_any_request_reaches_dynamics(sync_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        REPO_SETTINGS.read_text() + "\nquality:\n  max_invalid_fraction: 0.01\n  min_rows_for_threshold: 5\n"
    )
    env = sync_env(settings=settings, applicants=60)
    before = env.client.last_seq()
    run = env.run()
    assert run.state == "failed"

    # Preflight reads WhoAmI, the lead metadata, keys and the owner before the extract (by design). After
    # that nothing: no lead query (plan's lookups) and no write ($batch, POST/PATCH/DELETE on leads).
    dataverse = env.client.requests(server="dataverse", since=before)
    assert dataverse, "preflight talked to Dynamics"
    lead_data = [r for r in dataverse if "leads" in r["path"] or "$batch" in r["path"]]
    assert lead_data == []
    assert all(r["method"] == "GET" for r in dataverse)
    assert env.leads() == []

    folder = _newest_run(env)
    assert not (folder / "plan").exists() and not (folder / "load").exists()  # plan and load never ran
    assert (folder / "transform" / "leads.jsonl").read_text() == ""
    summary = json.loads((folder / "quality" / "summary.json").read_text())
    assert not summary["ok"]
    failed = [b for b in summary["batch"] if not b["ok"]]
    assert [b["check"] for b in failed] == ["invalid_fraction"]
    assert "FAILED" in (folder / "quality" / "summary.md").read_text()
    report = json.loads((folder / "report.json").read_text())
    assert report["quality"]["ok"] is False and report["quality"]["batch_failures"]
    assert report["outcomes"]["created"] == 0
