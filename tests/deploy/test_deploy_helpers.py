"""deploy/constrain_requirements.py (image build) and deploy/write_auth_passwords.py (compose's airflow-init)."""

from __future__ import annotations

import importlib.util
import json
import stat
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


constrain = _load("constrain_requirements")
passwords = _load("write_auth_passwords")


def test_the_constraint_wins_over_a_different_pin() -> None:
    constraints = constrain.read_constraints("# header\nSQLAlchemy==2.0.40\nrequests==2.34.2\nmsal==1.30.0\n")
    lines, notes = constrain.constrain(
        "# comment\nsqlalchemy==2.1.9\nrequests==2.34.2  # same\nphonenumbers==9.0.43\nMSAL[broker]==1.39.0\n",
        constraints,
    )
    assert lines == ["sqlalchemy", "requests==2.34.2", "phonenumbers==9.0.43", "MSAL[broker]"]
    assert notes == [
        "sqlalchemy: requirements.txt pins 2.1.9, the constraints 2.0.40: using 2.0.40",
        "MSAL: requirements.txt pins 1.39.0, the constraints 1.30.0: using 1.30.0",
    ]


@pytest.mark.parametrize("line", ["requests>=2", "-e .", "git+https://example.org/x.git", "requests==2 extra"])
def test_a_line_it_does_not_understand_stops_the_build(line: str) -> None:
    with pytest.raises(ValueError, match="line 1"):
        constrain.constrain(line + "\n", {"requests": "2"})


def test_the_real_requirements_file_is_understood(tmp_path: Path) -> None:
    requirements = (ROOT / "requirements.txt").read_text()
    lines, notes = constrain.constrain(requirements, {"pyyaml": "0.0.1"})
    assert "pyyaml" in lines and len(notes) == 1
    out = tmp_path / "out.txt"
    constraints = tmp_path / "c.txt"
    constraints.write_text("PyYAML==0.0.1\n")
    assert constrain.main(["x", str(ROOT / "requirements.txt"), str(constraints), str(out)]) == 0
    assert out.read_text().splitlines() == lines


def test_passwords_file_is_private_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "passwords.json"
    passwords.write_passwords(path, "airflow", "s3cret-value", uid=12345)
    assert json.loads(path.read_text()) == {"airflow": "s3cret-value"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="AIRFLOW_ADMIN_PASSWORD"):
        passwords.write_passwords(path, "airflow", "", uid=12345)
