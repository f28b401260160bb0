"""The load's progress lines (``load_runner.LoadProgress``): a load of a few hundred leads over TLS against the
sandbox, with a tiny cadence, logs where it stands with the plan's totals, and nothing of the leads themselves."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from planned import planned_create

from d365.hooks.dynamics import DynamicsHook
from d365.operators import load_runner
from d365.operators.load_leads import PLAN_FILE, LoadLeadsOperator
from d365.operators.load_runner import LoadProgress, throttling_waits
from d365.pipeline.ledger import LeadState, Ledger, LedgerUpdate
from sandbox import Sandbox
from sandbox.client import SandboxClient, airflow_connections

INSTANCE = "progress.example"
N_LEADS = 300
DONE_BEFORE = 60  # written by an earlier try: counted as done, not sent again
BATCH = 20
LINE = re.compile(
    r"load progress: (?P<done>[\d,]+) of (?P<total>[\d,]+) leads \((?P<pct>\d+)%\), "
    r"batch (?P<batch>\d+) of ~(?P<of>\d+), "
    r"[\d.,]+ leads/s, throttling waits \d+ \([\d.,]+ s\)(, \d+ answered 429)?, ETA \d+:\d\d:\d\d"
)


def test_load_progress_lines_have_the_plans_totals_and_no_personal_data(
    make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sb, client = make_sandbox(applicants=5)
    for name, conn in airflow_connections(sb.info()).items():
        monkeypatch.setenv(name, json.dumps(conn))
    hook = DynamicsHook()
    owner = str(hook.find_systemuser(email="anna.virtanen@university.example")["systemuserid"])
    hook.close()
    ops = [planned_create(a, owner, instance=INSTANCE) for a in range(1, N_LEADS + 1)]
    folder = tmp_path / "run"
    (folder / "plan").mkdir(parents=True)
    skip = {"action": "skip", "applicant_id": 999, "lead_id": None}  # not a write: not in the total
    (folder / PLAN_FILE).write_text("".join(json.dumps(r) + "\n" for r in [skip, *(op.to_json() for op in ops)]))
    target = {"connection_id": "dynamics365_default", "entity": "lead", "entity_set": "leads", "primary_id": "leadid"}
    (folder / "preflight.json").write_text(json.dumps({"instance": INSTANCE, "target": target}))
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(ledger_url)
    done = [
        LedgerUpdate(op.applicant_id, LeadState.SENT, lead_id=op.lead_id, payload_hash=op.payload_hash, synced=True)
        for op in ops[:DONE_BEFORE]
    ]
    ledger.record(INSTANCE, done)
    ledger.dispose()
    monkeypatch.setattr(load_runner, "PROGRESS_BATCHES", 4)
    monkeypatch.setattr(load_runner, "PROGRESS_SECONDS", 3600.0)
    caplog.set_level(logging.DEBUG)

    LoadLeadsOperator(
        task_id="load", run_folder="file://" + str(folder), instance=INSTANCE, ledger_url=ledger_url, batch_size=BATCH
    ).execute({"run_id": "progress"})  # type: ignore[arg-type]

    lines = [m for m in caplog.messages if m.startswith("load progress:")]
    sent_batches = (N_LEADS - DONE_BEFORE) // BATCH  # 12: a line after batches 4, 8 and 12 (the last says it all)
    assert len(lines) == sent_batches // 4 == 3
    parsed = [LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert [int(m["total"].replace(",", "")) for m in parsed] == [N_LEADS] * 3  # the plan's writes, skip rows not
    assert [int(m["batch"]) for m in parsed] == [4, 8, 12]
    assert [int(m["done"].replace(",", "")) for m in parsed] == [DONE_BEFORE + b * BATCH for b in (4, 8, 12)]
    assert [int(m["of"]) for m in parsed] == [sent_batches] * 3  # the batches still to come, from what is left
    assert parsed[-1]["pct"] == "100" and lines[-1].endswith("ETA 0:00:00")
    assert len(client.get("/dataverse/leads")) == N_LEADS - DONE_BEFORE  # the skipped ones were not sent
    # per-batch lines went to debug (none failed); nothing of a lead in the progress lines
    assert not any(re.match(r"batch \d+: ", r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO)
    personal = [v for op in ops for v in (op.body or {}).values() if isinstance(v, str) and not v.isdigit()]
    for line in lines:
        assert not any(value in line for value in personal) and "@" not in line and owner not in line


def test_progress_names_the_throttling_waits_so_far() -> None:
    snapshot = {"retry_after_waits": 2, "retry_after_wait_seconds": 10.0, "pacing_waits": 3, "pacing_wait_seconds": 2.5}
    assert throttling_waits(snapshot) == "throttling waits 5 (12.5 s)"
    assert throttling_waits({**snapshot, "throttled_429": 2}) == "throttling waits 5 (12.5 s), 2 answered 429"
    assert throttling_waits({}) == "throttling waits 0 (0.0 s)"  # a throttle that has not waited yet
    now = [0.0]
    progress = LoadProgress(100, 10, throttle=lambda: snapshot, clock=lambda: now[0])
    now[0] = 5.0
    progress.recorded(10, {"skipped": 0})
    assert progress.line() == (
        "load progress: 10 of 100 leads (10%), batch 1 of ~10, 2.0 leads/s, throttling waits 5 (12.5 s), ETA 0:00:45"
    )
