"""The seeded generator: ``generate(seed, applicants, anchor)`` builds a whole DreamApply instance.

Deterministic for a given (seed, applicants, anchor): the same inputs give identical records and journal.
Registrations are spread over the ~2 years before ``anchor`` in ID order; every later activity
(applications, submissions, offers, decisions, consent changes, profile edits, erasures) happens before
``anchor`` and is in the journal, IDs ascending with time.
"""

from __future__ import annotations

import gc
import logging
import random
import time
from bisect import bisect_right
from datetime import UTC, datetime
from typing import Any

from sandbox.data import journal as J
from sandbox.data import names as N
from sandbox.data.catalog import build_catalog
from sandbox.data.model import (
    APPLICATION_ID_BASE,
    DECISION_ACCEPT,
    DECISION_REJECT,
    Applicant,
    Application,
    Catalog,
    Dataset,
    Offer,
    Purge,
)
from sandbox.data.profiles import KINDS, make_profile, vary_case

log = logging.getLogger(__name__)

DAY = 86400
SPAN_DAYS = 730
PROGRESS_EVERY = 10_000  # applicants between progress lines: a large population takes a while

# P(number of applications) for 0, 1, 2, 3
APPLICATION_COUNTS = (0.35, 0.45, 0.15, 0.05)
# P(Accept), P(Reject); the rest is undecided (no association)
CONSENT_RATES = {1: (0.96, 0.0), 2: (0.45, 0.25), 3: (0.25, 0.2)}
OFFER_OUTCOMES = (
    ("Conditional", 0.3),
    ("Unconditional", 0.25),
    ("Rejected", 0.25),
    ("Waitlisted", 0.15),
    ("Interview", 0.05),
)


def _weighted(rng: random.Random, pairs: tuple[tuple[str, float], ...]) -> str:
    r = rng.random()
    acc = 0.0
    for value, p in pairs:
        acc += p
        if r < acc:
            return value
    return pairs[-1][0]


def make_reference(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.5:
        return f"SIS-{rng.randrange(100000, 999999)}"
    if r < 0.8:
        return f"EE/{rng.randrange(2019, 2026)}/{rng.randrange(1, 9999)}"
    return f"A{rng.randrange(10**7, 10**8)}"


def make_matriculation(rng: random.Random) -> str:
    return f"{rng.choice('ABCM')}{rng.randrange(100000, 999999)}"


def applicant_type(rng: random.Random) -> str:
    r = rng.random()
    return "Natural" if r < 0.97 else ("Child" if r < 0.99 else "Legal")


class EventSink:
    """Collects (time, seq, event, applicant, application-object, offer-object, course, tracker, extra)."""

    def __init__(self) -> None:
        self.items: list[tuple] = []

    def add(
        self,
        ts: int,
        event: str,
        applicant: int,
        application: Application | None = None,
        offer: Offer | None = None,
        course: int = 0,
        tracker: int = 0,
        extra: int = 0,
    ) -> None:
        self.items.append((ts, len(self.items), event, applicant, application, offer, course, tracker, extra))

    def flush(self, journal: J.Journal) -> list[int]:
        self.items.sort(key=lambda e: (e[0], e[1]))
        ids = []
        for ts, _seq, event, applicant, app, offer, course, tracker, extra in self.items:
            ids.append(
                journal.append(
                    ts, event, applicant, app.id if app else 0, offer.id if offer else 0, course, tracker, extra
                )
            )
        self.items.clear()
        return ids


def pick_term(rng: random.Random, catalog: Catalog, created: int) -> int:
    """A term whose intake is open at ``created`` (else the next one to start)."""
    open_terms = [i.term_id for i in catalog.intakes.values() if i.open_ts <= created <= i.close_ts]
    if open_terms:
        return rng.choice(open_terms)
    upcoming = [t for t in catalog.terms.values() if t.start_ts > created]
    return min(upcoming, key=lambda t: t.start_ts).id if upcoming else max(catalog.terms)


def add_consents(
    rng: random.Random, a: Applicant, at: int, until: int, sink: EventSink, later_rate: float = 0.1
) -> None:
    for cid, (p_acc, p_rej) in CONSENT_RATES.items():
        r = rng.random()
        if r < p_acc:
            decision = DECISION_ACCEPT
        elif r < p_acc + p_rej:
            decision = DECISION_REJECT
        else:
            continue
        decided = at + rng.randrange(0, 120)
        if cid != 1 and rng.random() < later_rate and until > at + DAY:
            decided = at + rng.randrange(DAY, until - at)
            sink.add(decided, J.CONSENT_CHANGED, a.id, extra=J.consent_extra(cid, decision))
        if a.consents is None:
            a.consents = {}
        a.consents[cid] = (decision, min(decided, until))


def add_trackers(rng: random.Random, a: Applicant, catalog: Catalog) -> None:
    r = rng.random()
    if r < 0.35:
        ids = [t.id for t in catalog.trackers.values() if t.created <= a.registered] or [2]
        count = 2 if r < 0.05 else 1
        chosen = rng.sample(ids, min(count, len(ids)))
        a.trackers = tuple((tid, a.registered + k) for k, tid in enumerate(chosen))


def add_application(
    rng: random.Random,
    ds: Dataset,
    a: Applicant,
    created: int,
    until: int,
    sink: EventSink,
    cloned: bool = False,
    term_id: int | None = None,
    course_ids: list[int] | None = None,
) -> Application:
    """One application with courses and, if it got submitted before ``until``, offers and their history.

    The application gets its ID later (``assign_ids``) unless the caller sets it.
    """
    cat = ds.catalog
    term = cat.terms[term_id if term_id is not None else pick_term(rng, cat, created)]
    intakes = cat.intakes_of_term(term.id)
    intake_id = intakes[0].id if intakes else 0
    app = Application(0, a.id, term.id, "Prepare", created)
    if course_ids is None:
        available = [c.id for c in cat.courses.values() if c.status not in ("Draft", "Template")]
        k = 1 if rng.random() < 0.55 else (2 if rng.random() < 0.7 else 3)
        course_ids = rng.sample(available, k)
    app.courses = tuple((cid, intake_id) for cid in course_ids)
    sink.add(created, J.APPLICATION_CLONED if cloned else J.APPLICATION_CREATED, a.id, app)
    expired = until > term.grace_ts
    submitted = 0
    if rng.random() < 0.55:
        t = created + int(rng.expovariate(1 / (7 * DAY)))
        if t < until:
            submitted = t
    if submitted:
        submit(rng, ds, app, submitted, until, sink)
        r = rng.random()
        if r < 0.06:
            app.status = "Reopened"
            app.revised = max(app.revised, submitted + rng.randrange(0, max(1, until - submitted)))
        elif r < 0.14:
            app.status = "Closed"
        elif r < 0.2:
            withdraw(rng, app, until, sink)
    else:
        r = rng.random()
        if expired:
            app.status = "Inactive"
        elif r < 0.1:
            app.status = "Blank"
        elif r < 0.62:
            app.status = "Prepare"
        elif r < 0.95:
            app.status = "Draft"
        else:
            withdraw(rng, app, until, sink)
    return app


def submit(rng: random.Random | None, ds: Dataset, app: Application, at: int, until: int, sink: EventSink) -> None:
    """Submit: status Submitted and one Unreplied offer per course; with ``rng``, also simulate the offer history."""
    app.status = "Submitted"
    app.submitted = at
    app.revised = max(app.revised, at)
    sink.add(at, J.APPLICATION_SUBMITTED, app.applicant_id, app)
    unreplied = ds.catalog.offer_type_by_title("Unreplied").id
    app.offers = []
    for prio, (cid, iid) in enumerate(app.courses, start=1):
        offer = Offer(0, app.id, cid, iid, prio, unreplied, at)
        if app.id:
            offer.id = ds.next_offer_id
            ds.next_offer_id += 1
            ds.offers[offer.id] = offer
            app.offers.append(offer.id)
        else:
            app.offers.append(offer)  # type: ignore[arg-type]  # objects until assign_ids gives IDs
        if rng is not None:
            simulate_offer(rng, ds, app, offer, until, sink)


def edit_offer_type(
    ds: Dataset, app: Application, offer: Offer, title: str, at: int, rng: random.Random | None, sink: EventSink
) -> None:
    offer.type_id = ds.catalog.offer_type_by_title(title).id
    offer.saved = at
    if rng is not None and offer.score is None:
        offer.score = f"{rng.randrange(40, 100)}.{rng.choice(('00', '50', '25', '75'))}"
        offer.scored = at
    if ds.catalog.offer_types[offer.type_id].decide:
        offer.decision_deadline = datetime.fromtimestamp(at + 14 * DAY, UTC).date().isoformat()
    else:
        offer.decision_deadline = None
    app.revised = max(app.revised, at)
    sink.add(at, J.OFFER_EDITED, app.applicant_id, app, offer, offer.course_id, extra=1)


def decide_offer(app: Application, offer: Offer, decision: str, at: int, sink: EventSink) -> None:
    offer.decision = decision
    offer.decided = at
    offer.saved = max(offer.saved, at)
    if decision == "Final":
        offer.type_confirmed_id = offer.type_id
        offer.confirmed = at
    app.revised = max(app.revised, at)
    sink.add(at, J.OFFER_EDITED, app.applicant_id, app, offer, offer.course_id, extra=2)


def simulate_offer(
    rng: random.Random, ds: Dataset, app: Application, offer: Offer, until: int, sink: EventSink
) -> None:
    if rng.random() >= 0.65:
        return
    t = offer.inserted + int(rng.expovariate(1 / (14 * DAY)))
    if t >= until:
        return
    edit_offer_type(ds, app, offer, _weighted(rng, OFFER_OUTCOMES), t, rng, sink)
    if ds.catalog.offer_types[offer.type_id].decide and rng.random() < 0.5:
        t2 = t + int(rng.expovariate(1 / (7 * DAY)))
        if t2 < until:
            decide_offer(app, offer, "Final" if rng.random() < 0.7 else "Declined", t2, sink)


def withdraw(rng: random.Random, app: Application, until: int, sink: EventSink) -> None:
    start = max(app.revised, app.created)
    at = start + int(rng.expovariate(1 / (5 * DAY)))
    if at >= until:
        at = start
    app.status = "Withdrawn"
    app.revised = max(app.revised, at)
    sink.add(at, J.APPLICATION_WITHDRAWN, app.applicant_id, app)


def assign_ids(ds: Dataset, apps: list[Application]) -> None:
    """Give new applications (oldest first) and their offers IDs, and index them."""
    apps.sort(key=lambda x: (x.created, x.applicant_id))
    for app in apps:
        app.id = ds.next_application_id
        ds.next_application_id += 1
        ds.applications[app.id] = app
        ds.application_order.append(app.id)
        owner = ds.applicants[app.applicant_id]
        if owner.applications is None:
            owner.applications = []
        owner.applications.append(app.id)
        if app.offers:
            ids = []
            for offer in app.offers:
                offer.id = ds.next_offer_id  # type: ignore[union-attr]
                offer.application_id = app.id  # type: ignore[union-attr]
                ds.next_offer_id += 1
                ds.offers[offer.id] = offer  # type: ignore[union-attr]
                ids.append(offer.id)  # type: ignore[union-attr]
            app.offers = ids
    for a_id in {app.applicant_id for app in apps}:
        ds.applicants[a_id].applications.sort()  # type: ignore[union-attr]


def erase(ds: Dataset, a: Applicant, at: int, marked: int, sink: EventSink | None, forgotten: bool = True) -> list[int]:
    """Purge an applicant and its applications; returns the purged application IDs."""
    a.erased = at
    i = bisect_right(ds.applicant_order, a.id) - 1
    if i >= 0 and ds.applicant_order[i] == a.id:
        del ds.applicant_order[i]
    ds.purged.append(Purge(a.id, "Applicant", at, marked, forgotten))
    purged_apps = []
    for app_id in a.applications or ():
        app = ds.applications[app_id]
        app.erased = at
        j = bisect_right(ds.application_order, app_id) - 1
        if j >= 0 and ds.application_order[j] == app_id:
            del ds.application_order[j]
        ds.purged.append(Purge(app_id, "Application", at, marked, forgotten))
        purged_apps.append(app_id)
    if sink is not None:
        sink.add(at, J.APPLICANT_DELETED, a.id)
    return purged_apps


def new_applicant(
    rng: random.Random, ds: Dataset, registered: int, kind: str | None = None, shared_from: list[str] | None = None
) -> Applicant:
    p = make_profile(rng, kind)
    email = p["email"]
    if shared_from and (kind in ("email_shared", "email_shared_case") or (kind is None and rng.random() < 0.006)):
        email = rng.choice(shared_from)
        if kind == "email_shared_case" or (kind is None and rng.random() < 0.5):
            email = vary_case(rng, email)
    a = Applicant(
        ds.next_applicant_id,
        registered,
        p["given"],
        p["middle"],
        p["family"],
        email,
        p["phone"],
        p["citizenship"],
        type=applicant_type(rng) if kind is None else "Natural",
    )
    ds.next_applicant_id += 1
    if a.type == "Child":
        a.parent = f"{N.native(rng.choice(N.LOCALES[11].given))} {a.family or ''}".strip()
    elif a.type == "Legal":
        a.legal = rng.choice(("Example Trading OÜ", "Acme Education GmbH", "Global Talent Agency Ltd"))
    if rng.random() < 0.2:
        a.reference = make_reference(rng)
    if rng.random() < 0.1:
        a.matriculation = make_matriculation(rng)
    if rng.random() < 0.05:
        a.notes = rng.choice(N.NOTES)
    ds.applicants[a.id] = a
    ds.applicant_order.append(a.id)
    return a


def generate(seed: int, applicants: int, anchor: int) -> Dataset:
    """Build the dataset (10..200 000 applicants) as of ``anchor`` (epoch seconds)."""
    if applicants < 1:
        raise ValueError("applicants must be positive")
    # The cyclic GC would rescan the growing heap of (acyclic) records over and over: pause it.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate(seed, applicants, anchor)
    finally:
        if enabled:
            gc.enable()


def _generate(seed: int, applicants: int, anchor: int) -> Dataset:
    rng = random.Random(f"dreamapply-sandbox:{seed}:{applicants}")
    catalog = build_catalog(anchor, random.Random(f"dreamapply-catalog:{seed}"))
    ds = Dataset(seed=seed, anchor=anchor, catalog=catalog)
    sink = EventSink()
    start = anchor - SPAN_DAYS * DAY
    span = SPAN_DAYS * DAY - 3600
    times = sorted(start + int(rng.random() * span) for _ in range(applicants))
    forced: dict[int, str] = {}
    if applicants >= 2:
        positions = rng.sample(range(1, applicants), min(applicants - 1, len(KINDS)))
        forced = dict(zip(positions, KINDS, strict=False))
    emails: list[str] = []
    apps: list[Application] = []
    edits: list[Applicant] = []
    started = time.perf_counter()
    for idx, reg in enumerate(times):
        if idx and idx % PROGRESS_EVERY == 0:
            _progress(idx, applicants, started)
        kind = forced.get(idx)
        a = new_applicant(rng, ds, reg, kind, emails if emails else None)
        if a.email and "@" in a.email and " " not in a.email and (not emails or rng.random() < 0.05):
            emails.append(a.email)
            if len(emails) > 64:
                emails[rng.randrange(64)] = emails.pop()
        add_consents(rng, a, reg, anchor, sink)
        add_trackers(rng, a, catalog)
        sink.add(reg, J.APPLICANT_REGISTERED, a.id, tracker=a.trackers[0][0] if a.trackers else 0)
        r = rng.random()
        count = 0
        acc = 0.0
        for c, p in enumerate(APPLICATION_COUNTS):
            acc += p
            if r < acc:
                count = c
                break
        t = reg
        for k in range(count):
            t = t + int(rng.expovariate(1 / (10 * DAY))) + 60
            if t >= anchor:
                break
            apps.append(add_application(rng, ds, a, t, anchor, sink, cloned=k > 0 and rng.random() < 0.25))
        if rng.random() < 0.08:
            edits.append(a)
    assign_ids(ds, apps)
    for a in edits:
        if anchor - a.registered > 3600:
            at = a.registered + rng.randrange(3600, anchor - a.registered)
            fields = rng.sample(("name", "email", "phone", "citizenship", "reference"), rng.choice((1, 1, 2)))
            sink.add(at, J.APPLICANT_EDITED, a.id, extra=J.edit_mask(fields))
    # pre-existing erasures (gaps in the ID sequence), never on the forced adversarial applicants
    forced_ids = {ds.applicant_order[p] for p in forced}
    n_erase = int(applicants * 0.005)
    if n_erase:
        for a_id in rng.sample(ds.applicant_order, n_erase):
            if a_id in forced_ids:
                continue
            a = ds.applicants[a_id]
            last = max([a.registered] + [ds.applications[x].revised for x in a.applications or ()])
            at = last + int(rng.expovariate(1 / (30 * DAY))) + 60
            if at < anchor:
                erase(ds, a, at, at - rng.randrange(0, 30 * DAY) if at - last > 30 * DAY else at, sink)
    ds.purged.sort(key=lambda p: p.created)
    sink.flush(ds.journal)
    if applicants >= PROGRESS_EVERY:
        log.info(
            "sandbox: %d applicants generated in %.1f s (%d applications, %d journal events)",
            applicants,
            time.perf_counter() - started,
            len(ds.application_order),
            len(ds.journal),
        )
    return ds


def _progress(done: int, total: int, started: float) -> None:
    """One line of the generator's progress: applicants made of the total, their rate, the time left."""
    elapsed = time.perf_counter() - started
    rate = done / elapsed if elapsed > 0 else 0.0
    left = f"{(total - done) / rate:.0f} s left" if rate else "time left unknown"
    log.info(
        "sandbox: generating applicants: %d of %d (%d%%), %.0f/s, %s", done, total, done * 100 // total, rate, left
    )


def summary(ds: Dataset) -> dict[str, Any]:
    live = len(ds.applicant_order)
    return {
        "applicants": live,
        "applicants_erased": len(ds.applicants) - live,
        "applications": len(ds.application_order),
        "offers": len(ds.offers),
        "journal_events": len(ds.journal),
        "last_event_id": ds.journal.last_id,
        "purged_resources": len(ds.purged),
        "next_applicant_id": ds.next_applicant_id,
        "anchor": ds.anchor,
    }


__all__ = ["APPLICATION_ID_BASE", "generate", "summary"]
