"""``python -m sandbox serve`` starts every server on loopback, writes the CA bundle and sandbox.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from sandbox.client import SandboxClient


def test_serve_starts_announces_and_stops(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox",
            "serve",
            "--login-port=0",
            "--dataverse-port=0",
            "--dreamapply-port=0",
            "--admin-port=0",
            f"--state-dir={state_dir}",
            "--applicants=10",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("}"):
                break
        announced = json.loads("".join(lines))
        written = json.loads((state_dir / "sandbox.json").read_text())
        assert announced["ca_bundle"] == written["ca_bundle"] == str((state_dir / "ca.pem").resolve())
        for url in (
            written["entra"]["login_url"],
            written["dynamics365"]["org_url"],
            written["dreamapply"]["url"],
            written["admin"]["url"],
        ):
            assert url.startswith("https://127.0.0.1:")
        client = SandboxClient.from_state_file(state_dir / "sandbox.json")
        assert client.get("/health")["ok"] is True
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
    assert proc.returncode == 0


def test_refuses_non_loopback_hosts(tmp_path: Path) -> None:
    import pytest

    from sandbox import Sandbox, SandboxConfig

    with pytest.raises(ValueError, match="loopback"):
        Sandbox(SandboxConfig(host="0.0.0.0", state_dir=tmp_path)).start()
