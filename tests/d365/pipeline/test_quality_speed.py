"""The fast paths of the data quality step decide exactly what the per-value rules decide.

The vectorised pre-screens (dates, international phones), the worker processes for the phones and the whole
derived frame are held to the rules they stand for: ``parse_instant`` / ``instant_ok``, ``mapping.parse_phone``,
and the benchmark's row-by-row baseline (every check, one row at a time, no cache).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from collections.abc import Iterator
from itertools import product
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from benchmarks.validate_applicants import (
    build_records,
    compare_verdicts,
    naive_duplicates,
    naive_validate,
    validate_verdicts,
)
from d365.pipeline import quality as Q
from d365.pipeline import quality_checks as C
from d365.pipeline import quality_frame as F
from d365.pipeline import quality_parallel as P
from d365.pipeline.fit import LeadSchema
from d365.pipeline.mapping import parse_phone
from d365.pipeline.settings import load_settings
from sandbox.data.messy import MESSY_CITIZENSHIPS, MESSY_PHONES, mojibake, replacement_chars

SCHEMA = LeadSchema.from_metadata_json()
DEFAULT = load_settings()


def with_quality(**changes: Any) -> Any:
    return DEFAULT.model_copy(update={"quality": DEFAULT.quality.model_copy(update=changes)})


# --------------------------------------------------------------------------------------------------
# dates
# --------------------------------------------------------------------------------------------------


def plain_instants() -> list[str]:
    """Every month and day (and a few out of range) of leap, non-leap and boundary years, edge times, each
    offset form the pre-screen decides."""
    years = ("0000", "0001", "1600", "1752", "1753", "1900", "2000", "2023", "2024", "2100", "2400", "9999")
    times = ("00:00:00", "23:59:59", "24:00:00", "23:60:00", "23:59:60", "12:30:45")
    return [
        f"{y}-{m:02d}-{d:02d}T{t}{z}"
        for y, m, d, t, z in product(years, range(14), range(33), times, ("", "Z", "+00:00"))
    ]


def test_plain_instants_are_decided_as_parse_instant_reads_them() -> None:
    values = plain_instants()
    series = pd.Series(values, dtype="str")
    decided, ok = C.fast_instants_ok(series, 1753)
    assert decided.all()
    assert ok.tolist() == [C.instant_ok(v) for v in values]
    decided, ok = C.fast_instants_ok(series, 1)
    assert ok.tolist() == [C.date_ok(v) for v in values]
    assert 0 < ok.sum() < len(values)


@pytest.mark.parametrize(
    "value",
    [
        "2025-01-01T10:00:00+01:00",  # an offset moves the UTC year at the edges: parse_instant decides
        "2025-01-01T10:00:00.5Z",
        "2025-01-01 10:00:00",
        " 2025-01-01T10:00:00Z",
        "2025-01-01T10:00:00Z\n",
        "2025-01-01",
        "٢٠٢٥-01-01T10:00:00Z",  # non-ASCII digits
        "20250101T100000Z",
    ],
)
def test_other_date_forms_are_left_to_parse_instant(value: str) -> None:
    decided, _ = C.fast_instants_ok(pd.Series([value, None], dtype="str"))
    assert decided.tolist() == [False, False]


# --------------------------------------------------------------------------------------------------
# phones
# --------------------------------------------------------------------------------------------------

REGIONS = [(None,), ("EE",), ("US",), ("GB",), ("IT",), ("AR",), ("DE", "EE"), ("FR",)]
TYPED = [
    "+372 5123 4567",
    "+372 5123 45670",
    "0037251234567",
    "00 44 20 7946 0958",
    "+44 (0) 20 7946 0958",
    "+1 (212) 555-0123 ext. 5",
    "+39 06 1234 5678",
    "+54 9 11 1234 5678",
    "+49 0 30 123456",
    "+86 10 1234 6118 ext. 439",
    "+999 123 456",
    "+0 123 456",
    "+3",
    "+",
    "00",
    "+800 1234 5678",
    "+37251234567890123",
    "+44 7700 9040040",
]


def test_the_international_prescreen_accepts_only_what_the_rule_accepts() -> None:
    accepted = 0
    for text, regions in product(TYPED, REGIONS):
        if C.international_phone_possible(text, regions):
            accepted += 1
            assert C.phone_ok(text, regions), (text, regions)
    assert accepted > len(TYPED)  # it takes the common case


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.from_regex(C.INTERNATIONAL_PHONE, fullmatch=True),
    st.sampled_from(REGIONS),
)
def test_every_phone_of_the_prescreen_form_the_prescreen_accepts_is_valid_for_the_rule(
    text: str, regions: tuple[str | None, ...]
) -> None:
    if C.international_phone_possible(text, regions):
        assert C.phone_ok(text, regions)


# --------------------------------------------------------------------------------------------------
# worker processes
# --------------------------------------------------------------------------------------------------

PARENT = os.getpid()


def odd(values: list[int], offset: int) -> list[bool]:
    return [(v + offset) % 2 == 1 for v in values]


def odd_dying_in_a_worker(values: list[int], offset: int) -> list[bool]:
    if os.getpid() != PARENT:
        os._exit(3)  # a worker killed mid-way (out of memory, a signal)
    return odd(values, offset)


def odd_hanging_in_a_worker(values: list[int], offset: int) -> list[bool]:
    if os.getpid() != PARENT:
        time.sleep(3600)  # a worker stuck (a lock inherited held by the fork)
    return odd(values, offset)


def odd_slowly(values: list[int], offset: int) -> list[bool]:
    time.sleep(0.002)
    return odd(values, offset)


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "usable_cpus", lambda: 2)


@pytest.mark.usefixtures("two_cores")
def test_a_worker_and_this_process_share_the_chunks_and_give_the_verdicts_in_order() -> None:
    items = list(range(20_000))
    with P.ParallelChecks(odd_slowly, items, 1, min_items=10, chunk=100) as checks:
        assert len(checks._processes) == 1  # the worker really started
        verdicts = checks.result()
        taken = sum(checks._taken[i] for i in range(len(checks._bounds)))
    assert verdicts.tolist() == odd(items, 1)
    assert taken == len(checks._bounds) and checks._processes == []  # every chunk taken, the worker reaped


@pytest.mark.usefixtures("two_cores")
def test_what_a_dead_or_hanging_worker_took_is_done_here(monkeypatch: pytest.MonkeyPatch) -> None:
    items = list(range(3000))
    assert P.ParallelChecks(odd_dying_in_a_worker, items, 1, min_items=10, chunk=50).result().tolist() == odd(items, 1)
    monkeypatch.setattr(P, "WAIT_SECONDS", 0.5)
    hanging = P.ParallelChecks(odd_hanging_in_a_worker, items, 0, min_items=10, chunk=50)
    started = time.monotonic()
    assert hanging.result().tolist() == odd(items, 0)
    assert time.monotonic() - started < 30 and hanging._processes == []  # stopped, not waited for


@pytest.mark.usefixtures("two_cores")
def test_without_a_process_this_process_does_the_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process(self: Any) -> None:
        raise OSError("fork: resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", no_process)
    checks = P.ParallelChecks(odd, list(range(3000)), 1, min_items=10, chunk=50)
    assert checks._processes == [] and checks.result().tolist() == odd(list(range(3000)), 1)


def test_small_inputs_one_core_and_daemons_stay_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "usable_cpus", lambda: 2)
    assert P._workers(P.MIN_PARALLEL - 1, P.MIN_PARALLEL) == 0
    assert P._workers(P.MIN_PARALLEL, P.MIN_PARALLEL) == 1
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    assert P._workers(10**6, P.MIN_PARALLEL) == 0
    monkeypatch.undo()
    monkeypatch.setattr(P, "usable_cpus", lambda: 1)
    assert P._workers(10**6, P.MIN_PARALLEL) == 0
    assert P.ParallelChecks(odd, [], 0).result().tolist() == []


# --------------------------------------------------------------------------------------------------
# the whole step against the row-by-row baseline
# --------------------------------------------------------------------------------------------------

ODD_PHONES = [*MESSY_PHONES, *TYPED, "call me", "n/a", "+372 5x1 2345", "+٣٧٢ ٥١٢٣ ٤٥٦٧", "+372\u00a05123 4567", " "]
ODD_COUNTRIES = [*MESSY_CITIZENSHIPS, "ee", "EST", "Estonia", "XK", "AR", "", "Ã©E", "E\ufffd", 12, None]
ODD_DATES = [*plain_instants()[::997], "1753-01-01T00:30:00+01:00", "9999-12-31T23:59:59-01:00", "yesterday", 17, ""]
ODD_TEXTS = [None, "", " ", "GarcÃ\xada", "Se\ufffdn", "Ãngel", 12, ["x"], "\ud800abc", "😀" * 60, "X" * 200]
ODD_EMAILS = ["bad@@x", "jürgen@müller.de", "x@localhost", "a--b@x.com", "a" * 95 + "@b.com", "\ud800@b.com", 12]


def odd_records(records: list[dict[str, Any]], seed: int) -> Iterator[Any]:
    """Each record with one to three odd values (the messy generator's and worse), and a few non-records."""
    rng = random.Random(seed)
    for record in records:
        r = dict(record)
        for _ in range(rng.randint(1, 3)):
            pick = rng.random()
            if pick < 0.3:
                r["phone"] = rng.choice(ODD_PHONES)
            elif pick < 0.45:
                r["citizenship"] = rng.choice(ODD_COUNTRIES)
            elif pick < 0.55:
                r["registered"] = rng.choice(ODD_DATES)
            elif pick < 0.65:
                app = {"id": 1, rng.choice(("created", "submitted", "revised")): rng.choice(ODD_DATES)}
                r["applications"] = rng.choice([[app], "none", [None], [{"id": 2, "malformed": ["courses: x"]}]])
            elif pick < 0.75:
                key = rng.choice(("name_given", "name_family", "name_full", "reference", "name_middle"))
                r[key] = rng.choice([*ODD_TEXTS, mojibake(str(r.get(key) or "José")), replacement_chars("José")])
            elif pick < 0.85:
                r["email"] = rng.choice(ODD_EMAILS)
            elif pick < 0.95:
                r["applicant_id"] = rng.choice([0, True, "7", " 8 ", 2**63, "12a", None, records[0]["applicant_id"]])
            else:
                r["malformed"] = ["name: not an object"]
        yield r if rng.random() > 0.01 else rng.choice([None, "x", 5])


@pytest.fixture(scope="module")
def extract() -> list[Any]:
    generated = build_records(1200, 11)
    return generated + list(odd_records(generated[:800], 3))


@pytest.mark.parametrize(
    "settings",
    [DEFAULT, with_quality(default_region="EE", quarantine_missing_email=True)],
    ids=["default", "default_region+email"],
)
@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_validate_agrees_with_the_row_by_row_baseline_on_every_row_and_check(
    extract: list[Any], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = list(range(len(extract)))
    naive = naive_validate(extract, naive_duplicates(extract), settings, SCHEMA)
    serial = Q.validate_applicants(extract, settings=settings, schema=SCHEMA)
    assert compare_verdicts(rows, naive, validate_verdicts(serial, rows)) == []
    assert 300 < serial.invalid_rows < len(extract) - 500  # the odd rows fail, most generated ones pass
    # the phones shared with a worker process (as for a large extract): the same result
    monkeypatch.setattr(P, "usable_cpus", lambda: 2)
    monkeypatch.setattr(F, "phones_parallel_from", lambda: 10)
    monkeypatch.setattr(P, "CHUNK", 64)
    parallel = Q.validate_applicants(extract, settings=settings, schema=SCHEMA)
    assert parallel.failures == serial.failures and parallel.check_counts == serial.check_counts


def test_phones_go_to_a_worker_only_beyond_what_the_rules_cache_holds() -> None:
    """Below that the mapping reads the numbers validation parsed from the cache: a worker would cost it more."""
    size = parse_phone.cache_info().maxsize
    assert F.phones_parallel_from() == max(P.MIN_PARALLEL, size + 1)
