"""A yes/no check of many distinct values, shared with a worker process when the machine has a core to spare.

Phone parsing (phonenumbers, pure Python) is most of the data quality step's time on a large extract and runs
once per distinct value, so the values split cleanly: :class:`ParallelChecks` forks worker processes as soon as
it is created (they start in milliseconds with everything imported and the values in their memory), so the
caller can derive its other columns meanwhile. Workers take chunks from the front of the list, this process
from the back once it asks for the result (a busy core is not waited for); the verdicts go to shared memory.
What a worker did not finish (no ``fork`` on this platform, a daemon process, a worker that died or hangs) is
done in this process: the result is the same either way, in the values' order.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

import numpy as np

# Below this many values a worker costs more than it saves (the fork, the page copies it causes).
MIN_PARALLEL = 20_000
CHUNK = 500  # values per claim: about 10 ms of phone parsing, so the processes finish close together
MAX_WORKERS = 3
# How long this process waits for a worker's last chunk once none is left to claim: at least this many seconds,
# and at least 20 times the chunk time this process measured. A worker still busy then is stopped (and its
# chunk done here): a fork that inherited a held lock can hang, and the result must not.
WAIT_SECONDS = 10.0


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _workers(n: int, min_items: int) -> int:
    """How many worker processes to start for ``n`` values: 0 = this process does all the work."""
    if n < min_items or multiprocessing.current_process().daemon:  # a daemon process may not have children
        return 0
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0  # spawning fresh interpreters (re-importing the pipeline) would cost more than it saves
    return max(0, min(usable_cpus() - 1, MAX_WORKERS))


class ParallelChecks:
    """``fn(values, *args) -> list[bool]`` over ``items``, started on worker processes on creation when there
    are ``min_items`` (default :data:`MIN_PARALLEL`) or more and a spare core; :meth:`result` gives one verdict
    per item, in order. ``fn`` must be pure. Use it as a context manager (or call :meth:`close`) so the workers
    end even when the caller fails before asking for the result."""

    def __init__(
        self,
        fn: Callable[..., Sequence[bool]],
        items: Sequence[Any],
        *args: Any,
        min_items: int | None = None,
        chunk: int | None = None,
    ) -> None:
        self._fn, self._args = fn, args
        self._items = items
        n = len(items)
        workers = _workers(n, MIN_PARALLEL if min_items is None else min_items)
        size = (chunk or CHUNK) if workers else max(n, 1)
        self._bounds = [(i, min(i + size, n)) for i in range(0, n, size)]
        self._processes: list[BaseProcess] = []
        if not workers:
            return
        ctx = multiprocessing.get_context("fork")
        # shared memory and no lock (a worker killed while holding one would stop this process): a chunk is marked
        # taken before it is checked, so two processes only ever check the same chunk twice when they reach it at
        # the same moment, which is harmless (the same verdicts); a chunk is done once its verdicts are written
        self._verdicts = ctx.RawArray("b", n)
        self._taken = ctx.RawArray("b", len(self._bounds))
        self._done = ctx.RawArray("b", len(self._bounds))
        try:
            for number in range(workers):
                process = ctx.Process(target=self._work, args=(number, workers), daemon=True, name="quality-checks")
                process.start()
                self._processes.append(process)
        except OSError:  # no (further) process could be started: the ones that did, and this process, do the work
            pass

    def _run(self, index: int) -> None:
        start, stop = self._bounds[index]
        np.frombuffer(self._verdicts, dtype=np.int8)[start:stop] = self._fn(self._items[start:stop], *self._args)
        self._done[index] = 1

    def _work(self, number: int, workers: int) -> None:
        """Worker ``number`` of ``workers``: every ``workers``-th chunk from the front, until one is taken (by
        this process, which takes them from the back: the rest are its)."""
        for signum in (signal.SIGTERM, signal.SIGINT):  # a signal ends a worker, not the parent's handlers in it
            signal.signal(signum, signal.SIG_DFL)
        for index in range(number, len(self._bounds), workers):
            if self._taken[index]:
                return
            self._taken[index] = 1
            self._run(index)

    def result(self) -> np.ndarray:
        if not self._processes:
            return np.asarray(self._fn(self._items, *self._args), dtype=bool).reshape(len(self._items))
        started, mine = time.perf_counter(), 0
        for index in reversed(range(len(self._bounds))):
            if not self._taken[index]:
                self._taken[index] = 1
                self._run(index)
                mine += 1
        per_chunk = (time.perf_counter() - started) / mine if mine else 0.0
        deadline = time.monotonic() + max(WAIT_SECONDS, 20 * per_chunk)
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
        self.close()  # from here on no other process writes
        for index in range(len(self._bounds)):
            if not self._done[index]:  # taken by a worker that died or hung
                self._run(index)
        return np.frombuffer(self._verdicts, dtype=np.int8).astype(bool)

    def close(self) -> None:
        """Stop and reap the workers (those still running are terminated)."""
        for process in self._processes:
            if process.is_alive():
                process.terminate()
            process.join()
            process.close()
        self._processes = []

    def __enter__(self) -> ParallelChecks:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
