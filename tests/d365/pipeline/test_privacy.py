"""Withdrawal and erasure planning per action, personal columns, run-file scrubbing, value-free messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from d365.pipeline.fit import FitPolicy, LeadSchema, check_mapping, fit_value
from d365.pipeline.ledger import LeadState, Ledger, LedgerEntry, LedgerUpdate
from d365.pipeline.mapping_result import MappedLead
from d365.pipeline.plan import ERASE, ERASED, UPDATE, WITHDRAW, Operation, plan_operations
from d365.pipeline.privacy import (
    DEACTIVATE,
    ERASED_PLACEHOLDER,
    anonymise_payload,
    erasure_operations,
    pending_erasures,
    personal_columns,
    redact,
    scrub_run_files,
    unexpected_columns,
    withdrawal_operations,
)
from d365.pipeline.settings import DEFAULT_WITHDRAWAL_FLAGS, Settings, load_settings, parse_settings

DEFAULT = load_settings()
SCHEMA = LeadSchema.from_metadata_json()


def with_actions(on_withdrawal: str = "flag", erasure: str = "delete") -> Settings:
    return DEFAULT.model_copy(
        update={
            "consent": DEFAULT.consent.model_copy(update={"on_withdrawal": on_withdrawal}),
            "erasure": DEFAULT.erasure.model_copy(update={"action": erasure}),
        }
    )


def entry(aid: int, lead_id: str | None, state: LeadState = LeadState.SENT, reason: str | None = None) -> LedgerEntry:
    return LedgerEntry(aid, lead_id, state, "h" if lead_id else None, False, 0, None, reason)


# -- personal columns ----------------------------------------------------------------------------------


def test_personal_columns_of_the_default_mapping() -> None:
    assert personal_columns(DEFAULT) == [
        "firstname",
        "middlename",
        "lastname",
        "emailaddress1",
        "mobilephone",
        "uni_registeredon",
        "uni_citizenship",
        "uni_reference",
        "uni_matriculation",
    ]


def test_fallbacks_and_templates_that_read_names_are_personal() -> None:
    s = parse_settings(
        {
            "data_mapping": {
                "subject": {"template": "Applicant {applicant.name.full}"},
                "description": {"template": "Applicant {applicant.id}, term {term.name}"},
                "lastname": {"source": "term.name", "fallback": ["applicant.name.family"]},
                "uni_academicterm": "term.name",
                "uni_leadstage": {"constant": 1},
            }
        }
    )
    assert personal_columns(s) == ["subject", "lastname"]


def test_anonymise_clears_personal_columns_and_keeps_a_placeholder_for_required_ones() -> None:
    body = anonymise_payload(DEFAULT, SCHEMA)
    assert set(body) == set(personal_columns(DEFAULT))
    assert body["lastname"] == ERASED_PLACEHOLDER  # ApplicationRequired in the lead table
    assert all(v is None for k, v in body.items() if k != "lastname")
    assert "uni_applicantid" not in body and "subject" not in body  # the lead stays recognisably erased
    assert anonymise_payload(DEFAULT)["lastname"] is None  # without a schema nothing is known to be required


# -- withdrawal ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "method", "payload"),
    [
        ("flag", "PATCH", dict.fromkeys(DEFAULT_WITHDRAWAL_FLAGS, True)),
        ("deactivate", "PATCH", {"statecode": 2, "statuscode": 6}),
        ("delete", "DELETE", {}),
    ],
)
def test_withdrawal_operation_per_action(action: str, method: str, payload: dict[str, Any]) -> None:
    entries = {1: entry(1, "L1")}
    [op] = withdrawal_operations([1], entries, with_actions(on_withdrawal=action))
    assert (op.action, op.lead_id, op.method, op.body) == (WITHDRAW, "L1", method, payload)
    assert op.reason == f"consent withdrawn: {action}"


def test_withdrawal_only_for_applicants_with_a_lead_not_yet_withdrawn_or_erased() -> None:
    entries = {
        1: entry(1, "L1"),  # sent: withdraw
        2: entry(2, None, LeadState.SKIPPED_CONSENT),  # never sent: stays skipped, no request
        3: entry(3, "L3", LeadState.WITHDRAWN),  # already withdrawn: never touched again
        4: entry(4, "L4", LeadState.ERASED),
        5: entry(5, "L5", LeadState.FAILED),  # an earlier withdrawal or update failed: (again) withdraw
        6: entry(6, "L6", LeadState.SKIPPED_CONSENT),  # withdrawn before this feature existed
        8: entry(8, "L8"),  # erased in the same run: the erasure wins
    }
    ops = withdrawal_operations([1, 2, 3, 4, 5, 6, 7, 8], entries, DEFAULT, exclude=[8])
    assert [op.applicant_id for op in ops] == [1, 5, 6]


def test_withdrawn_applicant_who_accepts_again_is_updated_again() -> None:
    ops = plan_operations([MappedLead(1, {"firstname": "A"})], {1: entry(1, "L1", LeadState.WITHDRAWN)}, instance="x")
    assert [(op.action, op.lead_id) for op in ops] == [(UPDATE, "L1")]


# -- erasure -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "method"),
    [("delete", "DELETE"), ("anonymise", "PATCH"), ("flag", "PATCH")],
)
def test_erasure_operation_per_action(action: str, method: str) -> None:
    s = with_actions(erasure=action)
    entries = {
        1: entry(1, "L1"),
        2: entry(2, None, LeadState.SKIPPED_CONSENT),
        4: entry(4, "L4", LeadState.ERASED),
        5: entry(5, "L5", LeadState.ERASING, reason="right to be forgotten: flag"),
    }
    ops = {op.applicant_id: op for op in erasure_operations([1, 2, 3, 4, 5], entries, s, SCHEMA)}
    assert set(ops) == {1, 2, 3, 5}  # 4 was erased earlier
    # 5: the CRM action was done by an earlier run whose commit failed: no request again, only the scrub
    assert (ops[5].action, ops[5].lead_id, ops[5].body, ops[5].reason) == (
        ERASED,
        "L5",
        {},
        "right to be forgotten: flag",
    )
    assert (ops[1].action, ops[1].lead_id, ops[1].method) == (ERASE, "L1", method)
    assert ops[1].reason == f"right to be forgotten: {action}"
    expected = {
        "delete": {},
        "anonymise": anonymise_payload(s, SCHEMA),
        "flag": dict.fromkeys(DEFAULT_WITHDRAWAL_FLAGS, True),
    }[action]
    assert ops[1].body == expected
    for never_sent in (2, 3):  # known without a lead, or unknown: recorded, no request
        assert (ops[never_sent].action, ops[never_sent].lead_id, ops[never_sent].body) == (ERASED, None, {})


def test_erased_applicants_are_never_sent_again_nor_looked_up() -> None:
    from d365.pipeline.plan import needs_lookup

    mapped = [MappedLead(4, {"firstname": "A"}), MappedLead(5, {"firstname": "B"})]
    entries = {4: entry(4, None, LeadState.ERASED), 5: entry(5, "L5", LeadState.ERASED)}
    ops = plan_operations(mapped, entries, instance="x", force=True)
    assert [(op.action, op.body) for op in ops] == [(ERASED, {}), (ERASED, {})]
    assert needs_lookup(mapped, entries) == []


def test_failed_erasures_are_pending() -> None:
    entries = {
        1: entry(1, "L1", LeadState.FAILED, reason="right to be forgotten: delete"),
        2: entry(2, "L2", LeadState.FAILED, reason=None),
        3: entry(3, "L3", LeadState.FAILED, reason="consent withdrawn: flag"),
        4: entry(4, None, LeadState.ERASING, reason="right to be forgotten: delete"),  # scrub not done yet
        5: entry(5, None, LeadState.ERASED, reason="right to be forgotten: delete"),
    }
    assert pending_erasures(entries) == [1, 4]


# -- minimisation --------------------------------------------------------------------------------------


def test_only_mapped_and_identity_columns_may_leave() -> None:
    ok = [
        Operation(1, UPDATE, "L1", "h", {"firstname": "A", "uni_applicantid": "1", "uni_dreamapplyinstance": "x"}),
        Operation(2, WITHDRAW, "L2", "", dict(DEACTIVATE)),
        Operation(3, ERASE, "L3", "", anonymise_payload(DEFAULT, SCHEMA)),
        Operation(4, WITHDRAW, "L4", "", dict.fromkeys(DEFAULT_WITHDRAWAL_FLAGS, True)),
    ]
    assert unexpected_columns(ok, DEFAULT) == {}
    bad = [
        Operation(5, UPDATE, "L5", "h", {"firstname": "A", "description": "notes"}),
        Operation(6, UPDATE, "L6", "h", {"donotemail": True}),  # flags only in privacy operations
    ]
    assert unexpected_columns(bad, DEFAULT) == {5: ["description"], 6: ["donotemail"]}


def test_redact_removes_sent_values_from_error_texts() -> None:
    text = "Cannot convert the literal 'maria@example.com' to the expected type 'Edm.Int32'."
    assert redact(text, ["maria@example.com", None, 3, "ok"]) == (
        "Cannot convert the literal '[redacted]' to the expected type 'Edm.Int32'."
    )


def test_check_mapping_names_missing_withdrawal_flags() -> None:
    schema = LeadSchema(v for k, v in SCHEMA.items() if k != "donotfax")
    assert any("withdrawal_flags" in e and "donotfax" in e for e in check_mapping(DEFAULT, schema))
    deactivate = with_actions(on_withdrawal="deactivate", erasure="delete")
    assert not any("withdrawal_flags" in e for e in check_mapping(deactivate, schema))
    assert check_mapping(DEFAULT, SCHEMA) == []


@hsettings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.text(min_size=6, max_size=80).filter(lambda t: len(t.strip()) >= 6),
        st.emails(),
        st.from_regex(r"\+?[0-9 ()-]{6,25}", fullmatch=True),
    )
)
def test_fit_messages_never_quote_the_value(value: str) -> None:
    """Whatever a value is and whichever column it is forced into, the issue names the check, not the value."""
    policies = (FitPolicy(), FitPolicy(too_long="quarantine"), FitPolicy(picklist=True))
    for column in ("uni_leadstage", "firstname", "uni_registeredon", "donotemail", "uni_termstartdate"):
        for policy in policies:
            _fitted, issue = fit_value(SCHEMA[column], value, policy)
            if issue is not None:
                assert value.strip() not in issue.message, (column, issue)


# -- run files -----------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_scrub_run_files_removes_the_applicants_everywhere(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    erased = {"applicant_id": 7, "email": "erin.erased@example.org", "name_given": "Erin", "phone": "+3725551234"}
    other = {"applicant_id": 8, "email": "otto@example.org", "name_given": "Otto"}
    for run in ("dag/run1", "dag/run2"):
        _write_jsonl(root / run / "extract/applicants.jsonl", [erased, other])
        _write_jsonl(root / run / "transform/outcomes.jsonl", [{"applicant_id": "7", "state": "quarantined"}])
        _write_jsonl(
            root / run / "transform/leads.jsonl",
            [{"applicant_id": 8, "payload": {"firstname": "Otto"}}, {"applicant_id": 7, "payload": {}}],
        )
        _write_jsonl(root / run / "plan/operations.jsonl", [{"applicant_id": 7, "action": "update"}])
        _write_jsonl(root / run / "load/results.jsonl", [{"applicant_id": 7, "outcome": "updated"}])
    quality = root / "dag/run2/quality"
    quality.mkdir(parents=True)
    (quality / "result.json").write_text(
        json.dumps(
            {
                "rows": [{"applicant_id": 7, "reason": "x"}, {"applicant_id": 8, "reason": "y"}],
                "partial_unexpected_list": ["erin.erased@example.org", "Erin", "bad@"],
                "note": "first failing value: erin.erased@example.org",
            }
        ),
        encoding="utf-8",
    )
    (quality / "summary.md").write_text("unexpected: erin.erased@example.org, Erin\n", encoding="utf-8")
    (root / "dag/run2/binary.bin").write_bytes(b"\xff\xfe\x00erin")

    changed = scrub_run_files(root, [7])
    assert changed >= 10
    for path in root.rglob("*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert all(int(r["applicant_id"]) != 7 for r in rows), path
    assert [json.loads(x) for x in (root / "dag/run1/extract/applicants.jsonl").read_text().splitlines()] == [other]
    for path in root.rglob("*"):
        if path.is_file() and path.suffix != ".bin":
            text = path.read_text()
            assert "erin.erased@example.org" not in text and "+3725551234" not in text, path
    result = json.loads((quality / "result.json").read_text())
    assert result["rows"] == [{"applicant_id": 8, "reason": "y"}]
    assert result["partial_unexpected_list"] == ["[erased]", "[erased]", "bad@"]
    assert "Erin" in (quality / "summary.md").read_text()  # short values only where they are a whole string
    assert scrub_run_files(root, [7]) == 0  # nothing left: nothing rewritten
    assert scrub_run_files(tmp_path / "missing", [7]) == 0
    assert scrub_run_files(root, []) == 0


# -- ledger --------------------------------------------------------------------------------------------


def test_ledger_forgets_a_deleted_lead_and_scrub_keeps_only_the_proof(ledger: Ledger) -> None:
    ledger.record("i", [LedgerUpdate(1, LeadState.SENT, lead_id="L1", payload_hash="h", synced=True)])
    ledger.record("i", [LedgerUpdate(1, LeadState.FAILED, error_code="500", error="boom", reason="x")])
    ledger.record("i", [LedgerUpdate(1, LeadState.ERASED, reason="right to be forgotten: delete", clear_lead_id=True)])
    assert ledger.scrub("i", [1], reason="right to be forgotten: delete") == 1
    e = ledger.entries("i")[1]
    assert (e.state, e.lead_id, e.payload_hash, e.last_error_code) == (LeadState.ERASED, None, None, None)
    assert e.reason == "right to be forgotten: delete"


# -- commit and report steps (no network) --------------------------------------------------------------


def test_commit_finishes_erasures_keeps_withdrawals_and_report_counts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from d365.pipeline.runfiles import (
        EXTRACT_META,
        LOAD_RESULTS,
        PLAN_OPERATIONS,
        PREFLIGHT,
        REPORT,
        TRANSFORM_OUTCOMES,
    )
    from d365.runtime.runfolder import RunFolder
    from d365.tasks.commit import commit_step
    from d365.tasks.context import RunContext
    from d365.tasks.report import report_step

    root = tmp_path / "runs"
    monkeypatch.setenv("D365_SYNC_RUN_ROOT", "file://" + str(root))
    monkeypatch.setattr("d365.tasks.report.set_run_note", lambda *a: "none")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    ledger.record(
        "i",
        [
            LedgerUpdate(1, LeadState.SENT, lead_id="L1", payload_hash="h1", synced=True),  # erased now (delete)
            LedgerUpdate(2, LeadState.SENT, lead_id="L2", payload_hash="h2", synced=True),  # erase fails
            LedgerUpdate(3, LeadState.WITHDRAWN, lead_id="L3", reason="consent withdrawn: flag"),
            LedgerUpdate(4, LeadState.SENT, lead_id="L4", payload_hash="h4", synced=True),  # withdrawn now
        ],
    )
    old = RunFolder.for_run("dag", "old")
    old.write_jsonl(
        "extract/applicants.jsonl", [{"applicant_id": i, "email": f"person{i}@example.org"} for i in (1, 2, 5)]
    )
    rc = RunContext.create("dag", "now", {}, settings=DEFAULT, ledger_url=url)
    rc.folder.write_json(PREFLIGHT, {"instance": "i"})
    rc.folder.write_json(EXTRACT_META, {"cursors": {"applicant_id": 9}, "erased_applicant_ids": [1, 2, 6]})
    rc.folder.write_jsonl(
        TRANSFORM_OUTCOMES,
        [
            {"applicant_id": 3, "state": "skipped_consent", "reason": "required consent not accepted: consent 1"},
            {"applicant_id": 4, "state": "skipped_consent", "reason": "required consent not accepted: consent 1"},
            {"applicant_id": None, "state": "quarantined", "reason": "applicant_id is missing"},
        ],
    )
    ops = [
        Operation(4, WITHDRAW, "L4", "", {"donotemail": True}, reason="consent withdrawn: flag"),
        Operation(1, ERASE, "L1", "", {}, method="DELETE", reason="right to be forgotten: delete"),
        Operation(2, ERASE, "L2", "", {}, method="DELETE", reason="right to be forgotten: delete"),
        Operation(6, ERASED, None, "", reason="right to be forgotten: no lead was sent"),
    ]
    rc.folder.write_jsonl(PLAN_OPERATIONS, [op.to_json() for op in ops])
    # what the load did: 4 withdrawn, 1 erased, 2 failed (and recorded as such in the ledger)
    rc.folder.write_jsonl(
        LOAD_RESULTS,
        [
            {"applicant_id": 4, "outcome": "withdrawn", "status": 204},
            {"applicant_id": 1, "outcome": "erased", "status": 204},
            {"applicant_id": 2, "outcome": "failed", "status": 503, "error_code": "503", "error": "unavailable"},
        ],
    )
    ledger.record(
        "i",
        [
            LedgerUpdate(4, LeadState.WITHDRAWN, lead_id="L4", reason="consent withdrawn: flag"),
            LedgerUpdate(1, LeadState.ERASING, reason="right to be forgotten: delete", clear_lead_id=True),
            LedgerUpdate(2, LeadState.FAILED, error_code="503", error="unavailable", reason=ops[2].reason),
        ],
    )

    commit_step(rc)
    e = ledger.entries("i")
    assert e[3].state is LeadState.WITHDRAWN and e[4].state is LeadState.WITHDRAWN  # not overwritten
    assert (e[1].state, e[1].lead_id, e[1].payload_hash) == (LeadState.ERASED, None, None)
    assert (e[6].state, e[6].reason) == (LeadState.ERASED, "right to be forgotten: no lead was sent")
    assert (e[2].state, e[2].lead_id) == (LeadState.FAILED, "L2")  # retried next run
    assert pending_erasures(e) == [2]
    assert ledger.cursors("i")["applicant_id"] == 9
    remaining = [
        json.loads(x)["applicant_id"] for x in (root / "dag/old/extract/applicants.jsonl").read_text().splitlines()
    ]
    assert remaining == [5]  # erased applicants leave every run folder, a failed Dynamics action included
    assert [o.applicant_id for o in map(Operation.from_json, rc.folder.read_jsonl(PLAN_OPERATIONS))] == [4]

    out = report_step(rc)
    assert (out["withdrawn"], out["erased"], out["failed"], out["skipped_consent"]) == (1, 2, 1, 1)
    report = rc.folder.read_json(REPORT)
    assert [f["applicant_id"] for f in report["failures"]] == [2]
    ledger.dispose()


def test_an_erasure_stays_pending_until_the_scrub_succeeded_and_the_next_commit_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refuse_first_scrub: list[str]
) -> None:
    """The load deleted the lead (ledger: erasing); the commit's scrub of the run files fails (the store refuses a
    write): the commit fails, the ledger still says erasing and the cursors stay. The next run plans the
    applicant as ``erased`` (no request) and its commit scrubs files and ledger row."""
    from d365.pipeline.runfiles import (
        EXTRACT_META,
        LOAD_RESULTS,
        PLAN_OPERATIONS,
        PREFLIGHT,
        TRANSFORM_OUTCOMES,
    )
    from d365.runtime.runfolder import RunFolder
    from d365.tasks.commit import commit_step
    from d365.tasks.context import RunContext

    root = tmp_path / "runs"
    monkeypatch.setenv("D365_SYNC_RUN_ROOT", "file://" + str(root))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    old = RunFolder.for_run("dag", "old")
    rows = [{"applicant_id": i, "email": f"person{i}@example.org"} for i in (1, 5)]
    old.write_jsonl("extract/applicants.jsonl", rows)
    reason = "right to be forgotten: delete"

    def commit(run_id: str, ops: list[Operation], results: list[dict[str, Any]]) -> Any:
        rc = RunContext.create("dag", run_id, {}, settings=DEFAULT, ledger_url=url)
        rc.folder.write_json(PREFLIGHT, {"instance": "i"})
        rc.folder.write_json(EXTRACT_META, {"cursors": {"applicant_id": 9}, "erased_applicant_ids": [1]})
        rc.folder.write_jsonl(TRANSFORM_OUTCOMES, [])
        rc.folder.write_jsonl(PLAN_OPERATIONS, [op.to_json() for op in ops])
        rc.folder.write_jsonl(LOAD_RESULTS, results)
        return commit_step(rc)

    ledger.record("i", [LedgerUpdate(1, LeadState.SENT, lead_id="L1", payload_hash="h1", synced=True)])
    ledger.record("i", [LedgerUpdate(1, LeadState.ERASING, reason=reason, clear_lead_id=True)])  # what the load did
    fired = refuse_first_scrub
    erase = Operation(1, ERASE, "L1", "", {}, method="DELETE", reason=reason)
    with pytest.raises(OSError, match="refused"):
        commit("first", [erase], [{"applicant_id": 1, "outcome": "erased", "status": 204}])
    assert len(fired) == 1
    e = ledger.entries("i")
    assert e[1].state is LeadState.ERASING and pending_erasures(e) == [1]
    assert ledger.cursors("i")["applicant_id"] == 0  # the window is read again
    assert "person1@example.org" in (root / "dag/old/extract/applicants.jsonl").read_text()

    # the next run: planned from the ledger (no request to Dynamics), finished by its commit
    ops = erasure_operations(pending_erasures(e), e, DEFAULT, SCHEMA)
    assert [(op.applicant_id, op.action, op.reason) for op in ops] == [(1, ERASED, reason)]
    commit("second", ops, [])
    e = ledger.entries("i")
    assert (e[1].state, e[1].reason, e[1].payload_hash, e[1].lead_id) == (LeadState.ERASED, reason, None, None)
    assert ledger.cursors("i")["applicant_id"] == 9
    for path in root.rglob("*"):
        if path.is_file():
            assert "person1@example.org" not in path.read_text(), path
    assert "person5@example.org" in (root / "dag/old/extract/applicants.jsonl").read_text()
    ledger.dispose()
