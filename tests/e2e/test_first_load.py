"""The real DAG against the sandbox over TLS: first load, idempotent re-run."""

from __future__ import annotations


def test_first_load_then_rerun_writes_nothing(sync_env) -> None:  # type: ignore[no-untyped-def]
    env = sync_env(applicants=60)
    run = env.run()
    assert run.state == "success", run.state
    leads = env.leads()
    report = env.reports()[-1]
    print(report["outcomes"])
    assert report["outcomes"]["created"] == len(leads) > 0
    durations = report["durations_seconds"]  # the run report carries how long each step took
    assert {"preflight", "extract", "transform", "plan", "load", "commit"} <= set(durations)
    assert all(seconds >= 0 for seconds in durations.values())
    again = env.run()
    assert again.state == "success"
    second = env.reports()[-1]["outcomes"]
    assert second["created"] == 0 and second["updated"] == 0
    assert len(env.leads()) == len(leads)
