"""The Dataverse sandbox driven by a client nobody here wrote: Microsoft's Python SDK for Dataverse.

``PowerPlatform-Dataverse-Client`` (with ``azure-identity``'s ``ClientSecretCredential`` against the
sandbox's Entra ID) does what an SDK user would: create, get, update, delete, alternate-key upsert,
queries with filter/select/orderby/top/paging, ``$batch`` with a change set, the bulk
``*Multiple`` messages it uses for lists, FetchXML with paging cookies, table metadata. What the
sandbox does not implement (``BulkDelete``, the ``sql`` endpoint, FetchXML beyond its subset) must
fail with the service's error shape, never answer 200 with data that ignores the request.

The SDK's ``requests`` calls verify TLS against the sandbox CA through ``REQUESTS_CA_BUNDLE``, set
only inside each test (monkeypatch); the credential takes ``connection_verify``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.identity import ClientSecretCredential
from PowerPlatform.Dataverse.client import DataverseClient
from PowerPlatform.Dataverse.core.errors import HttpError
from PowerPlatform.Dataverse.models.upsert import UpsertItem

from sandbox import Sandbox
from sandbox.client import SandboxClient

NOT_SUPPORTED = "0x80060888"


@pytest.fixture
def client(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[DataverseClient]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sandbox.ca_path))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    login_host = sandbox.endpoints.authority.split("/")[2]
    credential = ClientSecretCredential(
        sandbox.state.config.tenant_id,
        sandbox.config.client_id,
        sandbox.config.client_secret,
        authority=f"https://{login_host}",
        disable_instance_discovery=True,
        connection_verify=str(sandbox.ca_path),
    )
    with DataverseClient(sandbox.endpoints.org_url, credential) as dv:
        yield dv


@pytest.fixture
def log(sandbox: Sandbox) -> Iterator[RequestLog]:
    admin = SandboxClient(sandbox.info())
    yield RequestLog(admin)
    admin.clear_faults()


class RequestLog:
    """The Dataverse requests the SDK made since the log was marked."""

    def __init__(self, admin: SandboxClient) -> None:
        self.admin = admin
        self.since = admin.last_seq()

    def mark(self) -> None:
        self.since = self.admin.last_seq()

    def entries(self) -> list[dict[str, Any]]:
        return self.admin.requests(server="dataverse", since=self.since)


def _marker() -> str:
    return f"sdk-{uuid.uuid4().hex[:10]}"


def _by_marker(client: DataverseClient, marker: str, *columns: str) -> list[Any]:
    result = client.records.list(
        "lead", filter=f"uni_reference eq '{marker}'", select=["firstname", *columns], orderby=["firstname asc"]
    )
    return list(result)


def test_token_from_the_sandbox_entra_and_crud(client: DataverseClient, sandbox: Sandbox, log: RequestLog) -> None:
    marker = _marker()
    lead_id = client.records.create("lead", {"firstname": "Ada", "lastname": "Lovelace", "uni_reference": marker})
    got = client.records.retrieve("lead", lead_id, select=["firstname", "lastname", "ownerid"])
    assert got is not None and got["lastname"] == "Lovelace" and got.id == lead_id
    assert got["_ownerid_value"] == sandbox.state.application_user_id  # the app user behind the SDK's token

    client.records.update("lead", lead_id, {"lastname": "King"})  # PATCH with If-Match: * (update only)
    assert client.records.retrieve("lead", lead_id, select=["lastname"])["lastname"] == "King"

    missing = str(uuid.uuid4())
    with pytest.raises(HttpError) as caught:
        client.records.update("lead", missing, {"lastname": "Nobody"})
    assert caught.value.status_code == 404
    assert caught.value.details["service_error_code"] == "0x80040217"
    assert client.records.retrieve("lead", missing) is None

    client.records.delete("lead", lead_id)
    assert client.records.retrieve("lead", lead_id) is None
    authorised = [e for e in log.entries() if e["status"] < 400 or e["status"] == 404]
    assert authorised and all(e.get("user") for e in authorised)  # every call carried the SDK's bearer token


def test_picklist_labels_are_resolved_through_the_metadata(client: DataverseClient) -> None:
    """The SDK turns a label into its option value by reading PicklistAttributeMetadata with OptionSet."""
    lead_id = client.records.create("lead", {"lastname": "Rated", "leadqualitycode": "Hot"})
    got = client.records.retrieve("lead", lead_id, select=["leadqualitycode"])
    assert got["leadqualitycode"] == 1


def test_alternate_key_upsert_creates_then_updates(client: DataverseClient, log: RequestLog) -> None:
    marker = _marker()
    applicant = f"A-{uuid.uuid4().hex[:8]}"
    item = UpsertItem(
        alternate_key={"uni_applicantid": applicant}, record={"lastname": "First", "uni_reference": marker}
    )
    client.records.upsert("lead", [item])
    client.records.upsert(
        "lead", [UpsertItem(alternate_key={"uni_applicantid": applicant}, record={"lastname": "Second"})]
    )
    rows = _by_marker(client, marker, "lastname", "uni_applicantid")
    assert [(r["lastname"], r["uni_applicantid"]) for r in rows] == [("Second", applicant)]
    patches = [e for e in log.entries() if e["method"] == "PATCH"]
    assert [e["status"] for e in patches] == [204, 204]
    assert all("uni_applicantid=" in e["path"] for e in patches)


def test_list_with_filter_select_orderby_and_top_across_pages(client: DataverseClient, log: RequestLog) -> None:
    marker = _marker()
    names = [f"N{i:02d}" for i in range(12)]
    client.records.create("lead", [{"firstname": n, "lastname": "Paged", "uni_reference": marker} for n in names])
    log.mark()
    result = client.records.list(
        "lead",
        filter=f"uni_reference eq '{marker}'",
        select=["firstname"],
        orderby=["firstname desc"],
        top=5,
        page_size=2,
    )
    assert [r["firstname"] for r in result] == sorted(names, reverse=True)[:5]
    assert all(set(r.data) <= {"firstname", "leadid"} for r in result)
    gets = log.entries()
    assert len(gets) == 3  # pages of 2, 2 and 1: the nextLink stops once $top rows were served
    assert all("%24top=5" in e["query"] or "$top=5" in e["query"] for e in gets)

    pages = [
        len(page) for page in client.records.list_pages("lead", filter=f"uni_reference eq '{marker}'", page_size=5)
    ]
    assert pages == [5, 5, 2]
    # The report's case: five rows asked for with no filter are five rows, not every lead of the org.
    assert len(client.records.list("lead", top=5, page_size=2, select=["lastname"])) == 5


def test_batch_with_a_change_set(client: DataverseClient, log: RequestLog) -> None:
    marker = _marker()
    batch = client.batch.new()
    with batch.changeset() as cs:
        ref = cs.records.create("lead", {"firstname": "B1", "lastname": "Batch", "uni_reference": marker})
        cs.records.update("lead", ref, {"telephone1": "+3725550101"})
        cs.records.create("lead", {"firstname": "B2", "lastname": "Batch", "uni_reference": marker})
    result = batch.execute()
    assert not result.has_errors, [(r.status_code, r.error_message) for r in result.responses]
    assert len(set(result.entity_ids)) == 2  # the update answers with its OData-EntityId too
    rows = _by_marker(client, marker, "telephone1")
    assert [(r["firstname"], r["telephone1"]) for r in rows] == [("B1", "+3725550101"), ("B2", None)]

    failing = client.batch.new()
    with failing.changeset() as cs:
        cs.records.create("lead", {"firstname": "B3", "lastname": "Batch", "uni_reference": marker})
        cs.records.create("lead", {"firstname": "B4", "lastname": "x" * 51, "uni_reference": marker})
    outcome = failing.execute()
    assert outcome.has_errors
    assert [r.error_code for r in outcome.failed] == ["0x80044331"]
    assert [r["firstname"] for r in _by_marker(client, marker)] == ["B1", "B2"]  # the change set rolled back
    assert any(e["path"].endswith("/$batch") for e in log.entries())


def test_bulk_create_update_and_upsert_use_the_multiple_messages(client: DataverseClient, log: RequestLog) -> None:
    marker = _marker()
    ids = client.records.create(
        "lead", [{"firstname": f"M{i}", "lastname": "Bulk", "uni_reference": marker} for i in range(3)]
    )
    assert len(ids) == 3 and len(set(ids)) == 3
    client.records.update("lead", ids[:2], {"telephone1": "+3725550102"})
    applicants = [f"A-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    client.records.upsert(
        "lead",
        [
            UpsertItem(
                alternate_key={"uni_applicantid": a},
                record={"firstname": f"U{i}", "lastname": "Bulk", "uni_reference": marker},
            )
            for i, a in enumerate(applicants)
        ],
    )
    rows = _by_marker(client, marker, "telephone1", "uni_applicantid")
    assert [(r["firstname"], r["telephone1"], r["uni_applicantid"]) for r in rows] == [
        ("M0", "+3725550102", None),
        ("M1", "+3725550102", None),
        ("M2", None, None),
        ("U0", None, applicants[0]),
        ("U1", None, applicants[1]),
    ]
    messages = [e["path"].rsplit(".", 1)[-1] for e in log.entries() if e["method"] == "POST"]
    assert messages == ["CreateMultiple", "UpdateMultiple", "UpsertMultiple"]


def test_bulk_create_is_all_or_nothing(client: DataverseClient) -> None:
    marker = _marker()
    with pytest.raises(HttpError) as caught:
        client.records.create(
            "lead",
            [
                {"firstname": "Ok", "lastname": "Bulk", "uni_reference": marker},
                {"firstname": "Bad", "lastname": "x" * 51, "uni_reference": marker},
            ],
        )
    assert caught.value.status_code == 400
    assert caught.value.details["service_error_code"] == "0x80044331"
    assert _by_marker(client, marker) == []


def test_fetchxml_is_honoured_with_paging_cookies(client: DataverseClient, log: RequestLog) -> None:
    marker = _marker()
    client.records.create(
        "lead",
        [{"firstname": f"F{i}", "lastname": ["Smith", "Jones"][i % 2], "uni_reference": marker} for i in range(7)],
    )
    log.mark()
    xml = (
        "<fetch count='2'><entity name='lead'><attribute name='firstname' /><order attribute='firstname' />"
        f"<filter><condition attribute='uni_reference' operator='eq' value='{marker}' />"
        "<condition attribute='lastname' operator='like' value='sm%' /></filter></entity></fetch>"
    )
    result = client.query.fetchxml(xml).execute()
    assert [r["firstname"] for r in result] == ["F0", "F2", "F4", "F6"]
    assert len(log.entries()) == 2  # count='2': two pages, the second reached through the paging cookie

    top = client.query.fetchxml(
        "<fetch top='3'><entity name='lead'><attribute name='firstname' /><order attribute='firstname' "
        f"descending='true' /><filter><condition attribute='uni_reference' operator='eq' value='{marker}' />"
        "</filter></entity></fetch>"
    ).execute()
    assert [r["firstname"] for r in top] == ["F6", "F5", "F4"]


def test_what_the_sandbox_does_not_implement_fails_loudly(client: DataverseClient) -> None:
    marker = _marker()
    ids = client.records.create("lead", [{"lastname": "Stay", "uni_reference": marker} for _ in range(2)])

    with pytest.raises(HttpError) as caught:  # the SDK deletes a list with BulkDelete
        client.records.delete("lead", ids)
    assert (caught.value.status_code, caught.value.details["service_error_code"]) == (400, NOT_SUPPORTED)
    assert "BulkDelete" in str(caught.value) and "not supported by the Dataverse sandbox" in str(caught.value)
    assert len(_by_marker(client, marker)) == 2

    with pytest.raises(HttpError) as caught:
        client.query.sql(f"SELECT TOP 1 lastname FROM lead WHERE uni_reference = '{marker}'")
    assert (caught.value.status_code, caught.value.details["service_error_code"]) == (400, NOT_SUPPORTED)

    with pytest.raises(HttpError) as caught:
        client.query.fetchxml(
            "<fetch><entity name='lead'><link-entity name='systemuser' from='systemuserid' to='ownerid' />"
            "</entity></fetch>"
        ).execute()
    assert (caught.value.status_code, caught.value.details["service_error_code"]) == (400, NOT_SUPPORTED)

    client.records.delete("lead", ids, use_bulk_delete=False)  # one DELETE per id works
    assert _by_marker(client, marker) == []


def test_table_metadata(client: DataverseClient) -> None:
    tables = client.tables.list(select=["LogicalName", "EntitySetName"])
    assert [t["LogicalName"] for t in tables] == ["lead"]
    info = client.tables.get("lead")
    assert info is not None and info["entity_set_name"] == "leads" and info["primary_id_attribute"] == "leadid"
    keys = client.tables.get_alternate_keys("lead")
    assert [k.key_attributes for k in keys] == [["uni_applicantid"]]
