"""The run report names the application users the load took out of its pool, and how much each user sent."""

from __future__ import annotations

from d365.pipeline.report import build_report, summary_text

REMOVED = {
    "connection_id": "dynamics365_user2",
    "client_id": "934e9486-3a0c-5993-97e7-fe300c41f027",
    "error_code": "AADSTS7000215",
    "status": None,
    "reason": "invalid client secret",
}


def stats(removed: list[dict[str, object]], users: int = 3) -> dict[str, object]:
    members = [
        {"connection_id": name, "client_id": f"c{i}", "requests": 10 * (i + 1), "batches": i, "operations": 5 * i}
        for i, name in enumerate(["dynamics365_default", "dynamics365_user2", "dynamics365_user3"][:users])
    ]
    return {
        "requests": 60,
        "retries": 1,
        "throttled": 0,
        "pool": {"users": users, "members": members, "removed": removed},
    }


def report(load: dict[str, object]) -> dict[str, object]:
    return build_report(dag_id="d", run_id="r", outcomes={"created": 3}, extracted=3, load_stats=load)


def test_a_removed_user_is_named_in_the_report_and_the_summary() -> None:
    built = report(stats([REMOVED]))
    assert built["removed_users"] == [REMOVED]
    text = summary_text(built)
    assert "application users: 3 (requests: dynamics365_default 10, dynamics365_user2 20, dynamics365_user3 30)" in text
    assert (
        "user dynamics365_user2 removed from the pool: AADSTS7000215 invalid client secret "
        "(client 934e9486-3a0c-5993-97e7-fe300c41f027)"
    ) in text.splitlines()


def test_one_user_and_no_removal_add_nothing() -> None:
    built = report(stats([], users=1))
    assert built["removed_users"] == []
    text = summary_text(built)
    assert "application users" not in text and "removed from the pool" not in text
    assert report({})["removed_users"] == []  # a load that wrote no stats (it did not run)
