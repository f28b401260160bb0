"""The reads of one extract: applicants by keyset and by ID ranges, their applications, the journal and the
purge list (the request budget is in :mod:`d365.pipeline.extract`'s docstring).

Airflow-free. ``client`` is anything with the methods of :class:`d365.hooks.dreamapply.DreamApplyHook`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from d365.hooks.errors import ApiError
from d365.pipeline.extract_normalise import _key_id, link_id, normalise_applicant, normalise_application
from d365.pipeline.progress import Progress
from d365.pipeline.records import (
    ApplicantRecord,
    ApplicationRecord,
    Catalog,
)

log = logging.getLogger(__name__)

APPLICANT_EXPAND = "consents,trackers"
APPLICATION_EXPAND = "courses,offers"
JOURNAL_PAGE = 1024  # the journal's cap (reference §1.6)
LIST_PAGE_CAP = 32768  # /applicants and /applications without expand
APPLICANT_ID_CHUNK = 500
# the cadence of the applicant scan's progress lines, whichever comes first; a scan that ends sooner logs none and
# costs no count (the first line asks DreamApply how many applicants there are to read: one HEAD, X-Count)
PROGRESS_PAGES = 10
PROGRESS_SECONDS = 30.0


def _ranges(ids: Iterable[int], gap: int) -> list[tuple[int, int]]:
    """Sorted IDs grouped into ``(first, last)`` ranges, split where two neighbours are more than ``gap`` apart."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if out and i - out[-1][1] <= gap:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _chunks(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


# -- fetching ---------------------------------------------------------------------------------
class _Run:
    def __init__(self, client: Any, catalog: Catalog, years: list[int], page_size: int) -> None:
        self.client = client
        self.catalog = catalog
        self.years = years
        self.page_size = page_size
        self.raw: dict[int, Mapping[str, Any]] = {}  # applicant id -> wire record
        self.reason: dict[int, str] = {}
        self.unread: set[int] = set()  # wanted, but their range request failed after the hook's retries

    def scan_applicants(self, since: int, reason: str) -> int:
        """Every applicant from ``since`` on (keyset); returns the highest ID seen (0 if none). A long scan logs pages
        read of the expected count (``scan_progress``)."""
        top = 0
        params = {"bySince": since, "expand": APPLICANT_EXPAND}
        progress = self.scan_progress(since)
        for page in self.client.iter_collection_pages("/applicants", params, self.page_size):
            progress.advance(1, len(page))
            for key, item in page.items():
                aid = _key_id(key, item)
                if aid is None:
                    log.warning("an applicant record without a usable id (%d characters of key) was skipped", len(key))
                    continue
                top = max(top, aid)
                if aid not in self.raw:
                    self.raw[aid] = item
                    self.reason[aid] = reason
        if progress.lines:  # a scan that said nothing on the way ends quietly too
            progress.finish()
        return top

    def scan_progress(self, since: int) -> Progress:
        """Pages of applicants read, of the count DreamApply's ``X-Count`` gives for the scan (asked when the first
        line is due; a count that fails leaves the total unknown, never the scan)."""

        def count(progress: Progress) -> None:
            try:
                expected = int(self.client.count("/applicants", {"bySince": since}))
            except ApiError as exc:
                log.warning("extract: the number of applicants to read is unknown (%s)", exc.describe())
                return
            progress.total, progress.total_steps = expected, -(-expected // self.page_size)

        return Progress(
            log,
            what="extract",
            unit="applicants",
            step="page",
            estimated=True,  # applicants may register while the scan runs
            every_seconds=PROGRESS_SECONDS,
            every_steps=PROGRESS_PAGES,
            prepare=count,
        )

    def fetch_ids(self, ids: Iterable[int], reason: str, *, carry_failures: bool = False) -> None:
        """Just these applicants, by ID ranges (never one request per applicant).

        ``carry_failures``: a range whose request still fails after the hook's retries (a retryable error:
        5xx, network, a lying 200) leaves its IDs in ``unread`` and the other ranges go on; anything else
        (authentication, a bad request) is raised."""
        wanted = {i for i in ids if i not in self.raw}
        for lo, hi in _ranges(wanted, self.page_size):
            params = {"bySince": lo, "byUntil": hi, "expand": APPLICANT_EXPAND}
            found: dict[int, Mapping[str, Any]] = {}
            try:
                for page in self.client.iter_collection_pages("/applicants", params, self.page_size):
                    for key, item in page.items():
                        aid = _key_id(key, item)
                        if aid in wanted and aid not in self.raw:
                            found[aid] = item
            except ApiError as exc:
                if not (carry_failures and exc.retryable):
                    raise
                ids_in_range = {i for i in wanted if lo <= i <= hi}
                log.warning("applicants %d..%d not read (%s): carried to the next run", lo, hi, exc.describe())
                self.unread |= ids_in_range
                continue
            for aid, item in found.items():
                self.raw[aid] = item
                self.reason[aid] = reason

    def _application_params(self) -> dict[str, Any]:
        return {"byAcademicYears": self.years, "expand": APPLICATION_EXPAND}

    def applications_all(self) -> dict[int, list[ApplicationRecord]]:
        """Every application (keyset over all academic years), kept for the fetched applicants."""
        out: dict[int, list[ApplicationRecord]] = {}
        if not self.years:
            return out
        for page in self.client.iter_collection_pages("/applications", self._application_params(), self.page_size):
            self._keep(page, out)
        return out

    def applications_of_fetched(self) -> dict[int, list[ApplicationRecord]]:
        ids = sorted(self.raw)
        out: dict[int, list[ApplicationRecord]] = {}
        if not ids or not self.years:
            return out
        chunks = -(-len(ids) // APPLICANT_ID_CHUNK)
        if chunks > 1:
            total = self.client.count("/applications", {"byAcademicYears": self.years})
            if total // self.page_size + 1 < chunks:
                return self.applications_all()
        for chunk in _chunks(ids, APPLICANT_ID_CHUNK):
            params = {**self._application_params(), "byApplicantIDs": chunk}
            for page in self.client.iter_collection_pages("/applications", params, self.page_size):
                self._keep(page, out)
        return out

    def _keep(self, page: Mapping[str, Mapping[str, Any]], out: dict[int, list[ApplicationRecord]]) -> None:
        for item in page.values():
            aid = link_id(item.get("applicant"))
            if aid is not None and aid in self.raw:
                out.setdefault(aid, []).append(normalise_application(item, self.catalog, self.client))

    def records(self, apps: dict[int, list[ApplicationRecord]]) -> list[ApplicantRecord]:
        return [
            normalise_applicant(self.raw[aid], self.catalog, apps.get(aid, []), self.reason[aid], self.client, aid)
            for aid in sorted(self.raw)
        ]


def _newest_event_id(client: Any, event_names: Sequence[str]) -> int | None:
    page = client.get_collection("/journal", {"byEvents": list(event_names), "order": "newest-first", "limit": 1})
    return max((i for k, v in page.items() if (i := _key_id(k, v)) is not None), default=None)


def _read_journal(client: Any, event_names: Sequence[str], cursor: int) -> tuple[list[Mapping[str, Any]], int]:
    """Events after ``cursor`` (oldest first, pages of 1024 until a short page) and the highest ID read."""
    events: list[Mapping[str, Any]] = []
    top = cursor
    params = {"byEvents": list(event_names), "bySince": cursor + 1}
    for page in client.iter_collection_pages("/journal", params, JOURNAL_PAGE):
        for key, item in page.items():
            eid = _key_id(key, item)
            if eid is None or eid <= cursor:
                continue
            events.append(item)
            top = max(top, eid)
    return events, top


def _applicants_of_applications(client: Any, app_ids: set[int], years: list[int], page_size: int) -> set[int]:
    """Resolve application IDs (events without an applicant link) to applicant IDs, by ID ranges."""
    out: set[int] = set()
    if not app_ids or not years:
        return out
    for lo, hi in _ranges(app_ids, LIST_PAGE_CAP):
        params = {"byAcademicYears": years, "bySince": lo, "byUntil": hi}
        for page in client.iter_collection_pages("/applications", params, LIST_PAGE_CAP):
            for key, item in page.items():
                if _key_id(key, item) in app_ids and (aid := link_id(item.get("applicant"))) is not None:
                    out.add(aid)
    return out


def _erased(client: Any) -> tuple[list[int], set[int]]:
    """Applicant IDs purged with ``request_to_be_forgotten`` (all of them: the ledger decides what is new),
    and every purged applicant ID (those are gone from DreamApply: never carried)."""
    forgotten: set[int] = set()
    purged: set[int] = set()
    for page in client.iter_paginated("/purged-resources"):
        for key, item in page.items():
            if str(item.get("type", "")).lower() != "applicant":
                continue
            pid = _key_id(key, item)
            if pid is None:
                continue
            purged.add(pid)
            if item.get("request_to_be_forgotten"):
                forgotten.add(pid)
    return sorted(forgotten), purged
