"""The DreamApply journal: an append-only, column-stored event log (IDs ascending with time).

Event names. DreamApply journal event names are templates: ``?`` is a placeholder whose values are
carried in the item's ``bind`` array. Names taken from the reference (§2.9):

- ``Applicant registered`` (bind ``[]``)
- ``Applicant was collected`` (never emitted by the sandbox, accepted in ``byEvents``)
- ``Application was created`` (bind ``[]``)
- ``Application was created by cloning`` (bind ``[]``; the applicant's 2nd+ application, sometimes)
- ``Application was submitted`` (bind ``[]``; the Unreplied offers are created with it)
- ``Offer was edited: ?`` (bind ``["type"]`` when an admin changes the offer type,
  ``["decision"]`` when the applicant accepts (Final) or declines the offer)
- ``Applicant was deleted`` (bind ``[]``; erasure, see also /purged-resources)

Sandbox choices (the reference does not list the real strings for these):

- ``Applicant was edited`` — profile edit; bind = the changed fields, e.g. ``["email", "phone"]``
  (field names: name, email, phone, citizenship, reference, matriculation, notes, type)
- ``Applicant consent was changed`` — a consent decision was made or changed; bind =
  ``[<consent id as string>, "Accept" | "Reject" | "Undecided"]``
- ``Application was withdrawn`` — the applicant withdrew an application; bind ``[]``
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator

APPLICANT_REGISTERED = "Applicant registered"
APPLICANT_COLLECTED = "Applicant was collected"
APPLICATION_CREATED = "Application was created"
APPLICATION_CLONED = "Application was created by cloning"
APPLICATION_SUBMITTED = "Application was submitted"
OFFER_EDITED = "Offer was edited: ?"
APPLICANT_DELETED = "Applicant was deleted"
# sandbox choices
APPLICANT_EDITED = "Applicant was edited"
CONSENT_CHANGED = "Applicant consent was changed"
APPLICATION_WITHDRAWN = "Application was withdrawn"

EVENT_NAMES: tuple[str, ...] = (
    "",  # code 0 unused
    APPLICANT_REGISTERED,
    APPLICANT_COLLECTED,
    APPLICATION_CREATED,
    APPLICATION_CLONED,
    APPLICATION_SUBMITTED,
    OFFER_EDITED,
    APPLICANT_DELETED,
    APPLICANT_EDITED,
    CONSENT_CHANGED,
    APPLICATION_WITHDRAWN,
)
EVENT_CODES: dict[str, int] = {name: code for code, name in enumerate(EVENT_NAMES) if name}

# Bits of the "extra" column of applicant edits.
EDIT_FIELDS: tuple[str, ...] = ("name", "email", "phone", "citizenship", "reference", "matriculation", "notes", "type")
OFFER_FIELDS: tuple[str, ...] = ("", "type", "decision")
CONSENT_DECISIONS: tuple[str, ...] = ("Undecided", "Accept", "Reject")


def edit_mask(fields: list[str] | tuple[str, ...] | set[str]) -> int:
    mask = 0
    for f in fields:
        mask |= 1 << EDIT_FIELDS.index(f)
    return mask


def consent_extra(consent_id: int, decision: str | None) -> int:
    return consent_id * 4 + CONSENT_DECISIONS.index(decision or "Undecided")


class Journal:
    """Columns of signed 64-bit integers; the event ID is the row index + 1. 0 means "no link"."""

    __slots__ = ("applicant", "application", "course", "event", "extra", "logged", "offer", "tracker")

    def __init__(self) -> None:
        self.logged = array("q")
        self.event = array("b")
        self.applicant = array("q")
        self.application = array("q")
        self.offer = array("q")
        self.course = array("q")
        self.tracker = array("q")
        self.extra = array("q")

    def __len__(self) -> int:
        return len(self.logged)

    @property
    def last_id(self) -> int:
        return len(self.logged)

    @property
    def last_logged(self) -> int:
        return self.logged[-1] if self.logged else 0

    def append(
        self,
        logged: int,
        event: str,
        applicant: int = 0,
        application: int = 0,
        offer: int = 0,
        course: int = 0,
        tracker: int = 0,
        extra: int = 0,
    ) -> int:
        # IDs ascend with time: never log before the previous event.
        if self.logged and logged < self.logged[-1]:
            logged = self.logged[-1]
        self.logged.append(logged)
        self.event.append(EVENT_CODES[event])
        self.applicant.append(applicant)
        self.application.append(application)
        self.offer.append(offer)
        self.course.append(course)
        self.tracker.append(tracker)
        self.extra.append(extra)
        return len(self.logged)

    def name(self, event_id: int) -> str:
        return EVENT_NAMES[self.event[event_id - 1]]

    def bind(self, event_id: int) -> list[str]:
        i = event_id - 1
        name = EVENT_NAMES[self.event[i]]
        extra = self.extra[i]
        if name == OFFER_EDITED:
            return [OFFER_FIELDS[extra] if 0 < extra < len(OFFER_FIELDS) else "type"]
        if name == APPLICANT_EDITED:
            return [f for b, f in enumerate(EDIT_FIELDS) if extra >> b & 1]
        if name == CONSENT_CHANGED:
            return [str(extra // 4), CONSENT_DECISIONS[extra % 4]]
        return []

    # -- ranges ---------------------------------------------------------------------------
    def index_at_or_after(self, ts: int) -> int:
        """Row index of the first event logged at or after ``ts``."""
        return bisect_left(self.logged, ts)

    def index_after(self, ts: int) -> int:
        """Row index of the first event logged after ``ts``."""
        return bisect_right(self.logged, ts)

    def ids(self, lo: int, hi: int, reverse: bool = False) -> Iterator[int]:
        """Row indexes lo..hi-1, oldest first (or newest first)."""
        return iter(range(hi - 1, lo - 1, -1)) if reverse else iter(range(lo, hi))

    def events(self) -> Iterator[tuple[int, int, str]]:
        for i in range(len(self.logged)):
            yield i + 1, self.logged[i], EVENT_NAMES[self.event[i]]
