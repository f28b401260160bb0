"""The real DAG against the sandbox's adversarial data: quality (Great Expectations) → consent → mapping.

Every extracted applicant ends in exactly one of: sent (a lead), skipped for consent, quarantined with a
reason; the counts add up; the expectations are checked against the sandbox's own records with the same
libraries (email-validator, phonenumbers, pycountry), not just against the report: an applicant is withheld
only for its identity (or an over-long e-mail, the default file's fit policy), and an invalid value is left
out of the lead (field policy ``drop``) and listed per applicant. An invalid value arriving in an edit clears
the lead's old value; a malformed record is quarantined with its id. And a batch over the threshold stops the
run before any lead data request or write reaches Dynamics.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import yaml
from e2e.helpers import (
    accepted_live,
    expected_country,
    expected_email,
    expected_phone,
    leads_by_applicant,
    raw_applicants,
    usable_identity,
)

from d365.pipeline.settings import REPO_SETTINGS

DAG_DIR = "dreamapply_to_dynamics365"


def _newest_run(env: Any) -> Path:
    return max(env.run_root.glob(f"{DAG_DIR}/*/report.json"), key=lambda p: p.stat().st_mtime).parent


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


# field → the lead column the default mapping feeds from it
COLUMNS = {"email": "emailaddress1", "phone": "mobilephone", "citizenship": "uni_citizenship"}


def _bad_fields(a: dict[str, Any]) -> set[str]:
    """What the sandbox's own record gets wrong, by an independent reading of the rules (e2e.helpers)."""
    bad: set[str] = set()
    email = _text(a.get("email"))
    if email is not None:
        if expected_email(email) is None:
            bad.add("email")
        if len(email.encode("utf-16-le")) // 2 > 100:
            bad.add("emailaddress1")
    if _text(a.get("citizenship")) is not None and expected_country(a.get("citizenship")) is None:
        bad.add("citizenship")
    if _text(a.get("phone")) is not None and expected_phone(a.get("phone"), a.get("citizenship")) is None:
        bad.add("phone")
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

    # against the sandbox's own records: a consented applicant is withheld only without a usable identity
    # (or for an over-long e-mail: fit_policy quarantine in the default file); any other bad value is left
    # out of its lead (null) and listed per applicant; every quarantine is explained by its data (or, for
    # the mapping, by a picklist option to add)
    issues = {r["applicant_id"]: r for r in _jsonl(run / "quality" / "field_issues.jsonl")}
    withheld_for_data = 0
    with_bad_values_sent = 0
    for i in eligible:
        bad = _bad_fields(raw[i])
        reasons = " ".join(quarantine.get(i, {}).get("reasons", []))
        if not usable_identity(raw[i]):
            assert i in quarantined and "identity: no usable" in reasons, (i, reasons)
            withheld_for_data += 1
        elif "emailaddress1" in bad:
            assert i in quarantined and "emailaddress1 (email): longer than the column" in reasons, (i, reasons)
        elif i in quarantined:
            assert reasons.startswith(("no picklist option", "mapping:")), (i, reasons)
        for field in bad & set(COLUMNS):
            assert field in {x["field"] for x in issues[i]["issues"]}, (i, field, issues.get(i))
            if i in sent:
                assert leads[i].get(COLUMNS[field]) is None, (i, field)  # left out: the lead has no value
        if bad & set(COLUMNS) and i in sent:
            with_bad_values_sent += 1
    assert with_bad_values_sent >= 3, "consenting applicants with an invalid phone/country/e-mail are sent"
    assert withheld_for_data < len(eligible) * 0.05
    # per field and reason in the summary and the report, the same as the per-applicant listing
    counted: dict[str, dict[str, int]] = {}
    for row in issues.values():
        for x in {(x["field"], x["code"]) for x in row["issues"]}:
            counted.setdefault(x[0], {}).setdefault(x[1], 0)
            counted[x[0]][x[1]] += 1
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
    assert summary["field_issues"] == counted and set(counted) >= {"phone", "email", "citizenship"}
    assert quality["field_issues"] == counted and quality["field_issues_file"].endswith("field_issues.jsonl")
    assert "## Field issues" in (run / "quality" / "summary.md").read_text()
    gx = json.loads((run / "quality" / "gx_result.json").read_text())
    assert gx["statistics"]["evaluated_expectations"] >= 10
    names = ("quarantine.jsonl", "gx_result.json", "summary.md", "field_issues.jsonl")
    texts = [(run / "quality" / n).read_text() for n in names]
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
    data = yaml.safe_load(REPO_SETTINGS.read_text())
    data["quality"] |= {"max_invalid_fraction": 0.01, "min_rows_for_threshold": 5}
    settings.write_text(yaml.safe_dump(data, allow_unicode=True))
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


def test_an_invalid_value_in_an_edit_clears_the_old_one_and_a_malformed_record_is_quarantined(sync_env) -> None:  # type: ignore[no-untyped-def]
    """Field policy ``drop`` end to end: an edit that makes the phone or the citizenship invalid sends the
    update with the column null, and Dynamics no longer holds the old value; the applicant stays a lead. An
    applicant DreamApply starts serving malformed (a name as a string) is quarantined with its id, the run
    succeeds, and its lead keeps what it had."""
    env = sync_env(applicants=3)
    person = {"middle": None, "citizenship": "EE", "consents": {"1": "Accept"}}
    specs = [
        person | {"given": "Kadri", "family": "Phoneedit", "email": "kadri.pe@example.ee", "phone": "+372 5123 4501"},
        person | {"given": "Mart", "family": "Countryedit", "email": "mart.ce@example.ee", "phone": "+372 5123 4502"},
        person | {"given": "Liis", "family": "Wireedit", "email": "liis.we@example.ee", "phone": "+372 5123 4503"},
    ]
    phone_id, country_id, wire_id = env.client.post("/dreamapply/applicants", specs)["ids"]
    assert env.run().state == "success"
    before = leads_by_applicant(env.leads())
    assert before[phone_id]["mobilephone"] == "+37251234501" and before[country_id]["uni_citizenship"] == "EE"

    env.client.edit_applicant(phone_id, phone="(555) 123-4567")
    env.client.edit_applicant(country_id, citizenship="UK")
    env.client.serve_malformed(wire_id, set={"name": "Liis Wireedit"})
    assert env.run().state == "success"
    after = leads_by_applicant(env.leads())
    assert after[phone_id].get("mobilephone") is None  # cleared in Dynamics, not kept
    assert after[phone_id]["lastname"] == "Phoneedit" and after[phone_id]["emailaddress1"] == "kadri.pe@example.ee"
    assert after[country_id].get("uni_citizenship") is None and after[country_id]["mobilephone"] == "+37251234502"
    assert after[wire_id] == before[wire_id]  # quarantined: the lead keeps what it had
    report = env.reports()[-1]
    assert report["outcomes"]["updated"] == 2 and report["outcomes"]["quarantined"] == 1

    run = _newest_run(env)
    (held,) = _jsonl(run / "quality" / "quarantine.jsonl")
    assert held == {
        "applicant_id": wire_id,
        "row": held["row"],
        "reasons": ["record: malformed (name: text instead of an object)"],
    }
    listed = {r["applicant_id"]: r for r in _jsonl(run / "quality" / "field_issues.jsonl")}
    assert listed[phone_id]["state"] == "lead" and listed[country_id]["state"] == "lead"
    assert listed[phone_id]["issues"] == [
        {"field": "phone", "code": "invalid", "reason": "phone: not parseable to E.164", "action": "drop"}
    ]
    assert [i["field"] for i in listed[country_id]["issues"]] == ["citizenship"]
    assert report["quality"]["field_issues"] == {"citizenship": {"invalid": 1}, "phone": {"invalid": 1}}
