"""Three simulated days of messy data through the real DAG (issue 9, first "Must show" point).

Odd phones (``12``, ``(555) 123-4567``, ``127.555.6451``, ``+44 7700 9040040``), unknown citizenships (``XX``,
``UK``), wrongly encoded names (U+FFFD, ``JosÃ©``) and malformed records (a name given as a string, an id
``"12a"``) arrive in new registrations and in edits, beside consent withdrawals, late acceptances and erasures;
``POST /_sandbox/dreamapply/advance {"hours": 24}`` adds the sandbox's own activity (with some messy edits of
its own). After every step one sync run, then, judged from the sandbox's raw DreamApply records by the rules
of docs/settings.md and issue 9 (``e2e.helpers.expected_profile``), never from the pipeline's own output:

- every live applicant with the required consent and a usable identity has exactly one lead, carrying the
  current values: an invalid value is left out, and one arriving in an edit clears the lead's old value;
- applicants without consent, erased ones, malformed ones and ones without a usable identity have no lead, or
  keep the one they had with the configured action applied (withdrawal: flagged; erasure: deleted);
- malformed records are quarantined with their applicant id and a reason, and the run succeeds;
- the quality summary counts the field issues per field, and the run folder lists them per applicant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from e2e.helpers import (
    ISSUE_FIELDS,
    expected_field_issues,
    expected_profile,
    leads_by_applicant,
    personal_patterns,
    raw_applicants,
    usable_identity,
)

from d365.pipeline.settings import DEFAULT_WITHDRAWAL_FLAGS, load_settings
from sandbox.data.messy import mojibake, replacement_chars

DAG_DIR = "dreamapply_to_dynamics365"
PROFILE = ("firstname", "middlename", "lastname", "emailaddress1", "mobilephone", "uni_citizenship")


def _newest_run(env: Any) -> Path:
    return max(env.run_root.glob(f"{DAG_DIR}/*/report.json"), key=lambda p: p.stat().st_mtime).parent


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _person(n: int, **fields: Any) -> dict[str, Any]:
    """A consenting applicant with a clean profile, unless ``fields`` says otherwise."""
    spec = {
        "given": "Kadri",
        "middle": None,
        "family": f"Messy{n}",
        "email": f"messy{n}@example.ee",
        "phone": f"+372 5123 45{n:02d}",
        "citizenship": "EE",
        "consents": {"1": "Accept"},
    }
    spec.update(fields)
    return spec


class Days:
    """The scenario's bookkeeping: what each applicant had last, and what the test did to whom."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.client = env.client
        self.default_region = load_settings().quality.default_region
        self.ever_sent: dict[int, dict[str, Any]] = {}  # applicant → its lead as last seen
        self.malformed_since: dict[int, int] = {}  # applicant → step in which it became malformed
        self.withdrawn: set[int] = set()
        self.used: set[int] = set()  # applicants the test placed or changed on purpose
        self.seen_raw: dict[int, dict[str, Any]] = {}  # every applicant's last live record (for the leak scan)
        self.personal: list[Any] = []
        self.placed: dict[str, set[int]] = {}  # field → applicants given an invalid value of it in this step
        self.step = 0

    def place(self, field: str, *aids: int) -> None:
        self.placed.setdefault(field, set()).update(aids)

    def create(self, *specs: dict[str, Any]) -> list[int]:
        return self.client.post("/dreamapply/applicants", list(specs))["ids"]

    def malformed(self, aid: int, **spec: Any) -> None:
        self.client.serve_malformed(aid, **spec)
        self.malformed_since[aid] = self.step

    def wellformed(self, aid: int) -> None:
        self.client.serve_wellformed(aid)
        self.malformed_since.pop(aid, None)

    # -- one sync run and every check ---------------------------------------------------------------------
    def sync_and_check(self) -> dict[str, Any]:
        run = self.env.run()
        assert run.state == "success", f"step {self.step}: the run failed"
        folder = _newest_run(self.env)
        raw = raw_applicants(self.client)
        self.personal = personal_patterns({**self.seen_raw, **raw})  # erased ones too: as they were
        self.seen_raw.update({aid: a for aid, a in raw.items() if not a["erased"]})
        all_leads = self.env.leads()
        strays = [x.get("uni_applicantid") for x in all_leads if not str(x.get("uni_applicantid")).isdigit()]
        assert not strays, f"step {self.step}: leads without a valid applicant id: {strays}"
        leads = leads_by_applicant(all_leads)  # asserts: never two leads for one applicant
        problems: list[str] = []
        expected_leads: set[int] = set()
        for aid, a in raw.items():
            lead = leads.get(aid)
            before = self.ever_sent.get(aid)
            consented = (a.get("consents") or {}).get("1", {}).get("decision") == "Accept"
            if a["erased"]:
                if lead is not None:
                    problems.append(f"{aid}: erased, but its lead is still there (erasure.action: delete)")
            elif a.get("wire") is not None:
                if before is None and lead is not None:
                    problems.append(f"{aid}: malformed record, yet a lead was created")
                if before is not None and (lead is None or _profile(lead) != _profile(before)):
                    problems.append(f"{aid}: malformed record changed or removed the lead it had")
            elif not consented:
                if before is None and lead is not None:
                    problems.append(f"{aid}: no consent, yet a lead")
                if before is not None and aid in self.withdrawn:
                    flags = {f: (lead or {}).get(f) for f in DEFAULT_WITHDRAWAL_FLAGS}
                    if lead is None or not all(v is True for v in flags.values()):
                        problems.append(f"{aid}: withdrew consent, lead not flagged: {flags}")
            elif len((a.get("email") or "").strip()) > 100:
                # fit_policy.overrides.emailaddress1.too_long: quarantine (settings.yaml): withheld by choice
                if before is None and lead is not None:
                    problems.append(f"{aid}: over-long e-mail (quarantine by settings), yet a lead")
            elif not usable_identity(a, self.default_region):
                if before is None and lead is not None:
                    problems.append(f"{aid}: no usable identity, yet a lead")
            else:
                expected_leads.add(aid)
                if lead is None:
                    problems.append(f"{aid}: consenting with a usable identity, but no lead")
                    continue
                want = expected_profile(a, self.default_region)
                got = _profile(lead)
                wrong = {k: (got[k], want[k]) for k in PROFILE if got[k] != want[k]}
                if wrong:  # applicant ids and column names only in the message: values may be personal
                    problems.append(f"{aid}: lead columns not current: {sorted(wrong)}")
            if lead is not None:
                self.ever_sent[aid] = lead
        assert not problems, f"step {self.step}: {len(problems)} problems:\n" + "\n".join(problems[:40])
        assert expected_leads, "the scenario must leave leads to check"

        report = json.loads((folder / "report.json").read_text())
        quarantine = {str(q["applicant_id"]): q for q in _jsonl(folder / "quality" / "quarantine.jsonl")}
        for aid, since in self.malformed_since.items():
            if since == self.step:
                row = quarantine.get(str(aid)) or quarantine.get(f"{aid}a")
                listed = {k: q.get("reasons") for k, q in quarantine.items()}
                assert row is not None, f"step {self.step}: malformed applicant {aid} not quarantined: {listed}"
                assert row.get("reasons") or row.get("reason"), f"step {self.step}: no reason for {aid}"
        self._check_field_issues(folder, raw)
        for name in ("quarantine.jsonl", "field_issues.jsonl", "summary.json", "summary.md"):
            text = (folder / "quality" / name).read_text(encoding="utf-8")
            leaked = sorted({f"{aid}:{field}" for aid, field, pattern in self.personal if pattern.search(text)})
            assert not leaked, f"step {self.step}: personal data in quality/{name}: {leaked[:10]}"
        self.placed = {}
        self.step += 1
        return report

    def _check_field_issues(self, folder: Path, raw: dict[int, dict[str, Any]]) -> None:
        """quality/summary.json counts field issues per field and reason; the run folder lists them per applicant."""
        summary = json.loads((folder / "quality" / "summary.json").read_text())
        per_field = summary.get("field_issues")
        assert isinstance(per_field, dict), f"step {self.step}: no per-field issue counts in quality/summary.json"
        listed = _per_applicant_issues(folder)
        for field, aids in self.placed.items():
            counts = per_field.get(field)
            assert isinstance(counts, dict) and sum(counts.values()) >= len(aids), (
                f"step {self.step}: field {field}: {counts} issues counted, {len(aids)} placed"
            )
            for aid in aids:
                assert field in listed.get(aid, set()), f"step {self.step}: {field} issue of {aid} not listed"
        # every applicant read in this run: the issues listed are exactly those its raw record holds
        extracted = {r.get("applicant_id") for r in _jsonl(folder / "extract" / "applicants.jsonl")}
        wrong = []
        checked = sorted(a for a in extracted if isinstance(a, int) and a in raw and raw[a].get("wire") is None)
        assert set().union(*self.placed.values()) <= set(checked), f"step {self.step}: placed applicants not read"
        for aid in checked:
            want = expected_field_issues(raw[aid], self.default_region)
            got = listed.get(aid, set()) & set(ISSUE_FIELDS)
            if want != got:
                wrong.append(f"{aid}: listed {sorted(got)}, expected {sorted(want)}")
        assert not wrong, f"step {self.step}: per-applicant field issues:\n" + "\n".join(wrong[:20])
        # the summary's counts are the listing's, per field
        rows = _jsonl(folder / "quality" / "field_issues.jsonl")
        for field, counts in per_field.items():
            listed_count = sum(1 for r in rows for i in r.get("issues") or () if i.get("field") == field)
            assert sum(counts.values()) == listed_count, (self.step, field, counts, listed_count)


def _profile(lead: dict[str, Any]) -> dict[str, Any]:
    return {k: lead.get(k) for k in PROFILE}


def _per_applicant_issues(folder: Path) -> dict[int, set[str]]:
    """applicant id → fields with an issue, from the run folder's per-applicant listing."""
    path = folder / "quality" / "field_issues.jsonl"
    assert path.exists(), "no per-applicant field issue listing (quality/field_issues.jsonl) in the run folder"
    out: dict[int, set[str]] = {}
    for row in _jsonl(path):
        aid = row.get("applicant_id")
        for issue in row.get("issues") or ():
            if isinstance(aid, int) and isinstance(issue, dict) and issue.get("field"):
                out.setdefault(aid, set()).add(issue["field"])
    return out


def _lead_holders(days: Days, count: int, need_phone: bool = False) -> list[int]:
    """Generated applicants with a clean current lead (a phone too, if asked), not used by the test yet."""
    raw = raw_applicants(days.client)
    out = []
    for aid, lead in sorted(days.ever_sent.items()):
        a = raw[aid]
        if aid in days.used or a["erased"] or a.get("wire") is not None:
            continue
        if need_phone and not lead.get("mobilephone"):
            continue
        if lead.get("uni_citizenship") and lead.get("firstname") and lead.get("emailaddress1"):
            out.append(aid)
            days.used.add(aid)
        if len(out) == count:
            return out
    raise AssertionError(f"not enough lead holders for the scenario ({len(out)} of {count})")


def test_three_days_of_messy_data_leave_one_current_lead_per_consenting_identifiable_applicant(sync_env) -> None:  # type: ignore[no-untyped-def]
    env = sync_env(applicants=70)
    days = Days(env)
    c = days.client

    # -- day 0: the population plus deliberately placed messy applicants, then the first load ----------------
    phones = days.create(
        _person(1, phone="12"),
        _person(2, phone="(555) 123-4567", citizenship="US"),
        _person(3, phone="127.555.6451", citizenship=None),
        _person(4, phone="+44 7700 9040040", citizenship="GB"),
    )
    days.place("phone", *phones)
    countries = days.create(_person(5, citizenship="XX"), _person(6, citizenship="UK"))
    days.place("citizenship", *countries)
    [fffd_given, mojibake_given, fffd_family] = days.create(
        _person(7, given=replacement_chars("José"), family="García"),
        _person(8, given=mojibake("José"), family="Pérez"),
        _person(9, given="Ana", family=replacement_chars("García")),  # family and full name unusable
    )
    days.place("name_given", fffd_given, mojibake_given)
    days.place("name_family", fffd_family)
    [nameless, unreachable, no_consent, late, malformed_name, malformed_id] = days.create(
        _person(10, given=None, family=None),
        _person(11, email=None, phone="12"),
        _person(12, phone="12", citizenship="XX", consents={"1": "Reject"}),
        _person(13, phone="12", consents={}),  # undecided now, accepts on day 1
        _person(14),
        _person(15),
    )
    days.malformed(malformed_name, set={"name": "Kadri Messy14"})
    days.malformed(malformed_id, set={"id": f"{malformed_id}a"})
    days.used.update({*phones, *countries, fffd_given, mojibake_given, fffd_family, nameless, unreachable})
    days.used.update({no_consent, late, malformed_name, malformed_id})
    days.sync_and_check()
    sent = days.ever_sent
    assert {*phones, *countries, fffd_given, mojibake_given} <= set(sent)
    assert not {fffd_family, nameless, unreachable, no_consent, late, malformed_name, malformed_id} & set(sent)

    # -- day 1: a day of activity (some messy edits), invalid values arriving in edits, privacy changes ---------
    messy = c.post("/dreamapply/advance", {"hours": 24, "seed": 91, "rates": {"messy_edits": 0.03, "edits": 0.05}})
    messy = messy["applicants_messy"]
    phone_editor, country_editor, name_editor, withdrawer, erased = _lead_holders(days, 5, need_phone=True)
    c.edit_applicant(phone_editor, phone="12")
    c.edit_applicant(country_editor, citizenship="UK")
    c.edit_applicant(name_editor, given=replacement_chars("Jürgen"))
    days.place("phone", phone_editor)
    days.place("citizenship", country_editor)
    days.place("name_given", name_editor)
    c.post(f"/dreamapply/applicants/{withdrawer}/consents", {"consent": 1, "decision": "Reject"})
    days.withdrawn.add(withdrawer)
    c.post(f"/dreamapply/applicants/{late}/consents", {"consent": 1, "decision": "Accept"})  # phone "12": no phone
    c.post(f"/dreamapply/applicants/{erased}/erase", {"request_to_be_forgotten": True})
    c.edit_applicant(phones[0], phone="+372 5123 4599")  # a fixed phone reaches the lead
    days.sync_and_check()
    assert days.ever_sent[phone_editor].get("mobilephone") is None  # the old, valid phone was cleared
    assert days.ever_sent[country_editor].get("uni_citizenship") is None
    assert days.ever_sent[late].get("mobilephone") is None and days.ever_sent[phones[0]].get("mobilephone")

    # -- day 2: the phone comes back in national form, a lead holder's record turns malformed, one is fixed ------
    messy += c.post("/dreamapply/advance", {"hours": 24, "seed": 92, "rates": {"messy_edits": 0.03}})[
        "applicants_messy"
    ]
    c.edit_applicant(phone_editor, phone="5123 4570", citizenship="EE")  # E.164 by the citizenship's region
    [turns_malformed] = _lead_holders(days, 1)
    days.malformed(turns_malformed, set={"name": "Given Family"})
    days.wellformed(malformed_name)
    c.edit_applicant(countries[0], citizenship="EE")
    [newcomer] = days.create(_person(16, phone="+44 7700 9040040", citizenship="GB"))
    days.place("phone", newcomer)
    days.sync_and_check()
    assert days.ever_sent[phone_editor].get("mobilephone") == "+37251234570"
    assert malformed_name in days.ever_sent and newcomer in days.ever_sent

    # -- day 3: the malformed record is fixed with a messy phone, an erasure, a late acceptance with messy data ---
    messy += c.post("/dreamapply/advance", {"hours": 24, "seed": 93, "rates": {"messy_edits": 0.03}})[
        "applicants_messy"
    ]
    days.wellformed(turns_malformed)
    c.edit_applicant(turns_malformed, phone="(555) 123-4567", citizenship="US")
    days.place("phone", turns_malformed)
    c.post(f"/dreamapply/applicants/{fffd_given}/erase", {"request_to_be_forgotten": True})
    c.post(f"/dreamapply/applicants/{no_consent}/consents", {"consent": 1, "decision": "Accept"})
    days.wellformed(malformed_id)
    days.sync_and_check()
    assert days.ever_sent[turns_malformed].get("mobilephone") is None
    assert days.ever_sent[turns_malformed].get("uni_citizenship") == "US"
    assert no_consent in days.ever_sent and malformed_id in days.ever_sent
    assert fffd_given not in leads_by_applicant(env.leads())
    assert messy, "the sandbox's own activity made messy edits too (checked like every other applicant)"
