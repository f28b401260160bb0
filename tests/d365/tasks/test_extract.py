"""The extract task (``d365.tasks.extract``) against the sandbox over HTTPS: a first run reads every applicant
(cursors at 0) into the run folder; a manual send reads only the applicants it names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from d365.pipeline.runfiles import EXTRACT_APPLICANTS, EXTRACT_CATALOG, EXTRACT_META
from d365.tasks.context import RunContext
from d365.tasks.extract import extract_step
from d365.tasks.preflight import preflight


def test_a_first_run_extracts_every_applicant(connected: Any, run_context: Callable[..., RunContext]) -> None:
    rc = run_context()
    preflight(rc)
    out = extract_step(rc)
    ids = sorted(a["applicant_id"] for a in rc.folder.read_jsonl(EXTRACT_APPLICANTS))
    assert out["applicants"] == len(ids) == 4
    meta = rc.folder.read_json(EXTRACT_META)
    assert meta["cursors"]["applicant_id"] == max(ids) and meta["requested"] == []
    assert rc.folder.read_json(EXTRACT_CATALOG)  # the catalog the transform checks the settings against
    assert out["requests"] > 0 and connected.requests(server="dreamapply")  # real HTTPS reads


def test_a_manual_send_extracts_only_the_named_applicants(
    connected: Any, run_context: Callable[..., RunContext]
) -> None:
    rc = run_context("manual__some")
    preflight(rc)
    everyone = run_context("manual__all")
    preflight(everyone)
    extract_step(everyone)
    wanted = sorted(a["applicant_id"] for a in everyone.folder.read_jsonl(EXTRACT_APPLICANTS))[1]
    rc.params["applicant_ids"] = [wanted]  # type: ignore[index]  # a manual send names one applicant
    assert extract_step(rc)["applicants"] == 1
    assert [a["applicant_id"] for a in rc.folder.read_jsonl(EXTRACT_APPLICANTS)] == [wanted]
