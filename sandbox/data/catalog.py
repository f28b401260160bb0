"""The instance set-up the applicants refer to: academic years and terms, intakes, institutions, courses,
trackers, consent definitions, offer types and application statuses. Built from the anchor date so the
terms always straddle "now"."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

from sandbox.data.model import (
    AcademicYear,
    Catalog,
    ConsentDefinition,
    Course,
    Institution,
    Intake,
    OfferType,
    Status,
    Term,
    TermType,
    Tracker,
)

TERM_ID_BASE = 20
FALL, SPRING = 1, 2

STATUSES: tuple[tuple[str, str, str], ...] = (
    ("Blank", "#bbbbbb", "Application has been created but contains no data"),
    ("Prepare", "#8fb3d9", "Applicant is preparing the application"),
    ("Draft", "#6c8ebf", "Application is a draft"),
    ("Submitted", "#2e7d32", "Application has been submitted"),
    ("Reopened", "#f9a825", "Application was reopened for corrections"),
    ("Withdrawn", "#6d4c41", "Applicant withdrew the application"),
    ("Closed", "#424242", "Application has been closed"),
    ("Inactive", "#9e9e9e", "Application expired without submission"),
)

# (title, colour, ranking, positive, decide, decline)
OFFER_TYPES: tuple[tuple[str, str, str, bool, bool, bool], ...] = (
    ("Unreplied", "#cccccc", "Pending", False, False, False),
    ("Conditional", "#ffb300", "In quota", True, True, True),
    ("Unconditional", "#43a047", "In quota", True, True, True),
    ("Rejected", "#e53935", "Eliminated", False, False, False),
    ("Waitlisted", "#8e24aa", "Pending", False, False, False),
    ("Interview", "#1e88e5", "Pending", False, False, False),
)

COURSES: tuple[tuple[str, str | None, str, str, str, str, str, str, str], ...] = (
    # name, code, type, mode, award abbr, award full, duration, language, location
    ("Computer Science", "CS-BSC", "UG", "FT", "BSc", "Bachelor of Science", "3 years", "en", "Tallinn"),
    ("Software Engineering", "SE-MSC", "PG", "FT", "MSc", "Master of Science", "2 years", "en", "Tallinn"),
    (
        "Data Science and Artificial Intelligence",
        "DSAI-MSC",
        "PG",
        "FT",
        "MSc",
        "Master of Science",
        "2 years",
        "en",
        "Tartu",
    ),
    (
        "Business Administration",
        "BA-BBA",
        "UG",
        "FT",
        "BBA",
        "Bachelor of Business Administration",
        "3 years",
        "en",
        "Tallinn",
    ),
    ("International Relations", "IR-MA", "PG", "FT", "MA", "Master of Arts", "2 years", "en", "Tartu"),
    ("Ärijuhtimine (Business Management)", "ARI-BA", "UG", "PT", "BA", "Bachelor of Arts", "4 years", "et", "Tallinn"),
    ("Biomedicine", "BIOMED-MSC", "PG", "FT", "MSc", "Master of Science", "2 years", "en", "Tartu"),
    ("Law", "LAW-LLM", "PG", "PT", "LLM", "Master of Laws", "1.5 years", "en", "Tallinn"),
    ("Semiotics", "SEM-PHD", "PhD", "FT", "PhD", "Doctor of Philosophy", "4 years", "en", "Tartu"),
    ("Cyber Security", "CYBER-MSC", "PG", "FT", "MSc", "Master of Science", "2 years", "en", "Tallinn"),
    ("Music — Jazz Performance", "JAZZ-BMUS", "UG", "FT", "BMus", "Bachelor of Music", "3 years", "en", "Tallinn"),
    ("Estonian as a Foreign Language", None, "Foundation", "PT", "Cert", "Certificate", "1 year", "et", "Tartu"),
    ("Materials Science", "MAT-MSC", "PG", "FT", "MSc", "Master of Science", "2 years", "en", "Tartu"),
    ("Game Design & Development", "GAME-BA", "UG", "FT", "BA", "Bachelor of Arts", "3 years", "en", "Tallinn"),
    ("Public Health (Executive)", "MPH-EXEC", "PG", "PT", "MPH", "Master of Public Health", "2 years", "en", "Tartu"),
    ("Robotics Engineering", "ROBO-BSC", "UG", "FT", "BSc", "Bachelor of Science", "3 years", "en", "Tallinn"),
)
# Course status by index; the rest are Online.
COURSE_STATUS = {9: "Standby", 12: "Archived", 14: "Draft", 15: "Closed"}

TRACKERS: tuple[tuple[str, str | None, dict | None], ...] = (
    ("DISCOUNT10", "Tracker code to provide a discount to early applicants", {"reduction": "Percent", "percent": 10}),
    ("FACEBOOK", None, None),
    ("INSTAGRAM", "Instagram ads", None),
    ("GOOGLE-ADS", "Search campaign", None),
    ("WEBINAR", "Online info sessions", None),
    ("AGENT-X", "Agent X recruitment partner", {"reduction": "Amount", "amount": "50.00", "currency": "EUR"}),
    ("NEWSLETTER", None, None),
    ("LINKEDIN", "LinkedIn sponsored posts", None),
    ("ALUMNI-REF", "Referred by alumni", None),
    ("STUDYPORTALS", None, None),
)

CONSENTS: tuple[tuple[str, str, str | None], ...] = (
    (
        "Mandatory",
        "I agree to the terms of the privacy policy and the processing of my personal data for admission.",
        "https://www.example.edu/privacy-policy",
    ),
    ("Voluntary", "I would like to receive marketing communication (news, events, open days) by e-mail.", None),
    (
        "Voluntary",
        "I agree that my application data may be shared with partner universities.",
        "https://www.example.edu/partners",
    ),
)


def _ts(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())


def build_catalog(anchor: int, rng: random.Random) -> Catalog:
    now = datetime.fromtimestamp(anchor, UTC)
    first_year = (now - timedelta(days=730)).year
    last_year = now.year + 1
    years: dict[int, AcademicYear] = {}
    terms: dict[int, Term] = {}
    intakes: dict[int, Intake] = {}
    term_types = {FALL: TermType(FALL, "Fall semester"), SPRING: TermType(SPRING, "Spring semester")}
    term_id = TERM_ID_BASE
    intake_id = 0
    for y in range(first_year, last_year + 1):
        label = f"{y}/{(y + 1) % 100:02d}"
        years[y] = AcademicYear(y, label, f"{y}-09-01")
        for type_id, start, grace, finish, opens, deadline, late in (
            (
                FALL,
                date(y, 9, 1),
                date(y, 9, 15),
                date(y + 1, 1, 31),
                date(y - 1, 10, 1),
                date(y, 6, 1),
                date(y, 7, 15),
            ),
            (SPRING, date(y + 1, 2, 1), date(y + 1, 2, 15), date(y + 1, 6, 30), date(y, 5, 1), date(y, 11, 30), None),
        ):
            term_id += 1
            tname = f"{term_types[type_id].name} {label}"
            terms[term_id] = Term(
                term_id,
                y,
                tname,
                type_id,
                start.isoformat(),
                grace.isoformat(),
                finish.isoformat(),
                _ts(start),
                _ts(grace),
            )
            intake_id += 1
            intakes[intake_id] = Intake(
                intake_id,
                f"{term_types[type_id].name} intake {label}",
                term_id,
                opens.isoformat(),
                deadline.isoformat(),
                late.isoformat() if late else None,
                "Strict (course)" if type_id == FALL else "Flexible",
                7 if type_id == FALL else 14,
                (start - timedelta(days=3)).isoformat(),
                (start - timedelta(days=31)).isoformat(),
                _ts(opens),
                _ts(late or deadline),
            )
    institutions = {
        1: Institution(1, "Example University of Technology", "EE", "https://www.example.edu"),
        2: Institution(2, "Example Academy of Arts", "EE", "https://arts.example.edu"),
    }
    courses: dict[int, Course] = {}
    base = anchor - 900 * 86400
    for i, (name, code, ctype, mode, abbr, full, duration, lang, loc) in enumerate(COURSES):
        cid = i + 1
        courses[cid] = Course(
            id=cid,
            name=name,
            code=code,
            code_internal=f"P{1000 + cid * 7}" if i % 3 else None,
            status=COURSE_STATUS.get(i, "Online"),
            type=ctype,
            mode=mode,
            award_abbr=abbr,
            award_full=full,
            duration=duration,
            credits=None if ctype == "PhD" else str({"UG": 180, "PG": 120, "Foundation": 60}.get(ctype, 90)),
            language=lang,
            country="EE",
            location=loc,
            institution_id=2 if "Music" in name or "Game" in name else 1,
            quota=rng.choice((None, 20, 25, 30, 40, 60)),
            featured=i < 3,
            updated=base + rng.randrange(0, 600) * 86400 + rng.randrange(86400),
            accreditation=None if i % 4 else "EKKA 2023",
        )
    trackers: dict[int, Tracker] = {}
    for i, (code, notes, reduction) in enumerate(TRACKERS):
        tid = i + 1
        trackers[tid] = Tracker(tid, code, base + i * 37 * 86400 + rng.randrange(86400), notes, reduction)
    consents = {i + 1: ConsentDefinition(i + 1, t, text, link) for i, (t, text, link) in enumerate(CONSENTS)}
    offer_types = {
        i + 1: OfferType(i + 1, title, colour, ranking, positive, confirm=positive, decide=decide, decline=decline)
        for i, (title, colour, ranking, positive, decide, decline) in enumerate(OFFER_TYPES)
    }
    statuses = {i + 1: Status(i + 1, title, colour, verbose) for i, (title, colour, verbose) in enumerate(STATUSES)}
    return Catalog(years, term_types, terms, intakes, institutions, courses, trackers, consents, offer_types, statuses)
