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
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:  # the summary is on the DAG run's note, where engineers look first
        note = session.query(DagRun).filter(DagRun.run_id == run.run_id).one().note
    assert note.startswith("DreamApply → Dynamics 365") and f"created: {len(leads)}" in note
    again = env.run()
    assert again.state == "success"
    second = env.reports()[-1]["outcomes"]
    assert second["created"] == 0 and second["updated"] == 0
    assert len(env.leads()) == len(leads)
