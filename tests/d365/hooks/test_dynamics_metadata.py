"""Metadata reads and option-set changes of the Dynamics hook (``d365.hooks.dynamics_metadata``), on the sandbox."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from d365.hooks.dynamics import DynamicsHook
from sandbox.client import SandboxClient

Private = Callable[..., tuple[DynamicsHook, SandboxClient]]


def stored(client: SandboxClient, applicant_id: str) -> list[dict[str, Any]]:
    return client.get("/dataverse/leads", applicant_id=applicant_id)


@pytest.fixture
def hook(dynamics_hook: DynamicsHook) -> DynamicsHook:
    """The shared-sandbox hook from conftest, under a short local name."""
    return dynamics_hook


def test_entity_metadata(hook: DynamicsHook) -> None:
    md = hook.get_entity_metadata("lead")
    assert (md.logical_name, md.entity_set_name, md.primary_id) == ("lead", "leads", "leadid")
    lastname = md.attributes["lastname"]
    assert (lastname.type, lastname.max_length, lastname.required_level) == ("String", 50, "ApplicationRequired")
    assert md.attributes["emailaddress1"].format == "Email"
    assert md.attributes["description"].type == "Memo" and md.attributes["description"].max_length
    assert md.attributes["leadsourcecode"].options[8] == "Web"
    assert md.attributes["leadsourcecode"].options[1] == "Advertisement"
    stage = md.attributes["uni_leadstage"]
    assert stage.type == "Picklist" and stage.options and min(stage.options) >= 727000000
    assert "Registered" in stage.options.values()
    assert md.attributes["statecode"].valid_for_create is False
    assert md.attributes["statecode"].options == {0: "Open", 1: "Qualified", 2: "Disqualified"}
    assert md.attributes["statuscode"].options[1] == "New"
    assert md.attributes["fullname"].valid_for_create is False
    assert any(a.type == "Boolean" and a.options and set(a.options) == {0, 1} for a in md.attributes.values())
    keys = hook.alternate_keys("lead")
    assert ("uni_applicantid_key", ["uni_applicantid"], "Active") in keys


def test_insert_option_value_and_publish(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    before = hook.get_entity_metadata("lead").attributes["uni_programme"].options or {}
    value = hook.insert_option_value("lead", "uni_programme", "MSc Quantum Ünicode's")
    assert value not in before and value >= 727000000
    explicit = hook.insert_option_value("lead", "uni_programme", "MA Fixed", value=max(before) + 100)
    assert explicit == max(before) + 100
    hook.publish_xml("lead")
    after = hook.get_entity_metadata("lead", strong=True).attributes["uni_programme"].options or {}
    assert after[value] == "MSc Quantum Ünicode's" and after[explicit] == "MA Fixed"
    result = hook.upsert(
        "leads", {"uni_applicantid": "OPT-1"}, {"lastname": "O", "subject": "s", "uni_programme": value}
    )
    assert result.status == 204
    assert stored(client, "OPT-1")[0]["uni_programme"] == value
