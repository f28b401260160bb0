"""Parked records: applicants that failed ``parking.max_failed_runs`` runs in a row (default 5) wait for a person.

A record that fails every run (a value Dynamics refuses, a plug-in that throws, a lead locked in the CRM) would
otherwise be re-sent forever, costing requests and filling every digest. After N consecutive failed runs the
commit step parks it (``d365_sync_parked`` in the ledger database; the ledger row stays ``failed`` with its last
error). A parked applicant is listed in the run's report and the digest, and is not sent again, neither as a
retry nor when it changes in DreamApply nor by a manual send, until someone releases it. Consent withdrawals
and erasures still go through. Releasing resets its count of failed runs; the next run sends it again.

Operations (on a host that reaches the ledger: same ``D365_SYNC_LEDGER_URL``, or ``--ledger-url``)::

    python -m d365.parking list                 # parked applicants: id, failed runs, last error code, since
    python -m d365.parking release 123 456      # release these applicant ids
    python -m d365.parking release --all        # release every parked applicant
"""

from __future__ import annotations

import argparse
import sys

from d365.pipeline.ledger import Ledger, default_ledger_url, parked_records, release_parked

LIST_COMMAND = "python -m d365.parking list"
RELEASE_COMMAND = "python -m d365.parking release"


def _ids(values: list[str]) -> list[int]:
    ids: list[int] = []
    for value in values:
        for part in value.replace(",", " ").split():
            if not part.isdigit() or int(part) <= 0:
                raise SystemExit(f"not an applicant id: {part!r}")
            ids.append(int(part))
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m d365.parking", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger-url", help="ledger database (default: D365_SYNC_LEDGER_URL or $AIRFLOW_HOME)")
    parser.add_argument("--instance", help="only this DreamApply instance (the ledger key, e.g. apply.example.edu)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the parked applicants")
    release = sub.add_parser("release", help="release parked applicants: the next run sends them again")
    release.add_argument("applicant_ids", nargs="*", help="applicant ids (spaces or commas)")
    release.add_argument("--all", action="store_true", help="release every parked applicant")
    args = parser.parse_args(argv)

    ledger = Ledger(args.ledger_url or default_ledger_url())
    try:
        if args.command == "list":
            rows = parked_records(ledger, args.instance)
            print(f"parked applicants: {len(rows)}")
            for r in rows:
                since = r.parked_at.strftime("%Y-%m-%d %H:%M")
                print(
                    f"  {r.applicant_id}  instance {r.instance}  failed runs {r.failed_runs}  "
                    f"last error {r.last_error_code or '-'}  parked {since}"
                )
            if rows:
                print(f"release: {RELEASE_COMMAND} <applicant ids> | --all")
            return 0
        ids = _ids(args.applicant_ids)
        if bool(ids) == bool(args.all):
            parser.error("release takes applicant ids or --all (not both, not neither)")
        released = release_parked(ledger, instance=args.instance, applicant_ids=None if args.all else ids)
        found = {r.applicant_id for r in released}
        print(f"released {len(released)} parked applicants; the next run sends them again")
        for r in released:
            print(f"  {r.applicant_id}  instance {r.instance}")
        missing = sorted(set(ids) - found)
        if missing:
            print(f"not parked (nothing to release): {', '.join(str(i) for i in missing)}")
        return 0
    finally:
        ledger.dispose()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
