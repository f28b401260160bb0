"""``make test-fast`` (``pytest -m "not slow"``) leaves every whole-DAG test to ``make test``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def collected(*args: str) -> int:
    """How many tests ``pytest --collect-only`` selects under tests/e2e/ with ``args``."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args, "tests/e2e"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode in (0, 5), done.stdout[-2000:] + done.stderr[-2000:]  # 5: every test deselected
    match = re.match(r"(?:no tests collected|(\d+)(?:/\d+)? tests? collected)", summary)
    assert match, summary
    return int(match.group(1) or 0)


@pytest.mark.slow  # collects the e2e modules (imports Airflow): make test runs it
def test_every_e2e_test_is_marked_slow() -> None:
    assert collected("-m", "slow") == collected() > 0
    assert collected("-m", "not slow") == 0
