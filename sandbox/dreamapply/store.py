"""The DreamApply store: the generated dataset, its queries and its mutations, behind one lock.

The HTTP layer (``server.py``) parses parameters and renders; this module decides what matches.
"""

from __future__ import annotations

import gc
import random
import threading
import time
from bisect import bisect_left, bisect_right
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox.clock import isoformat
from sandbox.data import mutations
from sandbox.data.generator import EventSink, generate, summary
from sandbox.data.journal import APPLICANT_EDITED, EDIT_FIELDS, EVENT_CODES, edit_mask
from sandbox.data.model import Applicant, Application, Dataset, Purge
from sandbox.data.wire import WireOverride
from sandbox.dreamapply.ratelimit import RateLimiter
from sandbox.state import SandboxState

Cursor = tuple[str, int] | None

# The journal only returns the last 6 months of events (reference §2.9).
JOURNAL_RETENTION_DAYS = 183
PURGED_PAGE_SIZE = 100
# Datasets at least this large are moved to the GC's permanent generation after generation.
FREEZE_ABOVE = 20_000


class DreamApplyStore:
    def __init__(self, state: SandboxState, dataset: Dataset | None = None) -> None:
        self.state = state
        cfg = state.config
        self.api_key = cfg.dreamapply_api_key
        self.lock = threading.RLock()
        started = time.perf_counter()
        anchor = int(state.clock.now().timestamp())
        self.ds = dataset if dataset is not None else generate(cfg.seed, cfg.applicants, anchor)
        self.generation_seconds = time.perf_counter() - started
        if cfg.applicants >= FREEZE_ABOVE:
            # Millions of long-lived, acyclic records: keep the cyclic GC from re-scanning them (a full
            # collection would otherwise stall the first requests for a second or more).
            gc.freeze()
        self.limiter = RateLimiter(cfg.dreamapply_requests_per_minute, lambda: state.clock.now().timestamp())
        self.journal_retention_days = JOURNAL_RETENTION_DAYS
        self._admin_creates = 0

    # -- time --------------------------------------------------------------------------------
    def now(self) -> int:
        return int(self.state.clock.now().timestamp())

    # -- applicants --------------------------------------------------------------------------
    def applicant(self, applicant_id: int) -> Applicant | None:
        a = self.ds.applicants.get(applicant_id)
        return None if a is None or a.erased else a

    def _bounds(self, order: list[int], key: Any, since: Cursor, until: Cursor) -> tuple[int, int]:
        lo, hi = 0, len(order)
        if since is not None:
            lo = bisect_left(order, since[1]) if since[0] == "id" else bisect_left(order, since[1], key=key)
        if until is not None:
            hi = bisect_right(order, until[1]) if until[0] == "id" else bisect_right(order, until[1], key=key)
        return lo, max(lo, hi)

    def select_applicants(
        self,
        since: Cursor = None,
        until: Cursor = None,
        citizenships: set[str] | None = None,
        emails: list[str] | None = None,
        tracker_ids: set[int] | None = None,
        tracker_codes: list[str] | None = None,
        limit: int = 32768,
    ) -> tuple[int, list[Applicant]]:
        """(number of matches ignoring ``limit``, the first ``limit`` matches in ID order)."""
        with self.lock:
            ds = self.ds
            apps = ds.applicants
            order = ds.applicant_order
            lo, hi = self._bounds(order, lambda i: apps[i].registered, since, until)
            if not (citizenships or emails or tracker_ids or tracker_codes):
                return hi - lo, [apps[i] for i in order[lo : min(hi, lo + limit)]]
            wanted_trackers: set[int] | None = None
            if tracker_ids or tracker_codes:
                codes = {c.lower() for c in tracker_codes or ()}
                wanted_trackers = set(tracker_ids or ()) | {
                    t.id for t in ds.catalog.trackers.values() if t.code.lower() in codes
                }
            wanted_emails = {e.lower() for e in emails} if emails else None
            count = 0
            out: list[Applicant] = []
            for i in order[lo:hi]:
                a = apps[i]
                if citizenships is not None and (a.citizenship or "").upper() not in citizenships:
                    continue
                if wanted_emails is not None and (a.email or "").strip().lower() not in wanted_emails:
                    continue
                if wanted_trackers is not None and not any(t in wanted_trackers for t, _ in a.trackers or ()):
                    continue
                count += 1
                if len(out) < limit:
                    out.append(a)
            return count, out

    # -- applications ------------------------------------------------------------------------
    def application(self, application_id: int) -> Application | None:
        app = self.ds.applications.get(application_id)
        return None if app is None or app.erased else app

    def applications_of(self, a: Applicant) -> list[Application]:
        with self.lock:
            return [self.ds.applications[i] for i in a.applications or () if not self.ds.applications[i].erased]

    def term_ids(self, term_id: int | None, year: int | None, years: set[int] | None) -> set[int]:
        terms = self.ds.catalog.terms
        selected = set(terms)
        if term_id is not None:
            selected &= {term_id}
        if year is not None:
            selected &= {t.id for t in terms.values() if t.year == year}
        if years is not None:
            selected &= {t.id for t in terms.values() if t.year in years}
        return selected

    def select_applications(
        self,
        term_ids: set[int],
        applicant_ids: set[int] | None = None,
        statuses: list[str] | None = None,
        created_since: int | None = None,
        revised_since: int | None = None,
        submitted_since: int | None = None,
        course_ids: set[int] | None = None,
        offer_types: set[int] | None = None,
        offer_decisions: list[str] | None = None,
        since: Cursor = None,
        until: Cursor = None,
        limit: int = 32768,
    ) -> tuple[int, list[Application]]:
        with self.lock:
            ds = self.ds
            apps = ds.applications
            order = ds.application_order
            lo, hi = self._bounds(order, lambda i: apps[i].created, since, until)
            status_set = {s.lower() for s in statuses} if statuses else None
            decisions = {d.lower() for d in offer_decisions} if offer_decisions else None
            count = 0
            out: list[Application] = []
            for i in order[lo:hi]:
                app = apps[i]
                if app.term_id not in term_ids:
                    continue
                if applicant_ids is not None and app.applicant_id not in applicant_ids:
                    continue
                if status_set is not None and app.status.lower() not in status_set:
                    continue
                if created_since is not None and app.created < created_since:
                    continue
                if revised_since is not None and app.revised < revised_since:
                    continue
                if submitted_since is not None and (not app.submitted or app.submitted < submitted_since):
                    continue
                if course_ids is not None and not any(c in course_ids for c, _ in app.courses):
                    continue
                if offer_types is not None or decisions is not None:
                    offers = [ds.offers[o] for o in app.offers or ()]
                    if offer_types is not None and not any(o.type_id in offer_types for o in offers):
                        continue
                    if decisions is not None and not any(o.decision.lower() in decisions for o in offers):
                        continue
                count += 1
                if len(out) < limit:
                    out.append(app)
            return count, out

    # -- journal -----------------------------------------------------------------------------
    def select_journal(
        self,
        names: set[str],
        since: Cursor = None,
        until: Cursor = None,
        academic_year: int | None = None,
        term_id: int | None = None,
        newest_first: bool = False,
        limit: int = 1024,
    ) -> tuple[int, list[int]]:
        """(matching events ignoring ``limit``, the event IDs of the page in the requested order)."""
        with self.lock:
            j = self.ds.journal
            lo = j.index_at_or_after(self.now() - self.journal_retention_days * 86400)
            hi = len(j)
            if since is not None:
                lo = max(lo, since[1] - 1 if since[0] == "id" else j.index_at_or_after(since[1]))
            if until is not None:
                hi = min(hi, until[1] if until[0] == "id" else j.index_after(until[1]))
            codes = {EVENT_CODES[n] for n in names if n in EVENT_CODES}
            if lo >= hi or not codes:
                return 0, []
            term_ids: set[int] | None = None
            if academic_year is not None or term_id is not None:
                term_ids = self.term_ids(term_id, academic_year, None)
            ev = j.event
            app_col = j.application
            apps = self.ds.applications
            count = 0
            out: list[int] = []
            rows = range(hi - 1, lo - 1, -1) if newest_first else range(lo, hi)
            for i in rows:
                if ev[i] not in codes:
                    continue
                if term_ids is not None:
                    app_id = app_col[i]
                    if not app_id or apps[app_id].term_id not in term_ids:
                        continue
                count += 1
                if len(out) < limit:
                    out.append(i + 1)
            return count, out

    # -- purged resources --------------------------------------------------------------------
    def purged_page(self, page: int, per_page: int = PURGED_PAGE_SIZE) -> tuple[int, list[Purge]]:
        with self.lock:
            items = self.ds.purged
            return len(items), items[(page - 1) * per_page : page * per_page]

    # -- mutations (admin API) ---------------------------------------------------------------
    def advance(self, hours: float, seed: int | None = None, rates: dict[str, float] | None = None) -> dict[str, Any]:
        """Move the sandbox clock ``hours`` forward and simulate the activity of that interval."""
        if hours < 0:
            raise mutations.MutationError("hours must not be negative")
        with self.lock:
            start, end = self.state.clock.advance(timedelta(hours=hours))
            step_seed = seed if seed is not None else self.ds.advances + 1
            out = mutations.advance(self.ds, int(start.timestamp()), int(end.timestamp()), step_seed, rates)
            out["from"] = isoformat(start)
            out["to"] = isoformat(end)
            out["hours"] = hours
            out["seed"] = step_seed
            return out

    def _admin_rng(self) -> random.Random:
        self._admin_creates += 1
        return random.Random(f"dreamapply-admin:{self.ds.seed}:{self._admin_creates}")

    def create_applicants(self, specs: list[dict[str, Any]]) -> list[Applicant]:
        with self.lock:
            return [mutations.create_applicant(self.ds, spec, self.now(), self._admin_rng()) for spec in specs]

    def create_application(self, a: Applicant, spec: dict[str, Any]) -> Application:
        with self.lock:
            sink = EventSink()
            app = mutations.create_application(self.ds, a, spec, self.now(), sink)
            sink.flush(self.ds.journal)
            return app

    def edit_offer(self, offer_id: int, spec: dict[str, Any]) -> list[int]:
        with self.lock:
            sink = EventSink()
            mutations.edit_offer(self.ds, offer_id, spec, self.now(), sink)
            return sink.flush(self.ds.journal)

    def edit_applicant(self, a: Applicant, changes: dict[str, Any]) -> tuple[list[str], int | None]:
        with self.lock:
            return mutations.edit_applicant(self.ds, a, changes, self.now())

    def set_wire(self, a: Applicant, spec: Any) -> tuple[WireOverride, int | None]:
        """Serve ``a`` malformed from now on (``sandbox.data.wire``); with ``journal`` (default true) an
        ``Applicant was edited`` event makes incremental clients read it again."""
        override = WireOverride.from_spec(spec)
        with self.lock:
            a.wire = override
            return override, self._wire_event(a, override, spec.get("journal", True))

    def clear_wire(self, a: Applicant, journal: bool = True) -> int | None:
        """Serve ``a`` as DreamApply renders it again (the model's values)."""
        with self.lock:
            old, a.wire = a.wire, None
            return self._wire_event(a, old, journal) if old is not None else None

    def _wire_event(self, a: Applicant, override: WireOverride, journal: Any) -> int | None:
        if not journal:
            return None
        touched = {p.split(".", 1)[0] for p in [*override.set, *override.remove]}
        fields = [f for f in EDIT_FIELDS if f in touched] or ["name"]
        return self.ds.journal.append(self.now(), APPLICANT_EDITED, a.id, extra=edit_mask(fields))

    def set_consent(self, a: Applicant, consent_id: int, decision: Any) -> int:
        with self.lock:
            return mutations.set_consent(self.ds, a, consent_id, decision, self.now())

    def erase(self, a: Applicant, forgotten: bool = True) -> tuple[list[int], int]:
        with self.lock:
            return mutations.erase_applicant(self.ds, a, self.now(), forgotten)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            out = summary(self.ds)
            out["anchor"] = isoformat_epoch(self.ds.anchor)
            out["now"] = isoformat(self.state.clock.now())
            out["generation_seconds"] = round(self.generation_seconds, 3)
            out["requests_per_minute"] = self.limiter.requests_per_minute
            out["advances"] = self.ds.advances
            out["journal_retention_days"] = self.journal_retention_days
            return out


def isoformat_epoch(epoch: int) -> str:
    return isoformat(datetime.fromtimestamp(epoch, UTC))
