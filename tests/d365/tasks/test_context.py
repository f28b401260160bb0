"""The run context (``d365.tasks.context``): params read as the DAG passes them, the lock demanded in the DAG,
step durations recorded, and the shared helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from d365.pipeline.ledger import Ledger
from d365.pipeline.runfiles import EXTRACT_META, PREFLIGHT, TIMINGS
from d365.pipeline.settings import load_settings
from d365.tasks.context import RunContext, _applicant_id, timed


def context(tmp_path: Path, params: dict[str, object] | None = None, **kwargs: object) -> RunContext:
    return RunContext.create(
        "dag",
        "r1",
        params,
        run_folder="file://" + str(tmp_path / "run"),
        settings=load_settings(),
        ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        **kwargs,  # type: ignore[arg-type]
    )


def test_manual_send_params_are_read_from_text_and_lists(tmp_path: Path) -> None:
    rc = context(tmp_path, {"applicant_ids": "3, 1 3", "tracker_codes": ["b", "a"], "dry_run": 1})
    rc.folder.write_json(EXTRACT_META, {"requested": [7, "2"]})  # resolved by the extract from the tracker codes
    assert rc.requested_ids == [1, 2, 3, 7]
    assert rc.tracker_codes == ["a", "b"] and rc.academic_term_ids == []
    assert rc.dry_run and not rc.full_resync


def test_in_the_dag_a_step_without_the_lock_stops(tmp_path: Path) -> None:
    rc = context(tmp_path, require_lock=True)
    rc.folder.write_json(PREFLIGHT, {"instance": "i"})
    ledger = Ledger(rc.ledger_url)
    try:
        with pytest.raises(AirflowFailException, match="extract: this run did not take the sync lock"):
            rc.hold_lock(ledger, "extract")
        assert context(tmp_path).hold_lock(ledger, "extract") is None  # outside the DAG: no lock, no version
    finally:
        ledger.dispose()
    assert rc.lock_fence() is None


def test_timed_records_the_duration_even_when_the_step_fails(tmp_path: Path) -> None:
    rc = context(tmp_path)

    def failing(_: RunContext) -> None:
        raise RuntimeError("boom")

    assert timed(rc, "ok", lambda _: {"n": 1}) == {"n": 1}
    with pytest.raises(RuntimeError, match="boom"):
        timed(rc, "failing", failing)
    assert [row["step"] for row in rc.folder.read_jsonl(TIMINGS)] == ["ok", "failing"]


def test_applicant_ids_are_positive_whole_numbers_only() -> None:
    assert [_applicant_id(v) for v in (5, " 12 ", "0", 0, -3, True, "x", 1.5, None)] == [5, 12, None] + [None] * 6
