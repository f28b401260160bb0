"""Progress lines of long work (``d365.pipeline.progress``): counts, rate and ETA on a deterministic clock, and the
cadence (every N steps or every T seconds, whichever first, and a last line)."""

from __future__ import annotations

import logging

import pytest

from d365.pipeline.progress import Progress, duration, format_progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_line_holds_counts_rate_and_eta() -> None:
    line = format_progress(
        "load", unit="leads", done=1200, total=4000, step="batch", steps=12, total_steps=40, rate=80.0,
        detail="throttling waits 3 (12.5 s)",
    )  # fmt: skip
    assert line == (
        "load progress: 1,200 of 4,000 leads (30%), batch 12 of ~40, 80.0 leads/s, throttling waits 3 (12.5 s), "
        "ETA 0:00:35"
    )
    unknown = format_progress(
        "extract", unit="applicants", done=500, total=None, step="page", steps=1, total_steps=None, rate=None
    )
    assert unknown == "extract progress: 500 applicants, page 1, - applicants/s, ETA unknown"
    approx = format_progress(
        "extract", unit="applicants", done=3000, total=2500, step="page", steps=3, total_steps=2, rate=100.0,
        estimated=True,
    )  # fmt: skip
    # more than expected (applicants registered meanwhile): capped at 100 %, never a negative ETA
    assert (
        approx == "extract progress: 3,000 of ~2,500 applicants (100%), page 3 of ~3, 100.0 applicants/s, ETA 0:00:00"
    )
    assert duration(3725.4) == "1:02:05" and duration(-3) == "0:00:00"


def test_rate_and_eta_count_only_this_runs_work(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = Progress(
        logging.getLogger("test.progress"), what="load", unit="leads", step="batch", total=1000, total_steps=10,
        every_seconds=30, every_steps=100, clock=clock,
    )  # fmt: skip
    progress.done_before = 400  # an earlier try wrote these: done, but not this run's speed
    clock.now += 10
    progress.advance(1, 100)
    assert progress.done == 500 and progress.rate() == 10.0
    assert progress.line().endswith("500 of 1,000 leads (50%), batch 1 of ~10, 10.0 leads/s, ETA 0:00:50")


def test_a_line_every_n_steps_or_every_t_seconds_whichever_first_and_a_last_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    progress = Progress(
        logging.getLogger("test.progress"), what="load", unit="leads", step="batch", total=100, total_steps=10,
        every_seconds=30, every_steps=3, clock=clock,
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="test.progress")
    logged = []
    for seconds in (1, 1, 1, 1, 40, 1, 1):  # steps 3 and 6 by count; step 5 by time (40 s after step 3's line)
        clock.now += seconds
        logged.append(progress.advance(1, 10))
    assert logged == [False, False, True, False, True, False, False]
    assert progress.advance(0, 0) is False  # a tick without work, before it is due
    clock.now += 31
    assert progress.advance(0, 0) is True  # ... and once due (the load waiting out throttling)
    progress.finish()  # nothing new since: no last line
    assert len(caplog.messages) == 3
    progress.advance(1, 30)
    progress.finish()
    assert caplog.messages[-1].startswith("load progress: 100 of 100 leads (100%), batch 8 of ~10")
    assert len(caplog.messages) == 4
