"""Consent withdrawal and erasure reaching the sandbox's leads; nothing personal in reports, outcomes or ledger.

Settings changes between runs go through ``D365_SYNC_SETTINGS`` (read by every task at run time), so one
sandbox serves several actions.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from e2e.helpers import leads_by_applicant, personal_patterns, raw_applicants

from d365.pipeline.ledger import LeadState, Ledger, ledger_table
from d365.pipeline.privacy import allowed_columns, personal_columns
from d365.pipeline.settings import DEFAULT_WITHDRAWAL_FLAGS, REPO_SETTINGS, load_settings

DEFAULT = load_settings()


def _settings_file(tmp_path: Path, section: str, key: str, value: str) -> Path:
    data = yaml.safe_load(REPO_SETTINGS.read_text(encoding="utf-8"))
    data.setdefault(section, {})[key] = value
    path = tmp_path / f"settings-{section}-{value}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _instance(env: Any) -> str:
    return env.sandbox.endpoints.dreamapply_url.split("://", 1)[1]


def _ledger(env: Any) -> dict[int, Any]:
    ledger = Ledger(env.ledger_url)
    try:
        return ledger.entries(_instance(env))
    finally:
        ledger.dispose()


def _ledger_rows(env: Any) -> list[dict[str, Any]]:
    engine = sa.create_engine(env.ledger_url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(ledger_table))]
    finally:
        engine.dispose()


def _patch_applicant(env: Any, aid: int, changes: dict[str, Any]) -> None:
    r = env.client.http.patch(f"{env.client.admin_url}/dreamapply/applicants/{aid}", json=changes)
    r.raise_for_status()


def _consented_leads(env: Any) -> dict[int, dict[str, Any]]:
    """Sent applicants whose marketing consent does not matter here, with a full profile (email and phone)."""
    leads = leads_by_applicant(env.leads())
    return {aid: lead for aid, lead in sorted(leads.items()) if lead.get("emailaddress1") and lead.get("firstname")}


def test_consent_withdrawal_flags_the_lead_freezes_it_and_delete_removes_it(sync_env, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    env = sync_env(applicants=45)
    assert env.run().state == "success"
    sent = _consented_leads(env)
    x, y = list(sent)[:2]

    # (1) X withdraws the required consent → the lead gets the withdrawal flags (default action: flag)
    env.client.post(f"/dreamapply/applicants/{x}/consents", {"consent": 1, "decision": "Reject"})
    assert env.run().state == "success"
    lead = leads_by_applicant(env.leads())[x]
    assert all(lead[flag] is True for flag in DEFAULT_WITHDRAWAL_FLAGS), {f: lead[f] for f in DEFAULT_WITHDRAWAL_FLAGS}
    assert lead["firstname"] == sent[x]["firstname"]  # flagged, not changed otherwise
    out = env.reports()[-1]["outcomes"]
    assert out["withdrawn"] == 1 and out["skipped_consent"] == 0 and out["updated"] == 0
    entry = _ledger(env)[x]
    assert (entry.state, entry.lead_id, entry.reason) == (
        LeadState.WITHDRAWN,
        lead["leadid"],
        "consent withdrawn: flag",
    )

    # (2) X edits the name: never updated again. Y withdraws with on_withdrawal: delete → Y's lead is deleted.
    _patch_applicant(env, x, {"given": "Renamed"})
    env.client.post(f"/dreamapply/applicants/{y}/consents", {"consent": 1, "decision": "Reject"})
    monkeypatch.setenv("D365_SYNC_SETTINGS", str(_settings_file(tmp_path, "consent", "on_withdrawal", "delete")))
    assert env.run().state == "success"
    leads = leads_by_applicant(env.leads())
    assert leads[x]["firstname"] == sent[x]["firstname"] and leads[x]["modifiedon"] == lead["modifiedon"]
    assert y not in leads
    out = env.reports()[-1]["outcomes"]
    assert out["withdrawn"] == 1 and out["skipped_consent"] == 1 and out["updated"] == 0  # y withdrawn, x skipped
    entries = _ledger(env)
    assert entries[x].state is LeadState.WITHDRAWN  # the skipped_consent outcome did not overwrite it
    assert (entries[y].state, entries[y].lead_id, entries[y].reason) == (
        LeadState.WITHDRAWN,
        None,
        "consent withdrawn: delete",
    )

    # (3) X accepts again → sent again: the same lead is updated (the withdrawal flags are not reverted)
    env.client.post(f"/dreamapply/applicants/{x}/consents", {"consent": 1, "decision": "Accept"})
    assert env.run().state == "success"
    lead = leads_by_applicant(env.leads())[x]
    assert lead["firstname"] == "Renamed" and lead["leadid"] == sent[x]["leadid"] and lead["donotemail"] is True
    assert env.reports()[-1]["outcomes"]["updated"] == 1
    assert _ledger(env)[x].state is LeadState.SENT


def test_erasure_deletes_or_anonymises_the_lead_and_scrubs_ledger_and_run_files(
    sync_env, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    env = sync_env(applicants=45)
    assert env.run().state == "success"
    sent = _consented_leads(env)
    raw = raw_applicants(env.client)
    emails = Counter((a.get("email") or "").strip().lower() for a in raw.values())
    # applicants with an e-mail of their own (a shared address stays in the other applicant's records)
    x, y = [aid for aid in sent if emails[raw[aid]["email"].strip().lower()] == 1][:2]
    email_x = raw[x]["email"].strip()
    assert any(email_x in p.read_text(encoding="utf-8") for p in env.run_root.rglob("*.jsonl"))

    # (1) default action: delete
    env.client.post(f"/dreamapply/applicants/{x}/erase", {"request_to_be_forgotten": True})
    assert env.run().state == "success"
    assert x not in leads_by_applicant(env.leads())
    assert env.reports()[-1]["outcomes"]["erased"] == 1
    row = next(r for r in _ledger_rows(env) if r["applicant_id"] == x)
    assert row["state"] == LeadState.ERASED.value and row["lead_id"] is None
    assert row["payload_hash"] is None and row["last_error"] is None and row["last_error_code"] is None
    assert row["reason"] == "right to be forgotten: delete"
    for path in env.run_root.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        assert email_x not in text, path
        if path.suffix == ".jsonl":
            ids = [json.loads(line).get("applicant_id") for line in text.splitlines() if line.strip()]
            assert x not in ids and str(x) not in ids, path

    # (2) anonymise: the lead stays, its personal columns are empty, the applicant id identifies it as erased
    monkeypatch.setenv("D365_SYNC_SETTINGS", str(_settings_file(tmp_path, "erasure", "action", "anonymise")))
    env.client.post(f"/dreamapply/applicants/{y}/erase", {"request_to_be_forgotten": True})
    assert env.run().state == "success"
    lead = leads_by_applicant(env.leads())[y]
    for column in personal_columns(DEFAULT):
        assert lead.get(column) in (None, "(erased)"), (column, lead.get(column))
    assert lead["lastname"] == "(erased)" and lead.get("emailaddress1") is None and lead.get("firstname") is None
    assert sent[y].get("emailaddress1") and sent[y].get("firstname")  # they were set before
    assert lead["leadid"] == sent[y]["leadid"] and lead["subject"] == f"DreamApply applicant {y}"
    entries = _ledger(env)
    assert (entries[y].state, entries[y].lead_id) == (LeadState.ERASED, lead["leadid"])
    assert entries[y].reason == "right to be forgotten: anonymise" and entries[y].payload_hash is None
    out = env.reports()[-1]["outcomes"]
    assert out["erased"] == 1 and out["updated"] == 0 and out["created"] == 0  # x stays erased, unsent


def test_reports_outcomes_results_logs_and_ledger_carry_no_names_emails_or_phones(sync_env, caplog, capfd) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    env = sync_env(applicants=55)
    # adversarial records on top of the generated ones: odd values end in quarantine or fit messages
    env.client.post(
        "/dreamapply/applicants",
        [
            {"given": "Wilhelmina-Theodora-Maximiliana " * 3, "family": "Quarantinesson", "consents": {"1": "Accept"}},
            {"given": "Jörg", "family": "Überlänge-" * 8, "email": "not-an-email", "consents": {"1": "Accept"}},
            {"given": "Pat", "family": "Phoney", "phone": "call me maybe 555", "consents": {"1": "Accept"}},
            {"given": "Ema", "family": "Longmail", "email": "x" * 120 + "@example.org", "consents": {"1": "Accept"}},
            {"given": "Nadia", "family": "Noconsent", "email": "nadia.noconsent@example.org", "consents": {}},
        ],
    )
    assert env.run().state == "success"
    raw = {aid: a for aid, a in raw_applicants(env.client).items() if not a["erased"]}
    report = env.reports()[-1]
    assert report["quarantine"], "the adversarial records should produce quarantine reasons"

    texts: dict[str, str] = {}
    for folder in env.run_root.glob("*/*"):
        for name in ("report.json", "transform/outcomes.jsonl", "load/results.jsonl", "commit/privacy.json"):
            if (folder / name).exists():
                texts[f"{folder.name}/{name}"] = (folder / name).read_text(encoding="utf-8")
        for path in (folder / "quality").rglob("*") if (folder / "quality").exists() else ():
            if path.is_file():
                texts[f"{folder.name}/{path.relative_to(folder)}"] = path.read_text(encoding="utf-8", errors="replace")
        plan = folder / "plan" / "operations.jsonl"
        allowed = allowed_columns(DEFAULT) | set(DEFAULT_WITHDRAWAL_FLAGS) | {"statecode", "statuscode"}
        for line in plan.read_text(encoding="utf-8").splitlines() if plan.exists() else ():
            op = json.loads(line)
            body = dict(op["body"] or {})
            owner = body.pop("ownerid@odata.bind", None)  # a create's owner: a user GUID, no applicant data
            assert owner is None or (op["action"] == "create" and re.fullmatch(r"/systemusers\([0-9a-f-]{36}\)", owner))
            assert set(body) <= allowed  # only mapped fields leave DreamApply
    rows = _ledger_rows(env)
    texts["ledger"] = "\n".join(f"{r['reason'] or ''} {r['last_error'] or ''}" for r in rows)
    assert texts["ledger"].strip() and any("report.json" in k for k in texts)
    # The pipeline's log lines (steps, hooks, operator, Airflow's task log), at DEBUG. urllib3's own DEBUG
    # lines print whole request URLs (a lookup by e-mail has the addresses in its $filter): that library
    # logs at DEBUG only when someone configures it so, and is left out here.
    captured = capfd.readouterr()
    lines = [f"{r.name} {r.getMessage()}" for r in caplog.records if not r.name.startswith("urllib3")]
    lines += [line for line in (captured.out + captured.err).splitlines() if "urllib3" not in line]
    texts["log"] = "\n".join(lines)
    assert "committed" in texts["log"] and "d365" in texts["log"]

    patterns = personal_patterns(raw)
    extract = next(env.run_root.glob("*/*/extract/applicants.jsonl")).read_text(encoding="utf-8")
    found = {(aid, field) for aid, field, pattern in patterns if pattern.search(extract)}
    assert len(found) > len(raw), "the scan must find the personal values where they belong (the extract)"
    leaks = [
        (aid, field, where) for aid, field, pattern in patterns for where, text in texts.items() if pattern.search(text)
    ]
    assert not leaks, leaks[:20]


def _personal_text_of(env: Any, aid: int, raw: dict[int, dict[str, Any]]) -> list[tuple[str, str]]:
    """(where, field) for every place under the run root and in the ledger that holds one of ``aid``'s name,
    e-mail or phone."""
    patterns = [(field, pattern) for who, field, pattern in personal_patterns(raw) if who == aid]
    assert patterns, "the applicant must have personal values to look for"
    found = []
    for path in env.run_root.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            found += [(str(path.relative_to(env.run_root)), f) for f, p in patterns if p.search(text)]
    for row in _ledger_rows(env):
        text = " ".join(str(v) for v in row.values())
        found += [(f"ledger row {row['applicant_id']}", f) for f, p in patterns if p.search(text)]
    return found


def test_an_erasure_whose_commit_failed_is_finished_by_the_next_run(sync_env, refuse_first_scrub) -> None:  # type: ignore[no-untyped-def]
    """The load deletes the lead, then the commit fails while scrubbing the run files (the store refuses a write,
    injected once): the erasure stays pending (ledger: erasing) and the next run finishes it — no file under the
    run root and no ledger row holds the applicant's name, e-mail or phone afterwards."""

    env = sync_env(applicants=40)
    assert env.run().state == "success"
    raw = raw_applicants(env.client)
    sent = _consented_leads(env)
    emails = Counter((a.get("email") or "").strip().lower() for a in raw.values())
    x = next(aid for aid in sent if emails[raw[aid]["email"].strip().lower()] == 1 and raw[aid].get("phone"))
    assert _personal_text_of(env, x, raw), "before the erasure the run files hold the applicant"

    env.client.post(f"/dreamapply/applicants/{x}/erase", {"request_to_be_forgotten": True})
    fired = refuse_first_scrub
    first = env.run()
    assert first.state == "failed" and len(fired) == 1  # the fault hit, in the commit
    assert x not in leads_by_applicant(env.leads())  # the load deleted the lead
    entry = _ledger(env)[x]
    assert (entry.state, entry.reason) == (LeadState.ERASING, "right to be forgotten: delete")
    assert _personal_text_of(env, x, raw), "the failed commit left the applicant in the run files"

    second = env.run()
    assert second.state == "success" and len(fired) == 1
    entry = _ledger(env)[x]
    assert (entry.state, entry.lead_id, entry.payload_hash) == (LeadState.ERASED, None, None)
    assert _personal_text_of(env, x, raw) == []
    assert env.reports()[-1]["outcomes"].get("erased") == 1


def test_a_connection_error_in_the_email_lookup_leaves_no_address_in_the_task_log(
    sync_env, monkeypatch, capfd, caplog
) -> None:  # type: ignore[no-untyped-def]
    """A reset on every Dataverse lead query after the first (the lookup by applicant id passes, the lookup by
    e-mail meets the resets until the hook gives up): the plan task fails; its log, the traceback Airflow prints
    and the task log files name the error, the path and the cause's type, never an e-mail address."""
    import os

    from d365.hooks.dynamics import DynamicsHook

    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(DynamicsHook, "backoff_base", 0.01)  # the hook's retries, without the waiting
    env = sync_env(applicants=30)
    rule = env.client.add_fault(kind="reset", server="dataverse", method="GET", path=r"/leads$", nth=2, times=100)
    run = env.run()
    assert run.state == "failed"
    met = [e for e in env.client.requests(server="dataverse") if (e.get("fault") or {}).get("id") == rule["id"]]
    assert met and all("emailaddress1" in e["query"] for e in met), [e["query"] for e in met]
    assert len(met) == next(r["fired"] for r in env.client.get("/faults")["rules"] if r["id"] == rule["id"])

    captured = capfd.readouterr()
    texts = {"console": captured.out + captured.err}
    texts["records"] = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records if not r.name.startswith("urllib3")
    )
    for record in caplog.records:  # the exception objects themselves, with their whole chain
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            texts[f"exception {type(exc).__name__}"] = texts.get(f"exception {type(exc).__name__}", "") + str(exc)
            exc = exc.__cause__ or exc.__context__
    for path in Path(os.environ["AIRFLOW_HOME"], "logs").rglob("*"):
        if path.is_file() and "plan" in str(path):
            texts[str(path)] = path.read_text(encoding="utf-8", errors="replace")
    everything = "\n".join(texts.values())
    # the task's traceback, as Airflow prints it: the typed error alone, no chained cause (the urllib3 text)
    assert "Task failed with exception" in everything and "Traceback (most recent call last)" in everything
    assert "DynamicsError: Dynamics 365 | code ConnectionError | GET /api/data/v9.2/leads" in everything
    assert "direct cause of the following exception" not in everything
    assert "During handling of the above exception" not in everything

    raw = raw_applicants(env.client)
    emails = [(aid, p) for aid, field, p in personal_patterns(raw) if field == "email"]
    extract = next(env.run_root.glob("*/*/extract/applicants.jsonl")).read_text(encoding="utf-8")
    assert sum(1 for _, p in emails if p.search(extract)) > 10, "the scan finds addresses where they belong"
    leaks = [(aid, where) for aid, p in emails for where, text in texts.items() if p.search(text)]
    assert not leaks, leaks[:10]


@pytest.fixture(autouse=True)
def _settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the default settings file (a test may switch it mid-way)."""
    monkeypatch.delenv("D365_SYNC_SETTINGS", raising=False)
