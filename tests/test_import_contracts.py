"""The layer contracts (``pyproject.toml`` ``[tool.importlinter]``, run by ``make test``) hold, and each one fails
on the import it forbids: checked on a copy of the packages, so the tree itself is never touched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACT_NAMES = {
    "independent": "The sandbox and the integration are independent (only tests use both)",
    "hooks": "Hooks know nothing of the pipeline, the task bodies, the operators or the runtime",
    "pipeline": "The pipeline never imports the task bodies, the operators, the runtime or the DAGs",
    "airflow": "The pipeline imports no Airflow",
    "cycles": "No import cycles among the modules and packages of d365",
}


def lint_imports(cwd: Path, *paths: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with ``d365`` and ``sandbox`` imported from ``paths`` (first on ``sys.path``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths), "COLUMNS": "300"}  # no wrapped names
    return subprocess.run([str(LINT_IMPORTS)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def broken_contracts(output: str) -> set[str]:
    """Names of the contracts listed under "Broken contracts" (each name is underlined with dashes there)."""
    section = output.split("Broken contracts", 1)[-1] if "Broken contracts" in output else ""
    return {name for name in CONTRACT_NAMES.values() if re.search(re.escape(name) + r"\n-{10,}", section)}


def test_every_contract_holds_in_this_tree() -> None:
    done = lint_imports(REPO, REPO / "plugins", REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Contracts: {len(CONTRACT_NAMES)} kept, 0 broken." in done.stdout


def test_no_contract_lists_an_exception() -> None:
    """The pipeline's Airflow imports and the notifications/pause/task-layer cycles are gone, not ignored."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert {c["name"] for c in contracts} == set(CONTRACT_NAMES.values())
    assert [c["name"] for c in contracts if c.get("ignore_imports")] == []


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of ``d365`` and ``sandbox`` and the configuration, to add a forbidden import to."""
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "plugins" / "d365", tmp_path / "d365", ignore=skip)
    shutil.copytree(REPO / "sandbox", tmp_path / "sandbox", ignore=skip)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "statement", "contract"),
    [
        ("d365/pipeline/extract.py", "import sandbox.client", "independent"),
        ("sandbox/zz_probe.py", "import d365.hooks.errors", "independent"),
        ("d365/hooks/zz_probe.py", "import d365.tasks.plan", "hooks"),
        ("d365/pipeline/zz_probe.py", "import dreamapply_to_dynamics365", "pipeline"),
        ("d365/pipeline/zz_probe.py", "import d365.operators.load_leads", "pipeline"),
        ("d365/pipeline/zz_probe.py", "import d365.tasks.context", "pipeline"),  # tasks import the pipeline only
        ("d365/hooks/zz_probe.py", "import d365.runtime.runfolder", "hooks"),
        ("d365/pipeline/zz_probe.py", "import d365.runtime.runfolder", "pipeline"),
        ("d365/pipeline/digest.py", "from d365.notifications import send_mail", "pipeline"),  # was an exception
        ("d365/pipeline/ledger.py", "from airflow.sdk import Connection", "airflow"),
        # the modules that were exceptions (issue 10): no Airflow import is allowed in any of them any more
        ("d365/pipeline/runfolder.py", "from airflow.sdk import ObjectStoragePath", "airflow"),
        ("d365/pipeline/privacy.py", "from airflow.sdk import ObjectStoragePath", "airflow"),
        ("d365/pipeline/retention.py", "from airflow.sdk import ObjectStoragePath", "airflow"),
        ("d365/pipeline/report.py", "import airflow.models.dagrun", "airflow"),
        ("d365/pipeline/zz_run_note.py", "from airflow.sdk import Connection", "airflow"),
        ("d365/pipeline/records.py", "import d365.pipeline.extract", "cycles"),  # extract imports records
        # the cycles that were exceptions: pause -> notifications, tasks -> errors, tasks -> pause
        ("d365/notifications.py", "import d365.pause", "cycles"),
        ("d365/errors.py", "import d365.tasks.preflight", "cycles"),
        ("d365/pause.py", "import d365.tasks.preflight", "cycles"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tree: Path, module: str, statement: str, contract: str) -> None:
    path = tree / module
    before = path.read_text() if path.exists() else ""
    assert statement not in before
    path.write_text(before + f"\n{statement}  # probe\n")
    done = lint_imports(tree, tree)
    assert done.returncode != 0
    assert CONTRACT_NAMES[contract] in broken_contracts(done.stdout), done.stdout[-3000:]
