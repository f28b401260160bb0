"""Progress lines for long work (a first load or a full resync of 100 000+ applicants runs for many minutes).

Airflow-free. ``Progress`` counts steps (batches, pages) and items (leads, applicants) and logs one line at a steady
cadence: when ``every_seconds`` have passed or ``every_steps`` steps were taken since the last line, whichever comes
first, and once more at the end. A line holds counts, a rate and an ETA only, never a record's values::

    load progress: 1,200 of 4,000 leads (30%), batch 12 of ~40, 85.3 leads/s, throttling waits 3 (12.5 s), ETA 0:00:33

The rate counts only the items of this run (``done_before``: items an earlier try already did, counted as done but
not as speed); the ETA is the items left at that rate. Totals may be estimates (``~``) or unknown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


def duration(seconds: float) -> str:
    """``H:MM:SS`` (whole seconds)."""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def format_progress(
    what: str,
    *,
    unit: str,
    done: int,
    total: int | None,
    step: str,
    steps: int,
    total_steps: int | None,
    rate: float | None,
    estimated: bool = False,
    detail: str = "",
) -> str:
    """One progress line; ``estimated`` marks the totals as approximate (``~``)."""
    approx = "~" if estimated else ""
    if total is not None and total > 0:
        head = f"{done:,} of {approx}{total:,} {unit} ({min(100, done * 100 // total)}%)"
    else:
        head = f"{done:,} {unit}"
    parts = [head]
    if total_steps is not None and total_steps > 0:
        parts.append(f"{step} {steps:,} of ~{max(total_steps, steps):,}")
    else:
        parts.append(f"{step} {steps:,}")
    parts.append(f"{rate:,.1f} {unit}/s" if rate is not None else f"- {unit}/s")
    if detail:
        parts.append(detail)
    if total is not None and rate:
        parts.append(f"ETA {duration(max(0, total - done) / rate)}")
    elif total is not None and done >= total:
        parts.append("ETA 0:00:00")
    else:
        parts.append("ETA unknown")
    return f"{what} progress: " + ", ".join(parts)


class Progress:
    """Counts of long work and the cadence of its log lines.

    :param detail: called for each line, returns an extra part (the load's throttling waits), or ""
    :param prepare: called once, before the first line (the extract asks for its total only when a line is due)
    :param clock: seconds, monotonic (tests pass a fake one)
    """

    def __init__(
        self,
        log: logging.Logger | logging.LoggerAdapter[Any],
        *,
        what: str,
        unit: str,
        step: str,
        total: int | None = None,
        total_steps: int | None = None,
        estimated: bool = False,
        every_seconds: float = 30.0,
        every_steps: int = 20,
        detail: Callable[[], str] | None = None,
        prepare: Callable[[Progress], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.what, self.unit, self.step = what, unit, step
        self.total, self.total_steps, self.estimated = total, total_steps, estimated
        self.every_seconds, self.every_steps = every_seconds, max(1, every_steps)
        self.detail = detail
        self.prepare = prepare
        self.clock = clock
        self.started = clock()
        self.steps = 0
        self.items = 0  # done by this run (the rate)
        self.done_before = 0  # done by an earlier try: counted as done, not as speed
        self.lines = 0
        self._last_time = self.started
        self._last_steps = 0

    @property
    def done(self) -> int:
        return self.done_before + self.items

    def rate(self) -> float | None:
        elapsed = self.clock() - self.started
        return self.items / elapsed if elapsed > 0 and self.items else None

    def line(self) -> str:
        return format_progress(
            self.what,
            unit=self.unit,
            done=self.done,
            total=self.total,
            step=self.step,
            steps=self.steps,
            total_steps=self.total_steps,
            rate=self.rate(),
            estimated=self.estimated,
            detail=self.detail() if self.detail else "",
        )

    def advance(self, steps: int = 1, items: int = 0) -> bool:
        """Count work done; log a line when one is due. True when it logged."""
        self.steps += steps
        self.items += items
        now = self.clock()
        if now - self._last_time >= self.every_seconds or self.steps - self._last_steps >= self.every_steps:
            self._emit(now)
            return True
        return False

    def finish(self) -> None:
        """The last line, unless the last line already said it all."""
        if self.steps != self._last_steps or self.lines == 0:
            self._emit(self.clock())

    def _emit(self, now: float) -> None:
        if self.prepare is not None:
            prepare, self.prepare = self.prepare, None
            prepare(self)
        self.log.info("%s", self.line())
        self.lines += 1
        self._last_time, self._last_steps = now, self.steps
