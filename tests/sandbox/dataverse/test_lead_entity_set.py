"""``SandboxConfig.lead_entity_set`` / ``--lead-entity-set``: the lead table under another EntitySetName.

A client that reads the name from metadata finds the table; one that assumes ``leads`` gets Dataverse's 404.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from dvhelpers import WebApi, error_of

from sandbox import Sandbox
from sandbox.__main__ import build_parser, config_from_args
from sandbox.client import SandboxClient
from sandbox.config import SandboxConfig

LEAD = "EntityDefinitions(LogicalName='lead')"


@pytest.fixture
def renamed(make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]]) -> tuple[WebApi, SandboxClient]:
    sb, client = make_sandbox(lead_entity_set="uni_leads")
    return WebApi(sb), client


def batch_body(boundary: str, method: str, url: str, json_body: str) -> str:
    """One top-level operation in a ``multipart/mixed`` ``$batch`` body."""
    return (
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        f"{method} {url} HTTP/1.1\r\nContent-Type: application/json; type=entry\r\n\r\n{json_body}\r\n"
        f"--{boundary}--\r\n"
    )


def test_the_default_is_leads(api: WebApi) -> None:
    assert SandboxConfig().lead_entity_set == "leads"
    assert api.get(f"{LEAD}?$select=EntitySetName").json()["EntitySetName"] == "leads"
    assert api.get("leads?$select=leadid&$top=1").status_code == 200


def test_metadata_and_routes_use_the_configured_name(renamed: tuple[WebApi, SandboxClient]) -> None:
    api, client = renamed
    meta = api.get(f"{LEAD}?$select=EntitySetName,PrimaryIdAttribute").json()
    assert (meta["EntitySetName"], meta["PrimaryIdAttribute"]) == ("uni_leads", "leadid")
    sets = {s["name"] for s in api.get("").json()["value"]}
    assert sets == {"uni_leads", "systemusers", "teams", "sdkmessagefilters", "EntityDefinitions"}
    csdl = api.get("$metadata").text
    assert '<EntitySet Name="uni_leads" EntityType="Microsoft.Dynamics.CRM.lead"/>' in csdl
    assert 'EntitySet Name="leads"' not in csdl

    created = api.post("uni_leads", {"lastname": "Renamed", "subject": "entity set"})
    assert created.status_code == 204, created.text
    entity_url = created.headers["OData-EntityId"]
    assert entity_url.startswith(f"{api.base}/uni_leads(")
    lead_id = entity_url.rsplit("(", 1)[1].rstrip(")")
    page = api.get("uni_leads?$select=lastname")
    assert page.json()["@odata.context"] == f"{api.base}/$metadata#uni_leads(lastname)"
    assert [r["lastname"] for r in page.json()["value"]] == ["Renamed"]
    one = api.get(f"uni_leads({lead_id})?$select=lastname").json()
    assert one["@odata.context"] == f"{api.base}/$metadata#uni_leads(lastname)/$entity"

    # the stock name is not an alias: a client that assumes it is told so, and nothing is written
    for response in (api.get("leads"), api.post("leads", {"lastname": "Lost"}), api.patch(f"leads({lead_id})", {})):
        assert error_of(response)[0] == 404
    assert [lead["lastname"] for lead in client.get("/dataverse/leads")] == ["Renamed"]


def test_batch_operations_on_the_configured_name_are_logged(renamed: tuple[WebApi, SandboxClient]) -> None:
    api, client = renamed
    since = client.last_seq()
    lead_id, lost_id = str(uuid.uuid4()), str(uuid.uuid4())
    boundary = "batch_entity_set"
    for url, status in ((f"uni_leads({lead_id})", 204), (f"leads({lost_id})", 404)):
        r = api.http.post(
            f"{api.base}/$batch",
            data=batch_body(boundary, "PATCH", f"{api.base}/{url}", '{"lastname": "Batched"}').encode(),
            headers=api.headers({"Content-Type": f"multipart/mixed; boundary={boundary}"}),
        )
        assert r.status_code == (200 if status == 204 else status), r.text  # no continue-on-error: the failure's
        assert f"HTTP/1.1 {status}" in r.text
    batches = [e for e in client.requests(server="dataverse", since=since) if e["path"].endswith("/$batch")]
    assert [e["part_requests"] for e in batches] == [[f"PATCH uni_leads({lead_id})"], [f"PATCH leads({lost_id})"]]
    assert [e["part_statuses"] for e in batches] == [[204], [404]]
    assert {e["user"] for e in batches} == {api.sb.config.client_id}
    assert [lead["leadid"] for lead in client.get("/dataverse/leads")] == [lead_id]


@pytest.mark.parametrize("name", ["systemusers", "$batch", "lead sets", "", "9leads"])
def test_unusable_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="lead_entity_set"):
        SandboxConfig(lead_entity_set=name)
    with pytest.raises(SystemExit, match="--lead-entity-set"):
        config_from_args(build_parser().parse_args(["serve", "--lead-entity-set", name]))


def test_the_command_line_option() -> None:
    assert config_from_args(build_parser().parse_args(["serve"])).lead_entity_set == "leads"
    args = build_parser().parse_args(["serve", "--lead-entity-set", "uni_leads"])
    assert config_from_args(args).lead_entity_set == "uni_leads"
