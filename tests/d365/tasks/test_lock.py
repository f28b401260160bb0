"""The lock task (``d365.tasks.lock``) over a SQLite ledger: the first run takes the lease, a second one waits
(recording whom for) and takes it once the first releases it. The DAG's use of it: tests/d365/pipeline/test_lock.py."""

from __future__ import annotations

from pathlib import Path

from d365.pipeline.runfiles import LOCK, LOCK_WAITS, PREFLIGHT
from d365.pipeline.settings import load_settings
from d365.tasks.context import RunContext, release_lock
from d365.tasks.lock import lock_step


def run(tmp_path: Path, run_id: str) -> RunContext:
    rc = RunContext.create(
        "dag",
        run_id,
        {},
        run_folder="file://" + str(tmp_path / run_id),
        settings=load_settings(),
        ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
    )
    rc.folder.write_json(PREFLIGHT, {"instance": "lock.example"})
    return rc


def test_a_second_run_waits_for_the_first_and_takes_the_lock_after_it(tmp_path: Path) -> None:
    first, second = run(tmp_path, "r1"), run(tmp_path, "r2")
    taken = lock_step(first, dagrun_timeout=600)
    assert taken is not None and first.folder.read_json(LOCK) == taken
    assert taken["instance"] == "lock.example" and taken["waited_for"] == []

    assert lock_step(second) is None
    assert [w["holder"] for w in second.folder.read_jsonl(LOCK_WAITS)] == ["r1"]
    assert second.folder.read_json(LOCK) is None

    assert release_lock(first) == 1
    doc = lock_step(second)
    assert doc is not None and doc["waited_for"] == ["r1"] and doc["generation"] > taken["generation"]
