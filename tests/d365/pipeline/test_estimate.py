"""The dry run's load estimate: the ceilings of the documented limits and which one binds."""

from __future__ import annotations

import pytest

from d365.pipeline.estimate import OrgLimits, estimate_load, estimate_text

# the load benchmark's scaled limits (benchmarks/load_throughput.py, k = 30), whose ceiling it documents as 952 leads/s
SCALED = OrgLimits(window_seconds=10, max_requests=200, max_execution_ms=40_000, safety_margin=1.0)


def test_the_benchmarks_documented_ceiling_is_reproduced() -> None:
    est = estimate_load(100_000, batch_size=100, request_ms=20, record_ms=4, limits=SCALED, max_workers=16)
    assert est.batch_ms == 420
    assert est.ceilings["requests"] == pytest.approx(2000)
    assert est.ceilings["execution time"] == pytest.approx(952.38, abs=0.01)
    assert est.ceilings["concurrency"] == pytest.approx(16 * 100 / 0.42)
    assert est.binding == "execution time"
    assert est.seconds == pytest.approx(100_000 / 952.38, rel=1e-4)


def test_a_pool_of_users_multiplies_every_ceiling() -> None:
    one = estimate_load(10_000, batch_size=100, request_ms=20, record_ms=4, limits=SCALED)
    four = estimate_load(10_000, batch_size=100, users=4, request_ms=20, record_ms=4, limits=SCALED)
    assert four.leads_per_second == pytest.approx(4 * one.leads_per_second)
    assert four.seconds == pytest.approx(one.seconds / 4)


def test_the_binding_limit_follows_the_cost_of_a_request() -> None:
    cheap = estimate_load(10_000, batch_size=100, request_ms=20, record_ms=0, limits=SCALED)
    assert cheap.binding == "requests"  # 20 ms batches: the request count binds first
    slow = estimate_load(10_000, batch_size=100, dop_hint=1, request_ms=20, record_ms=4, limits=SCALED)
    assert slow.binding == "concurrency" and slow.concurrency == 1  # one request at a time, 420 ms each


def test_the_safety_margin_and_the_documented_limits_apply() -> None:
    est = estimate_load(6000, batch_size=100, request_ms=50, record_ms=0, limits=OrgLimits())
    # 6000 requests per 300 s at 95 % → 19 batches of 100 per second; the execution time would allow far more
    assert est.ceilings["requests"] == pytest.approx(6000 * 0.95 * 100 / 300)
    assert est.binding == "requests"
    assert OrgLimits.from_snapshot({"window_seconds": 10, "max_requests": 200}).max_execution_ms == 1_200_000


def test_the_summary_line_names_the_assumption_and_the_binding_limit() -> None:
    est = estimate_load(200_000, batch_size=100, users=2, request_ms=35, record_ms=10)
    text = estimate_text(est)
    assert text.startswith("load estimate: 200,000 writes in about ")
    assert "2 application users" in text and "35 ms per request measured by preflight" in text
    assert "10 ms per record assumed" in text and text.endswith(f"binding limit: {est.binding}")
    assert (
        estimate_text(estimate_load(0, batch_size=100, request_ms=1, record_ms=1)) == "load estimate: nothing to write"
    )
