"""scripts/make_env.py (``make env``) writes a .env with every variable compose requires, fresh and private, and never
overwrites one; .env.example holds placeholders only; .env is ignored by git."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

from tests.deploy.test_docker_compose import required_variables

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "0" * 64


def _make(output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts/make_env.py"), "--output", str(output), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def _values(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return dict(pairs)


def test_writes_every_required_variable_with_fresh_secrets(tmp_path: Path) -> None:
    first, second = tmp_path / "a.env", tmp_path / "b.env"
    assert _make(first, "--base-digest", DIGEST).returncode == 0
    assert _make(second, "--base-digest", DIGEST).returncode == 0
    a, b = _values(first), _values(second)
    assert required_variables() <= {key for key, value in a.items() if value}
    Fernet(a["AIRFLOW__CORE__FERNET_KEY"].encode())  # a valid key
    secrets = [key for key in a if key not in ("AIRFLOW_UID", "AIRFLOW_BASE_DIGEST")]
    assert all(a[key] != b[key] for key in secrets), "secrets must be generated per run"
    assert len({a[key] for key in secrets}) == len(secrets), "no secret reused for another purpose"
    assert stat.S_IMODE(first.stat().st_mode) == 0o600


def test_never_overwrites_and_prints_no_secret(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    made = _make(env, "--base-digest", DIGEST)
    before = env.read_text()
    for value in _values(env).values():
        if len(value) > 8:
            assert value not in made.stdout + made.stderr
    again = _make(env, "--base-digest", DIGEST)
    assert again.returncode == 1 and "left unchanged" in again.stderr
    assert env.read_text() == before


def test_an_unknown_digest_is_left_empty_and_said(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    made = _make(env, "--no-resolve-digest")
    assert made.returncode == 0
    assert _values(env)["AIRFLOW_BASE_DIGEST"] == ""
    assert "docker buildx imagetools inspect" in made.stderr
    assert _make(tmp_path / "x.env", "--base-digest", "sha256:nothex").returncode == 2


def test_example_has_placeholders_only_and_env_is_ignored() -> None:
    example = _values(ROOT / ".env.example")
    assert required_variables() <= set(example)
    assert all(value == "" for value in example.values()), example
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".env is not in .gitignore"
