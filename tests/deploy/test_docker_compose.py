"""docker-compose.yaml has the services of Airflow's official layout, mounts what the sync needs, and
keeps the sandbox optional and loopback-only (no Docker engine here: checked as a document)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_official_services_are_present() -> None:
    services = _compose()["services"]
    for name in (
        "postgres",
        "redis",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-init",
    ):
        assert name in services, name
    assert services["airflow-apiserver"]["command"] == "api-server"
    assert services["airflow-worker"]["command"] == "celery worker"
    assert "db migrate" in services["airflow-init"]["command"][-1]
    assert "pools set dreamapply_api" in services["airflow-init"]["command"][-1]


def test_mounts_and_settings_for_the_sync() -> None:
    services = _compose()["services"]
    volumes = services["airflow-scheduler"]["volumes"]
    for folder in ("dags", "plugins", "include"):
        assert any(v.endswith(f"/opt/airflow/{folder}") for v in volumes), folder
    env = services["airflow-worker"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["D365_SYNC_LEDGER_URL"].startswith("postgresql")
    assert env["D365_SYNC_SETTINGS"] == "/opt/airflow/include/mappings/settings.yaml"


def test_sandbox_is_an_optional_profile_sharing_the_worker_network() -> None:
    sandbox = _compose()["services"]["sandbox"]
    assert sandbox["profiles"] == ["sandbox"]
    assert sandbox["network_mode"] == "service:airflow-worker"
    assert "ports" not in sandbox


def test_image_installs_the_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM apache/airflow:3.3.2" in dockerfile
    assert "pip install --no-cache-dir --no-deps -e /opt/d365" in dockerfile
