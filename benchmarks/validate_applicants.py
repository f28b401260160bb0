"""Time and memory to validate 100 000 applicants with the quality step (pandas + Great Expectations).

The applicants come from the sandbox's generator (``sandbox.data``: the same names, scripts, e-mails,
phones and adversarial cases the e2e tests use), rendered as DreamApply's API renders them and normalised
with the extract's own ``normalise_applicant`` (applications built straight from the generator's records:
the fields the checks read, in the API's date format).

Figures, all in this one process:

- **GX import + setup**: ``import great_expectations`` and building the ephemeral context, data source and
  suite (once per task process; the task imports GX inside the function, never at DAG parse time).
- **validate**: ``quality.validate_applicants`` on all applicants: the derived columns (pandas; per-value
  checks once per unique value) and the Great Expectations validation (COMPLETE results).
- **peak memory** of ``validate``: Python allocations (``tracemalloc``, a separate run since tracing slows it
  down), Arrow's memory pool peak, and the process's max RSS before and after.
- **naive baseline**: the same checks row by row in a Python loop (email-validator, phonenumbers, pycountry,
  date parsing per row: no vectorisation, no cache, no pre-screen), *measured on a sample* and
  *extrapolated* to all applicants (labelled as such).

Target: validate < 10 s on the project's 2-core machine.

Usage: python benchmarks/validate_applicants.py [--applicants 100000] [--sample 5000] [--seed 42]
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

ANCHOR = 1_764_000_000  # 2025-11-24, a fixed "now" for the generator


def build_records(n: int, seed: int) -> list[dict[str, Any]]:
    from d365.pipeline.extract import normalise_applicant
    from sandbox.data.generator import generate
    from sandbox.dreamapply import render

    ds = generate(seed, n, ANCHOR)
    catalog: Any = {"trackers": {str(k): v.code for k, v in getattr(ds.catalog, "trackers", {}).items()}}
    records = []
    for aid in ds.applicant_order:
        a = ds.applicants[aid]
        raw = render.applicant(a, expand={"consents", "trackers"})
        apps = []
        for app_id in a.applications or ():
            app = ds.applications[app_id]
            apps.append(
                {
                    "id": app.id,
                    "status": app.status,
                    "created": render.ts(app.created),
                    "revised": render.ts(app.revised),
                    "submitted": render.ts(app.submitted),
                    "academic_term_id": app.term_id,
                    "courses": [],
                    "offers": [],
                }
            )
        records.append(normalise_applicant(raw, catalog, apps, "new"))
    return records


def naive_validate(records: list[dict[str, Any]]) -> int:
    """The same checks, row by row, nothing shared between rows. Returns the invalid rows."""
    import phonenumbers
    import pycountry
    from email_validator import EmailNotValidError, validate_email

    from d365.pipeline.lead_stage import parse_instant

    invalid = 0
    seen: set[Any] = set()
    dup: set[Any] = set()
    for r in records:
        aid = r.get("applicant_id")
        (dup if aid in seen else seen).add(aid)
    for r in records:
        bad = not isinstance(r.get("applicant_id"), int) or r["applicant_id"] in dup
        email = (r.get("email") or "").strip()
        if email:
            try:
                validate_email(email, check_deliverability=False)
            except EmailNotValidError:
                bad = True
            bad = bad or len(email) > 100
        cit = (r.get("citizenship") or "").strip().upper()
        region = None
        if cit:
            if len(cit) == 2 and (cit == "XK" or pycountry.countries.get(alpha_2=cit)):
                region = cit if cit != "XK" else None
            else:
                bad = True
        phone = (r.get("phone") or "").strip()
        if phone:
            try:
                number = phonenumbers.parse(phone, region)
                ok = phonenumbers.is_valid_number(number) or (
                    phone.startswith(("+", "00")) and phonenumbers.is_possible_number(number)
                )
            except phonenumbers.NumberParseException:
                ok = False
            bad = bad or not ok
        if not (r.get("name_given") or "").strip() and not (r.get("name_family") or "").strip():
            bad = True
        if r.get("registered") and parse_instant(r["registered"]) is None:
            bad = True
        for app in r.get("applications") or []:
            for key in ("created", "submitted"):
                if app.get(key) and parse_instant(app[key]) is None:
                    bad = True
        invalid += bad
    return invalid


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--applicants", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=5000, help="applicants the naive baseline really runs on")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    t = time.perf_counter()
    records = build_records(args.applicants, args.seed)
    print(f"{len(records):,} applicants from the sandbox generator, normalised: {time.perf_counter() - t:.1f} s")
    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    t = time.perf_counter()
    from d365.pipeline import quality as Q
    from d365.pipeline.fit import LeadSchema
    from d365.pipeline.settings import load_settings

    settings, schema = load_settings(), LeadSchema.from_metadata_json()
    t_pipeline_import = time.perf_counter() - t

    t = time.perf_counter()
    import great_expectations  # noqa: F401

    t_gx_import = time.perf_counter() - t
    t = time.perf_counter()
    _, checks = Q.derive_frame(records[:1], settings, schema)
    Q._definition(tuple(c.column for c in checks if c not in (Q.ID_PRESENT, Q.ID_UNIQUE)), ())
    t_gx_setup = time.perf_counter() - t

    import pyarrow as pa

    pool = pa.default_memory_pool()
    t = time.perf_counter()
    result = Q.validate_applicants(records, settings=settings, schema=schema)
    t_validate = time.perf_counter() - t
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    arrow_peak = pool.max_memory()

    gc.collect()
    tracemalloc.start()
    Q.validate_applicants(records, settings=settings, schema=schema)
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    sample = random.Random(args.seed).sample(records, min(args.sample, len(records)))
    t = time.perf_counter()
    naive_invalid = naive_validate(sample)
    t_naive_sample = time.perf_counter() - t
    t_naive = t_naive_sample * len(records) / len(sample)

    n = len(records)
    print()
    print(f"validate {n:,} applicants (derive + Great Expectations): {t_validate:.2f} s  (target < 10 s)")
    print(f"  derived columns (pandas, per unique value): {result.timings['derive']:.2f} s")
    print(f"  Great Expectations validation (COMPLETE):   {result.timings['gx']:.2f} s")
    print(f"GX import + context/suite setup (once per task process): {t_gx_import + t_gx_setup:.2f} s")
    print(f"  import great_expectations: {t_gx_import:.2f} s, context + suite: {t_gx_setup:.2f} s")
    print(f"  (pipeline modules incl. pandas, phonenumbers, email-validator: {t_pipeline_import:.2f} s)")
    print(f"cold total (GX import + setup + validate): {t_gx_import + t_gx_setup + t_validate:.2f} s")
    print()
    print(f"invalid rows: {result.invalid_rows:,} ({result.invalid_fraction:.1%}); batch ok: {result.ok}")
    for reason, count in sorted(result.check_counts.items(), key=lambda kv: -kv[1]):
        print(f"  {count:>7,}  {reason}")
    print()
    print("peak memory of validate:")
    print(f"  Python allocations (tracemalloc, separate run): {mib(py_peak)}")
    print(f"  Arrow memory pool peak: {mib(arrow_peak)}")
    print(f"  process max RSS: {mib(rss_before)} with the generated data, {mib(rss_after)} after validate")
    print()
    print(
        f"naive baseline (row by row, no vectorisation or cache): {t_naive_sample:.2f} s measured on "
        f"{len(sample):,} applicants ({naive_invalid:,} invalid), EXTRAPOLATED to {n:,}: {t_naive:.1f} s "
        f"({t_naive / t_validate:.1f}x the vectorised validate, which also runs GX)"
    )


if __name__ == "__main__":
    main()
