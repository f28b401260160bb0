"""DreamApply requests for a first load: the incremental extract against a naive one-by-one client.

Starts an in-process sandbox with 10 000 applicants (no server quota), runs a first-load ``extract``
through ``DreamApplyHook`` (client quota off) and counts its DreamApply requests in the sandbox request
log. The naive client lists the applicants and then fetches each one's details one by one:

    list pages + per applicant (GET applicant, consents, trackers, applications)
               + per application (GET courses, offers)

Its total is computed exactly from the sandbox data. The naive client is also *run* on a sample of
applicants to confirm the per-applicant count and to measure its time per request; its full-population
time is extrapolated from that (labelled as such). Both are also given as wall time under DreamApply's
default quota of 180 requests per minute, which is what bounds them on a real instance.

Usage: python benchmarks/dreamapply_requests.py [--applicants 10000] [--sample 200] [--seed 42]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from d365.hooks.dreamapply import DreamApplyHook  # noqa: E402
from d365.pipeline.extract import Cursors, extract  # noqa: E402
from sandbox import Sandbox, SandboxConfig  # noqa: E402
from sandbox.client import SandboxClient  # noqa: E402

EVENTS = [
    "Applicant registered", "Applicant was collected", "Application was created",
    "Application was created by cloning", "Application was submitted", "Offer was edited: ?",
    "Applicant was deleted", "Applicant was edited", "Applicant consent was changed", "Application was withdrawn",
]  # fmt: skip
QUOTA = 180  # DreamApply's default requests per minute per key
NAIVE_LIST_PAGE = 32768  # the naive client lists applicants without expand, at the largest page


def naive_fetch(hook: DreamApplyHook, applicant_id: int) -> int:
    """What a one-by-one client does for one applicant; returns the requests it made."""
    n = 0
    hook.get_json(f"/applicants/{applicant_id}")
    hook.get_collection(f"/applicants/{applicant_id}/consents")
    hook.get_collection(f"/applicants/{applicant_id}/trackers")
    apps = hook.get_collection(f"/applicants/{applicant_id}/applications")
    n += 4
    for app in apps.values():
        hook.get_collection(app["courses"])  # link strings, resolved against the instance root
        hook.get_collection(app["offers"])
        n += 2
    return n


def minutes(requests: int) -> str:
    m = requests / QUOTA
    return f"{m:,.1f} min" if m < 120 else f"{m / 60:,.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--applicants", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SandboxConfig(
            login_port=0, dataverse_port=0, dreamapply_port=0, admin_port=0, state_dir=Path(tmp),
            applicants=args.applicants, seed=args.seed, dreamapply_requests_per_minute=10**6,
        )  # fmt: skip
        t0 = time.perf_counter()
        sb = Sandbox(cfg).start()
        print(f"sandbox: {args.applicants:,} applicants, started in {time.perf_counter() - t0:.1f} s")
        try:
            info = sb.info()
            client = SandboxClient(info)
            os.environ["AIRFLOW_CONN_DREAMAPPLY_DEFAULT"] = json.dumps(
                {
                    "conn_type": "dreamapply",
                    "host": info["dreamapply"]["url"],
                    "password": info["dreamapply"]["api_key"],
                    "extra": {"ca_bundle": info["ca_bundle"]},
                }
            )
            stats = client.get("/dreamapply/stats")
            n_applicants, n_applications = stats["applicants"], stats["applications"]

            # -- the extract -------------------------------------------------------------------
            hook = DreamApplyHook(requests_per_minute=0)
            hook.get_conn()
            seq = client.last_seq()
            t0 = time.perf_counter()
            result = extract(hook, Cursors(), event_names=EVENTS)
            extract_seconds = time.perf_counter() - t0
            log = client.requests(server="dreamapply", since=seq)
            extract_requests = len(log)
            assert len(result.applicants) == n_applicants, "the extract must return every applicant"
            assert extract_requests == result.counts["requests"]
            by_path: dict[str, int] = {}
            for e in log:
                by_path[e["path"]] = by_path.get(e["path"], 0) + 1

            # -- the naive client: exact count from the data, measured on a sample --------------
            naive_list = n_applicants // NAIVE_LIST_PAGE + 1
            naive_total = naive_list + 4 * n_applicants + 2 * n_applications
            apps_per_applicant = {a["applicant_id"]: len(a["applications"]) for a in result.applicants}
            step = max(1, n_applicants // args.sample)
            sample = sorted(apps_per_applicant)[::step][: args.sample]
            naive = DreamApplyHook(requests_per_minute=0)
            naive.get_conn()
            seq = client.last_seq()
            t0 = time.perf_counter()
            for page in naive.iter_collection_pages("/applicants", {}, NAIVE_LIST_PAGE):
                assert len(page) == n_applicants
            made = sum(naive_fetch(naive, aid) for aid in sample)
            naive_sample_seconds = time.perf_counter() - t0
            sample_log = client.requests(server="dreamapply", since=seq)
            predicted = naive_list + sum(4 + 2 * apps_per_applicant[aid] for aid in sample)
            assert made + naive_list == predicted == len(sample_log), (made, predicted, len(sample_log))
            per_request = naive_sample_seconds / len(sample_log)
            naive_seconds_extrapolated = per_request * naive_total
        finally:
            sb.stop()

    width = 44
    print(f"data: {n_applicants:,} applicants, {n_applications:,} applications, {stats['offers']:,} offers\n")
    print(f"{'':{width}} {'requests':>10} {'local time':>14} {'at 180 req/min':>16}")
    print(
        f"{'incremental extract (first load, measured)':{width}} {extract_requests:>10,} "
        f"{extract_seconds:>12.2f} s {minutes(extract_requests):>16}"
    )
    print(
        f"{'naive one-by-one client (exact count)':{width}} {naive_total:>10,} "
        f"{naive_seconds_extrapolated:>11.1f} s* {minutes(naive_total):>16}"
    )
    ratio = naive_total / extract_requests
    print(f"\nratio naive / extract: {ratio:,.0f} (the extract sends {ratio:,.0f} times fewer requests)")
    print(
        f"* extrapolated: the naive client was run on {len(sample)} applicants ({len(sample_log)} requests incl. "
        f"the list page, {naive_sample_seconds:.2f} s, {per_request * 1000:.2f} ms/request, local sandbox without "
        f"quota); its per-applicant count matched the formula 4 + 2 x applications exactly."
    )
    print(f"extract requests by path: {json.dumps(by_path)}")
    print(
        "naive formula: list pages (limit 32768) + 4 per applicant (record, consents, trackers, applications)"
        " + 2 per application (courses, offers); catalog and journal calls are not counted for it."
    )


if __name__ == "__main__":
    main()
