"""The real DAG: a record that fails five runs in a row is parked, listed in the report, not re-sent (not even
when its applicant changes), and sent again after ``python -m d365.parking release``.

The failure is real: the sandbox's Dataverse refuses ``InsertOptionValue`` (a fault rule, 400), so every
applicant whose lead needs the new picklist option "Autumn term" fails before its load, run after run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from e2e.helpers import autumn_term, leads_by_applicant, settings_file

from d365.parking import main as parking_command
from d365.pipeline.ledger import LeadState, Ledger, parked_records


def fault(env: Any, rule: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in env.client.get("/faults")["rules"] if r["id"] == rule["id"])


def test_a_record_failing_five_runs_is_parked_held_back_and_sent_after_release(
    sync_env: Any, tmp_path: Path, capsys: Any
) -> None:
    env = sync_env(settings=settings_file(tmp_path, autumn_term), applicants=20)
    rule = env.client.add_fault(kind="status", server="dataverse", path="InsertOptionValue", status=400)

    assert env.run().state == "success"
    first = env.reports()[-1]
    failing = sorted({f["applicant_id"] for f in first["failures"]})
    assert failing, "no applicant needed the new option: the scenario would prove nothing"
    assert first["parked"]["newly_parked"] == []
    per_run = fault(env, rule)["fired"]
    assert per_run >= 1  # the refused InsertOptionValue is what failed them

    for run in range(2, 6):  # runs 2 to 5: the failed ones are retried, and fail again
        assert env.run().state == "success"
        report = env.reports()[-1]
        assert sorted({f["applicant_id"] for f in report["failures"]}) == failing, run
        if run < 5:
            assert report["parked"]["newly_parked"] == [], run
    assert fault(env, rule)["fired"] == 5 * per_run  # refused again in every run: the failure was real

    fifth = env.reports()[-1]
    assert sorted(r["applicant_id"] for r in fifth["parked"]["newly_parked"]) == failing
    assert all(r["failed_runs"] == 5 for r in fifth["parked"]["newly_parked"])
    assert {r.get("error_code") for r in fifth["parked"]["newly_parked"]} == {"before_load"}  # says why
    assert fifth["parked"]["total"] == len(failing)
    ledger = Ledger(env.ledger_url)
    try:
        parked = parked_records(ledger)
        assert sorted(r.applicant_id for r in parked) == failing
        entries = ledger.entries(parked[0].instance, failing)
        assert all(entries[a].state is LeadState.FAILED and entries[a].attempts == 5 for a in failing)
    finally:
        ledger.dispose()

    # run 6: nothing retried; an edited parked applicant is held back, not sent
    changed = failing[0]
    env.client.edit_applicant(changed, given="Parkedname")
    matched = fault(env, rule)["matched"]
    assert env.run().state == "success"
    sixth = env.reports()[-1]
    assert sixth["parked"]["held_back"] == [changed] and sixth["outcomes"]["parked"] == 1
    assert sixth["failures"] == [] and sixth["parked"]["newly_parked"] == []
    assert fault(env, rule)["matched"] == matched  # no option was even asked for
    leads = leads_by_applicant(env.leads())
    assert not set(failing) & set(leads)

    # release, and the Dataverse side is fixed: the next run sends them
    env.client.clear_faults()
    assert parking_command(["--ledger-url", env.ledger_url, "release", "--all"]) == 0
    assert f"released {len(failing)} parked applicants" in capsys.readouterr().out
    assert env.run().state == "success"
    seventh = env.reports()[-1]
    assert seventh["failures"] == [] and seventh["parked"]["total"] == 0
    leads = leads_by_applicant(env.leads())
    assert set(failing) <= set(leads)
    assert leads[changed].get("firstname") == "Parkedname"
