"""The sandbox shows progress while it generates a large population: a line every ``PROGRESS_EVERY`` applicants
and one when done (counts and rates only), without changing what is generated; ``python -m sandbox serve`` shows
them on stderr, its stdout still the ready announcement."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.data import generator

ANCHOR = 1_760_000_000


def test_progress_lines_every_n_applicants_and_the_same_data(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    quiet = generator.summary(generator.generate(7, 350, ANCHOR))  # under the default: no line at all
    monkeypatch.setattr(generator, "PROGRESS_EVERY", 100)
    caplog.set_level(logging.INFO, logger="sandbox.data.generator")
    assert not caplog.messages
    loud = generator.summary(generator.generate(7, 350, ANCHOR))
    assert loud == quiet  # the progress lines change nothing generated
    lines = caplog.messages
    assert [re.sub(r"\), .*", ")", m) for m in lines[:3]] == [
        f"sandbox: generating applicants: {n} of 350 ({n * 100 // 350}%)" for n in (100, 200, 300)
    ]
    assert all(re.search(r"\), \d+/s, (\d+ s left|time left unknown)$", m) for m in lines[:3])
    assert re.fullmatch(
        rf"sandbox: 350 applicants generated in [\d.]+ s \({loud['applications']} applications, "
        rf"{loud['journal_events']} journal events\)",
        lines[3],
    )
    assert len(lines) == 4


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_serve_shows_generation_progress_on_stderr(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "sandbox", "serve",
            "--login-port=0", "--dataverse-port=0", "--dreamapply-port=0", "--admin-port=0",
            f"--state-dir={tmp_path / 'state'}", "--applicants=20000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("}"):
                break
        assert json.loads("".join(lines))["dreamapply"]["url"].startswith("https://127.0.0.1:")  # stdout: JSON only
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "sandbox: generating applicants: 10000 of 20000 (50%)" in err
    assert "sandbox: 20000 applicants generated in " in err
