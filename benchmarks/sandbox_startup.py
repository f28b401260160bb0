"""Sandbox start-up time (10 000 applicants) and peak RSS while serving 200 000, against a naive baseline.

Targets (issue #2): start-up under 5 s for 10 000 applicants; peak RSS under 1.5 GiB serving 200 000.
Naive baseline, measured in the same run: the same population held the way a straightforward fake
would hold it, as the API's nested JSON dicts in memory (tracemalloc of building them from the
sandbox's own pages), next to the sandbox process's whole RSS.

Usage: python benchmarks/sandbox_startup.py [--small 10000] [--large 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.client import SandboxClient, VerifiedSession  # noqa: E402


def start(applicants: int, state_dir: Path) -> tuple[subprocess.Popen[str], dict, float]:
    """Spawn ``python -m sandbox serve`` and wait for its ready announcement; returns wall seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "sandbox", "serve",
            "--login-port=0", "--dataverse-port=0", "--dreamapply-port=0", "--admin-port=0",
            f"--state-dir={state_dir}", f"--applicants={applicants}", "--dreamapply-rpm=1000000",
        ],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("}"):
            break
    elapsed = time.perf_counter() - t0
    return proc, json.loads("".join(lines)), elapsed


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found")


def fetch_all_applicants(info: dict, page: int = 8192) -> tuple[int, float, list[dict]]:
    """Page through every applicant with consents and trackers expanded; returns count, seconds, pages."""
    http = VerifiedSession(info["ca_bundle"])
    headers = {"Authorization": f'DREAM apikey="{info["dreamapply"]["api_key"]}"'}
    url = info["dreamapply"]["api_url"] + "/applicants"
    since, count, pages = 1, 0, []
    t0 = time.perf_counter()
    while True:
        r = http.get(url, params={"bySince": since, "limit": page, "expand": "consents,trackers"}, headers=headers)
        r.raise_for_status()
        body = r.json()
        body.pop("pages", None)
        if not body:
            break
        pages.append(body)
        count += len(body)
        since = max(int(k) for k in body) + 1
        if len(body) < page:
            break
    return count, time.perf_counter() - t0, pages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=200_000)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        proc, info, wall = start(args.small, Path(tmp) / "small")
        try:
            print(
                f"start-up, {args.small} applicants: {wall:.2f} s wall (process spawn to ready), "
                f"{info['ready_in_seconds']:.2f} s inside the process  [target < 5 s]"
            )
        finally:
            proc.terminate()
            proc.wait()

        proc, info, wall = start(args.large, Path(tmp) / "large")
        try:
            print(f"start-up, {args.large} applicants: {wall:.2f} s wall")
            client = SandboxClient(info)
            count, seconds, pages = fetch_all_applicants(info)
            journal = client.get("/dreamapply/stats")
            rss = peak_rss_mib(proc.pid)
            print(f"served {count} applicants (expand=consents,trackers, pages of 8192) in {seconds:.1f} s")
            print(f"peak RSS of the sandbox serving {args.large}: {rss:.0f} MiB  [target < 1536 MiB]")
            print(f"store stats: {json.dumps(journal)}")
        finally:
            proc.terminate()
            proc.wait()

    # Naive baseline: the same applicants as in-memory JSON dicts (what a dict-of-dicts fake keeps).
    raw = [json.dumps(p) for p in pages]
    del pages
    tracemalloc.start()
    held = [json.loads(p) for p in raw]
    naive_mib = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    print(
        f"naive baseline: {count} applicants held as API JSON dicts alone take {naive_mib:.0f} MiB "
        f"(applicants only; no applications, journal or server) vs the whole sandbox at {rss:.0f} MiB"
    )
    del held


if __name__ == "__main__":
    main()
