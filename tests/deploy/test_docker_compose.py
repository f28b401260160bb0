"""docker-compose.yaml: Airflow's official layout, and safe to point at a real org. Every secret comes from .env with
no default, the api-server listens on loopback unless told otherwise, the ledger has its own database and login.
Each check is shown to fail on a broken copy of the real file (the mutations below). ``docker compose config`` runs
where a compose binary is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yaml").read_text()
SENSITIVE = re.compile(r"FERNET|PASSWORD|SECRET", re.IGNORECASE)
REQUIRED = re.compile(r"^\$\{(?P<var>[A-Za-z_][A-Za-z0-9_]*):\?[^}]+\}$")
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}; $$ escapes are not interpolations.
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<var>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _compose(text: str = COMPOSE_TEXT) -> dict:
    return yaml.safe_load(text)


def _code(text: str) -> str:
    """``text`` without its comment lines (they quote the syntax they explain)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _with_defaults(value: str) -> str:
    """``value`` as compose resolves it with nothing set: defaults applied, required variables left as ``<VAR>``."""
    return INTERPOLATION.sub(lambda m: m["arg"] if m["op"] in (":-", "-") else f"<{m['var']}>", value)


def _env_like(compose: dict) -> Iterator[tuple[str, str, object]]:
    """(where, key, value) of every environment entry and build argument."""
    for name, service in compose["services"].items():
        for section in ("environment",):
            for key, value in (service.get(section) or {}).items():
                yield f"{name}.{section}", key, value
        build = service.get("build")
        if isinstance(build, dict):
            for key, value in (build.get("args") or {}).items():
                yield f"{name}.build.args", key, value


def secret_problems(text: str) -> list[str]:
    """Secrets that have a default or a literal value anywhere in the file."""
    problems: list[str] = []
    for match in INTERPOLATION.finditer(_code(text)):
        if SENSITIVE.search(match["var"]) and match["op"] not in (":?", "?"):
            problems.append(f"${{{match['var']}}} is not required (has a default or may be empty): {match[0]}")
    for where, key, value in _env_like(_compose(text)):
        if SENSITIVE.search(key) and not key.endswith("_FILE") and not REQUIRED.match(str(value)):
            problems.append(f"{where}.{key} is not a required ${{VAR:?...}} from .env: {value!r}")
        for url in re.findall(r"[a-z+]+://[^\s\"']+", str(value)):
            password = urlsplit(url).password
            if password is not None and password != "" and not REQUIRED.match(password):
                problems.append(f"{where}.{key} has a literal password in its URL")
            if password == "" and "redis" in url:
                problems.append(f"{where}.{key}: Redis without a password")
    return problems


def bind_problems(text: str) -> list[str]:
    """The api-server's published ports must resolve to a loopback address when nothing is set."""
    problems = []
    for port in _compose(text)["services"]["airflow-apiserver"].get("ports", []):
        resolved = _with_defaults(str(port))
        host = resolved.rsplit(":", 2)[0] if resolved.count(":") >= 2 else ""
        if host not in LOOPBACK:
            problems.append(f"api-server port {port!r} binds {host or 'every address'} by default")
    return problems


def ledger_problems(text: str) -> list[str]:
    """The ledger URL must name its own database and login, which the postgres init script creates."""
    compose = _compose(text)
    env = compose["x-airflow-common"]["environment"]
    ledger = urlsplit(_with_defaults(env["D365_SYNC_LEDGER_URL"]))
    metadata = urlsplit(_with_defaults(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]))
    problems = []
    if ledger.username == metadata.username:
        problems.append(f"the ledger logs in as Airflow's metadata user {metadata.username!r}")
    if ledger.path == metadata.path:
        problems.append(f"the ledger shares Airflow's metadata database {metadata.path!r}")
    if ledger.password == metadata.password:
        problems.append("the ledger reuses the metadata database password")
    postgres = compose["services"]["postgres"]
    if not any(str(v).endswith(":/docker-entrypoint-initdb.d:ro") for v in postgres.get("volumes", [])):
        problems.append("the postgres init scripts (deploy/postgres-init) are not mounted")
    init_sql = (ROOT / "deploy/postgres-init/10-d365-ledger.sh").read_text()
    for statement in (f"CREATE ROLE {ledger.username} LOGIN", f"CREATE DATABASE {ledger.path.lstrip('/')} OWNER"):
        if statement not in init_sql:
            problems.append(f"deploy/postgres-init does not run {statement!r}")
    if "D365_LEDGER_DB_PASSWORD" not in postgres.get("environment", {}):
        problems.append("postgres does not get D365_LEDGER_DB_PASSWORD for its init script")
    return problems


def sandbox_problems(text: str) -> list[str]:
    """The sandbox runs only in its profile, from its own image target, without the Airflow secrets."""
    compose = _compose(text)
    problems = []
    sandbox = compose["services"]["sandbox"]
    if sandbox.get("profiles") != ["sandbox"]:
        problems.append("the sandbox service is not limited to the 'sandbox' profile")
    if (sandbox.get("build") or {}).get("target") != "sandbox":
        problems.append("the sandbox service does not build the Dockerfile's sandbox target")
    if "environment" in sandbox:
        problems.append("the sandbox service receives the Airflow environment (secrets)")
    if compose["x-airflow-common"]["build"].get("target") != "runtime":
        problems.append("the Airflow services do not build the runtime target")
    return problems


CHECKS = {
    "secrets": secret_problems,
    "bind": bind_problems,
    "ledger": ledger_problems,
    "sandbox": sandbox_problems,
}


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_the_real_file_passes(check: str) -> None:
    assert CHECKS[check](COMPOSE_TEXT) == []


MUTATIONS = [
    # (check, old, new): a regression the check must catch.
    ("secrets", "${AIRFLOW__CORE__FERNET_KEY:?run make env (without", "${AIRFLOW__CORE__FERNET_KEY:-(without"),
    ("secrets", "POSTGRES_PASSWORD: ${AIRFLOW_DB_PASSWORD:?run make env}", "POSTGRES_PASSWORD: airflow"),
    ("secrets", "db+postgresql://airflow:${AIRFLOW_DB_PASSWORD:?run make env}@", "db+postgresql://airflow:airflow@"),
    ("secrets", "${D365_LEDGER_DB_PASSWORD:?run make env}@", "${D365_LEDGER_DB_PASSWORD:-ledger}@"),
    ("secrets", "${AIRFLOW__API_AUTH__JWT_SECRET:?run make env}", "${AIRFLOW__API_AUTH__JWT_SECRET}"),
    ("secrets", "AIRFLOW_ADMIN_PASSWORD: ${AIRFLOW_ADMIN_PASSWORD:?run make env}", "AIRFLOW_ADMIN_PASSWORD: admin"),
    ("secrets", "redis://:${REDIS_PASSWORD:?run make env}@", "redis://:@"),
    ("bind", '"${AIRFLOW_API_BIND:-127.0.0.1}:8080:8080"', '"8080:8080"'),
    ("bind", '"${AIRFLOW_API_BIND:-127.0.0.1}:8080:8080"', '"0.0.0.0:8080:8080"'),
    ("bind", '"${AIRFLOW_API_BIND:-127.0.0.1}:8080:8080"', '"${AIRFLOW_API_BIND:-0.0.0.0}:8080:8080"'),
    (
        "ledger",
        "postgresql+psycopg2://d365_ledger:${D365_LEDGER_DB_PASSWORD:?run make env}@postgres/d365_ledger",
        "postgresql+psycopg2://airflow:${AIRFLOW_DB_PASSWORD:?run make env}@postgres/airflow",
    ),
    ("ledger", "@postgres/d365_ledger", "@postgres/airflow"),
    ("ledger", "      - ./deploy/postgres-init:/docker-entrypoint-initdb.d:ro\n", ""),
    ("sandbox", '    profiles: ["sandbox"]\n', ""),
    ("sandbox", "      target: sandbox\n", "      target: runtime\n"),
    ("sandbox", "  sandbox:\n    profiles:", "  sandbox:\n    <<: *airflow-common\n    profiles:"),
]


@pytest.mark.parametrize(("check", "old", "new"), MUTATIONS, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(MUTATIONS)])
def test_each_check_fails_on_a_broken_copy(check: str, old: str, new: str) -> None:
    assert COMPOSE_TEXT.count(old) == 1, f"mutation target not found once: {old!r}"
    broken = COMPOSE_TEXT.replace(old, new)
    assert CHECKS[check](broken), f"{check} did not notice: {old!r} -> {new!r}"


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
    assert "write_auth_passwords.py" in services["airflow-init"]["command"][-1]


def test_mounts_and_settings_for_the_sync() -> None:
    services = _compose()["services"]
    for service in ("airflow-scheduler", "airflow-apiserver", "airflow-worker"):
        volumes = services[service]["volumes"]
        for folder in ("dags", "plugins", "include"):
            assert any(v.endswith(f"/opt/airflow/{folder}") for v in volumes), (service, folder)
    assert "airflow-auth:/opt/airflow/auth" in services["airflow-apiserver"]["volumes"]
    assert not any("airflow-auth" in v for v in services["airflow-worker"]["volumes"])
    env = services["airflow-worker"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["D365_SYNC_LEDGER_URL"].startswith("postgresql")
    assert env["D365_SYNC_SETTINGS"] == "/opt/airflow/include/mappings/settings.yaml"


def test_sandbox_is_an_optional_profile_sharing_the_worker_network() -> None:
    sandbox = _compose()["services"]["sandbox"]
    assert sandbox["profiles"] == ["sandbox"]
    assert sandbox["network_mode"] == "service:airflow-worker"
    assert "ports" not in sandbox


def required_variables(text: str = COMPOSE_TEXT) -> set[str]:
    """Every variable compose refuses to start without."""
    return {m["var"] for m in INTERPOLATION.finditer(_code(text)) if m["op"] in (":?", "?")}


def test_every_secret_is_a_required_variable() -> None:
    assert {
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW_DB_PASSWORD",
        "D365_LEDGER_DB_PASSWORD",
        "REDIS_PASSWORD",
        "AIRFLOW_ADMIN_PASSWORD",
        "AIRFLOW_BASE_DIGEST",
    } == required_variables()


# --- docker compose config, where a compose binary exists (it needs no Docker daemon) ---------------------------


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


COMPOSE = _compose_command()
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="neither `docker compose` nor `docker-compose` installed")


def _env(env_file: Path) -> list[str]:
    return ["--env-file", str(env_file)]


def _config(env_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    return subprocess.run(
        [
            *COMPOSE,
            "--project-directory",
            str(ROOT),
            "-f",
            str(ROOT / "docker-compose.yaml"),
            *_env(env_file),
            *extra,
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(env_file.parent)},  # nothing inherited
    )


@needs_compose
def test_compose_config_accepts_a_generated_env(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    digest = "sha256:" + "0" * 64  # a syntactically valid stand-in: `config` does not pull
    made = subprocess.run(
        ["python3", str(ROOT / "scripts/make_env.py"), "--output", str(env_file), "--base-digest", digest],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    done = _config(env_file, "--profile", "sandbox")
    assert done.returncode == 0, done.stderr[-2000:]
    resolved = yaml.safe_load(done.stdout)
    api_ports = resolved["services"]["airflow-apiserver"]["ports"]
    assert any("127.0.0.1" in str(p) for p in api_ports), api_ports
    assert "sandbox" in resolved["services"]


@needs_compose
def test_compose_config_without_env_names_the_missing_variable(tmp_path: Path) -> None:
    empty = tmp_path / ".env"
    empty.write_text("")
    done = _config(empty)
    assert done.returncode != 0
    named = [var for var in required_variables() if var in done.stderr] or [
        "run make env" if "run make env" in done.stderr else ""
    ]
    assert named != [""], done.stderr[-2000:]
