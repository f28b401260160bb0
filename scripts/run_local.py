"""``make run``: the sync, end to end, against the local sandbox — no credentials needed.

1. Starts the sandbox in the background unless one is already answering (its state in ``.sandbox/``),
   so a second ``make run`` talks to the same DreamApply and Dynamics data. A newly started sandbox has an
   empty Dynamics 365, so the local sync state that described the old one (the ledger and run folders in
   ``.airflow/``) is removed with it: otherwise the cursors would say "everything sent" to an empty CRM.
2. Points Airflow at ``.airflow/`` (SQLite), migrates its database and creates the two pools.
3. Passes the sandbox's connections through ``AIRFLOW_CONN_*`` and runs
   ``airflow dags test dreamapply_to_dynamics365``, then prints the run summary.

``make sandbox-stop`` stops the background sandbox. Flags: ``--applicants N`` (first start only),
``--full-resync``, ``--applicant-ids 12,34``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATE_DIR = REPO / ".sandbox"
AIRFLOW_HOME = REPO / ".airflow"
DAG_ID = "dreamapply_to_dynamics365"
sys.path.insert(0, str(REPO))

from sandbox.client import SandboxClient, airflow_connections  # noqa: E402


def sandbox_client() -> SandboxClient | None:
    state = STATE_DIR / "sandbox.json"
    if not state.exists():
        return None
    try:
        client = SandboxClient.from_state_file(state)
        client.http.get(client.admin_url + "/health", timeout=2).raise_for_status()
        return client
    except Exception:
        return None


def ensure_sandbox(applicants: int) -> SandboxClient:
    client = sandbox_client()
    if client is not None:
        print(f"sandbox already running ({client.info['dynamics365']['org_url']})", file=sys.stderr)
        return client
    STATE_DIR.mkdir(exist_ok=True)
    (STATE_DIR / "sandbox.json").unlink(missing_ok=True)
    log = (STATE_DIR / "sandbox.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "serve", f"--state-dir={STATE_DIR}", f"--applicants={applicants}"],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (STATE_DIR / "sandbox.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the sandbox exited; see {STATE_DIR / 'sandbox.log'}")
        client = sandbox_client()
        if client is not None:
            print(
                f"sandbox started with {applicants} applicants (pid {proc.pid}; logs in .sandbox/sandbox.log)",
                file=sys.stderr,
            )
            forget_sync_state()
            return client
        time.sleep(0.2)
    raise SystemExit("the sandbox did not become ready in 120 s")


def forget_sync_state() -> None:
    """The ledger and run folders of an earlier sandbox describe leads that no longer exist: start afresh."""
    ledger = AIRFLOW_HOME / "d365_ledger.db"
    runs = AIRFLOW_HOME / "d365_runs"
    if ledger.exists() or runs.exists():
        ledger.unlink(missing_ok=True)
        shutil.rmtree(runs, ignore_errors=True)
        print("a new sandbox: the local ledger and run folders of the previous one were removed", file=sys.stderr)


def stop_sandbox() -> None:
    pid_file = STATE_DIR / "sandbox.pid"
    if not pid_file.exists():
        print("no background sandbox")
        return
    try:
        os.kill(int(pid_file.read_text()), signal.SIGINT)
        print("sandbox stopped")
    except ProcessLookupError:
        print("sandbox was not running")
    pid_file.unlink(missing_ok=True)


def airflow_env(info: dict) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }
    )
    env.update({name: json.dumps(conn) for name, conn in airflow_connections(info).items()})
    env.setdefault("D365_SYNC_TASK_RETRIES", "0")
    return env


def airflow(env: dict[str, str], *args: str, quiet: bool = False) -> int:
    cmd = [sys.executable, "-m", "airflow", *args]
    if quiet:
        done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        return done.returncode
    return subprocess.run(cmd, env=env, cwd=REPO).returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--applicants", type=int, default=200)
    ap.add_argument("--full-resync", action="store_true")
    ap.add_argument("--applicant-ids", default="")
    ap.add_argument("--stop-sandbox", action="store_true", help="stop the background sandbox and exit")
    ap.add_argument(
        "--print-env", action="store_true", help="print shell exports for running Airflow (e.g. the UI) on the sandbox"
    )
    args = ap.parse_args()
    if args.stop_sandbox:
        stop_sandbox()
        return 0
    if args.print_env:
        client = ensure_sandbox(args.applicants)
        env = airflow_env(client.info)
        keys = [k for k in env if k.startswith(("AIRFLOW", "D365_"))]
        for key in sorted(keys):
            print(f"export {key}={shlex.quote(env[key])}")
        print(f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH")
        return 0

    client = ensure_sandbox(args.applicants)
    env = airflow_env(client.info)
    AIRFLOW_HOME.mkdir(exist_ok=True)
    print("migrating the Airflow database in .airflow/ ...")
    if airflow(env, "db", "migrate", quiet=True) != 0:
        return 1
    for pool, slots, what in (
        ("dreamapply_api", "1", "DreamApply API: one extractor at a time (180 requests/minute per key)"),
        ("dynamics365_api", "4", "Dynamics 365 Web API: bounded by service-protection limits"),
    ):
        if airflow(env, "pools", "set", pool, slots, what, quiet=True) != 0:
            return 1
    conf: dict = {}
    if args.full_resync:
        conf["full_resync"] = True
    if args.applicant_ids:
        conf["applicant_ids"] = [int(x) for x in args.applicant_ids.replace(",", " ").split()]
    started = time.time()
    cmd = ["dags", "test", DAG_ID]
    if conf:
        cmd += ["--conf", json.dumps(conf)]
    rc = airflow(env, *cmd, quiet=True)
    reports = [p for p in (AIRFLOW_HOME / "d365_runs" / DAG_ID).glob("*/report.json") if p.stat().st_mtime >= started]
    if reports:
        from d365.pipeline.report import summary_text

        report = json.loads(max(reports, key=lambda p: p.stat().st_mtime).read_text())
        print()
        print(summary_text(report))
        print(f"\nreport: {max(reports, key=lambda p: p.stat().st_mtime)}")
        leads = client.get("/dataverse/stats")["leads"]
        print(f"leads now in the sandbox's Dynamics 365: {leads}")
    print(f"\nairflow dags test exited with {rc}" + ("" if rc == 0 else " (see the task logs above)"))
    return rc


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "plugins"))
    sys.exit(main())
