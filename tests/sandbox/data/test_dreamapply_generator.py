"""The seeded DreamApply generator: determinism, adversarial coverage, internal consistency, speed."""

from __future__ import annotations

import re
import time
import unicodedata
from collections import Counter

import pytest

from sandbox.data import journal as J
from sandbox.data.generator import generate
from sandbox.data.model import APPLICATION_ID_BASE, Dataset
from sandbox.data.mutations import advance
from sandbox.data.profiles import locale

ANCHOR = 1_780_000_000  # 2026-05-28


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return generate(7, 300, ANCHOR)


def _fingerprint(d: Dataset) -> tuple:
    j = d.journal
    return (
        [a.as_dict() for a in d.applicants.values()],
        [a.as_dict() for a in d.applications.values()],
        [o.as_dict() for o in d.offers.values()],
        tuple(j.logged),
        tuple(j.event),
        tuple(j.applicant),
        tuple(j.application),
        tuple(j.offer),
        tuple(j.extra),
        [(p.id, p.type, p.created) for p in d.purged],
    )


def test_same_seed_same_data() -> None:
    assert _fingerprint(generate(3, 400, ANCHOR)) == _fingerprint(generate(3, 400, ANCHOR))
    assert _fingerprint(generate(3, 400, ANCHOR)) != _fingerprint(generate(4, 400, ANCHOR))


def test_advance_is_deterministic() -> None:
    a, b = generate(3, 200, ANCHOR), generate(3, 200, ANCHOR)
    assert advance(a, ANCHOR + 10, ANCHOR + 86400, 5) == advance(b, ANCHOR + 10, ANCHOR + 86400, 5)
    assert _fingerprint(a) == _fingerprint(b)


@pytest.mark.parametrize("n", [10, 57, 300])
def test_size_ids_and_registration_order(n: int) -> None:
    d = generate(1, n, ANCHOR)
    assert list(d.applicants) == list(range(1, n + 1))
    regs = [a.registered for a in d.applicants.values()]
    assert regs == sorted(regs)
    assert regs[0] >= ANCHOR - 731 * 86400 and regs[-1] < ANCHOR
    assert d.applicant_order == [a.id for a in d.applicants.values() if not a.erased]


def _scripts(text: str) -> set[str]:
    out = set()
    for ch in text:
        name = unicodedata.name(ch, "")
        for script in (
            "CYRILLIC",
            "GREEK",
            "ARABIC",
            "HEBREW",
            "DEVANAGARI",
            "CJK",
            "HIRAGANA",
            "HANGUL",
            "THAI",
            "GEORGIAN",
        ):
            if name.startswith(script):
                out.add(script)
    return out


_EMAIL = re.compile(r"^[A-Za-z0-9_%+-]+(\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def _valid_email(e: str) -> bool:
    return bool(_EMAIL.match(e))


@pytest.mark.parametrize(("seed", "n"), [(7, 300), (1, 60), (99, 100), (12345, 45)])
def test_adversarial_coverage(seed: int, n: int) -> None:
    """Every adversarial kind is placed at least once whenever there are enough applicants (> 40)."""
    people = list(generate(seed, n, ANCHOR).applicants.values())
    names = [(a.given or "", a.family or "") for a in people]
    assert any("'" in g + f for g, f in names)
    assert any("N'D" in f for _, f in names)
    assert any("-" in g for g, _ in names) and any("-" in f for _, f in names)
    assert any(len(g) > 50 for g, _ in names) and any(len(f) > 50 for _, f in names)
    assert any(a.given in (None, "") for a in people) and any(a.family in (None, "") for a in people)
    assert any(a.middle for a in people)
    assert any(g != g.strip() for g, _ in names)
    scripts = set().union(*(_scripts(g + f) for g, f in names))
    assert {"CYRILLIC", "GREEK", "ARABIC", "HEBREW", "DEVANAGARI", "CJK", "HANGUL", "THAI", "GEORGIAN"} <= scripts
    vietnamese = set(locale("vi").family)
    assert any(f.split("-")[0] in vietnamese for _, f in names)
    assert any(ch in "äöüõšžłøéçñ" for g, f in names for ch in (g + f).lower())
    emails = [a.email for a in people]
    assert None in emails and "" in emails
    assert any(e and not _valid_email(e) for e in emails)
    lowered = Counter(e.strip().lower() for e in emails if e and "@" in e)
    shared = [e for e, c in lowered.items() if c > 1]
    assert shared
    assert any(len({x for x in emails if x and x.strip().lower() == e}) > 1 for e in shared)  # case differs
    phones = [a.phone for a in people]
    assert None in phones and "" in phones
    assert any(p and not any(ch.isdigit() for ch in p) for p in phones)
    assert any(p and p.startswith("+") for p in phones) and any(p and "(" in p for p in phones)
    cits = [a.citizenship for a in people]
    assert None in cits
    assert any(c is not None and (len(c) != 2 or c in ("XX", "UK", "EU", "ZZ")) for c in cits)
    assert Counter(a.type for a in people)["Natural"] > n * 0.8


def test_consent_decision_kinds(ds: Dataset) -> None:
    for cid in (2, 3):
        kinds = Counter((a.consents or {}).get(cid, ("Undecided",))[0] for a in ds.applicants.values())
        assert kinds["Accept"] > 10 and kinds["Reject"] > 10 and kinds["Undecided"] > 10, kinds
    assert sum(1 for a in ds.applicants.values() if (a.consents or {}).get(1)) > 250
    assert any(a.reference for a in ds.applicants.values()) and any(a.matriculation for a in ds.applicants.values())
    assert any(a.trackers for a in ds.applicants.values())


def test_applications_offers_consistency(ds: Dataset) -> None:
    counts = Counter(len(a.applications or ()) for a in ds.applicants.values())
    assert counts[0] and counts[1] and counts[2]
    assert max(counts) <= 3
    statuses = Counter(app.status for app in ds.applications.values())
    assert {"Prepare", "Submitted", "Inactive"} <= set(statuses)
    ids = list(ds.applications)
    assert ids[0] == APPLICATION_ID_BASE + 1
    created = [ds.applications[i].created for i in ids]
    assert created == sorted(created)
    for app in ds.applications.values():
        owner = ds.applicants[app.applicant_id]
        assert app.id in owner.applications
        assert owner.registered <= app.created <= app.revised < ANCHOR
        assert 1 <= len(app.courses) <= 3 and len({c for c, _ in app.courses}) == len(app.courses)
        if app.submitted:
            assert len(app.offers) == len(app.courses)
            for prio, oid in enumerate(app.offers, start=1):
                o = ds.offers[oid]
                assert o.application_id == app.id and o.priority == prio
                assert o.decision in ("None", "Final", "Declined")
        else:
            assert not app.offers
    types = Counter(ds.catalog.offer_types[o.type_id].title for o in ds.offers.values())
    assert types["Unreplied"] and types["Conditional"] + types["Unconditional"]
    assert Counter(o.decision for o in ds.offers.values())["Final"]


def test_journal_consistency(ds: Dataset) -> None:
    j = ds.journal
    assert list(j.logged) == sorted(j.logged)
    names = Counter(j.name(i) for i in range(1, len(j) + 1))
    registered = [j.applicant[i] for i in range(len(j)) if j.event[i] == J.EVENT_CODES[J.APPLICANT_REGISTERED]]
    assert registered == list(ds.applicants)
    assert names[J.APPLICATION_CREATED] + names[J.APPLICATION_CLONED] == len(ds.applications)
    assert names[J.APPLICATION_SUBMITTED] == sum(1 for a in ds.applications.values() if a.submitted)
    assert names[J.OFFER_EDITED] and names[J.APPLICANT_EDITED] and names[J.CONSENT_CHANGED]
    for i in range(len(j)):
        if j.event[i] in (J.EVENT_CODES[J.APPLICATION_CREATED], J.EVENT_CODES[J.APPLICATION_CLONED]):
            assert ds.applications[j.application[i]].created == j.logged[i]
        if j.application[i]:
            assert ds.applications[j.application[i]].applicant_id == j.applicant[i]
    assert j.bind(next(i + 1 for i in range(len(j)) if j.event[i] == J.EVENT_CODES[J.OFFER_EDITED])) in (
        ["type"],
        ["decision"],
    )


def test_erasures_leave_gaps_and_purges() -> None:
    d = generate(2, 2000, ANCHOR)
    erased = [a for a in d.applicants.values() if a.erased]
    assert erased
    for a in erased:
        assert a.id not in d.applicant_order
        assert any(p.id == a.id and p.type == "Applicant" and p.request_to_be_forgotten for p in d.purged)
        for app_id in a.applications or ():
            assert d.applications[app_id].erased and app_id not in d.application_order


def test_generation_is_fast() -> None:
    started = time.perf_counter()
    d = generate(42, 10_000, ANCHOR)
    elapsed = time.perf_counter() - started
    assert len(d.applicants) == 10_000
    assert elapsed < 3.0, elapsed
