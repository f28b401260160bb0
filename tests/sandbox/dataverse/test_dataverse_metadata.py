"""systemusers/teams, EntityDefinitions, attribute casts and OptionSet shape, InsertOptionValue, PublishXml, Keys."""

from __future__ import annotations

from typing import Any

from dvhelpers import WebApi, error_of

from sandbox import Sandbox

LEAD = "EntityDefinitions(LogicalName='lead')"
PICKLIST = "Microsoft.Dynamics.CRM.PicklistAttributeMetadata"


def test_enabled_interactive_users(api: WebApi, sandbox: Sandbox) -> None:
    r = api.get(
        "systemusers?$select=systemuserid,fullname,internalemailaddress,domainname,isdisabled,accessmode,applicationid,"
        "azureactivedirectoryobjectid&$filter=isdisabled eq false and accessmode eq 0 and applicationid eq null"
    )
    assert r.status_code == 200
    users = r.json()["value"]
    names = {u["fullname"] for u in users}
    assert len(users) == 7 and {"SYSTEM", "INTEGRATION"} <= names
    assert all(not u["isdisabled"] and u["applicationid"] is None for u in users)
    everyone = api.get("systemusers?$select=fullname,isdisabled,applicationid").json()["value"]
    assert len(everyone) == 9
    app_user = next(u for u in everyone if u["applicationid"])
    assert app_user["applicationid"] == sandbox.config.client_id
    assert app_user["systemuserid"] == sandbox.state.application_user_id
    one = api.get(f"systemusers({app_user['systemuserid']})?$select=fullname").json()
    assert one["fullname"] == app_user["fullname"]
    assert api.get("systemusers(00000000-0000-0000-0000-000000000000)").status_code == 404
    assert error_of(api.get("systemusers?$select=nope"))[0] == 400
    assert len(api.get("systemusers?$top=2&$orderby=fullname").json()["value"]) == 2


def test_entity_definition(api: WebApi) -> None:
    r = api.get(f"{LEAD}?$select=LogicalName,EntitySetName,PrimaryIdAttribute,PrimaryNameAttribute")
    body = r.json()
    assert r.status_code == 200
    assert (
        body["@odata.context"]
        == f"{api.base}/$metadata#EntityDefinitions(LogicalName,EntitySetName,PrimaryIdAttribute,"
        "PrimaryNameAttribute)/$entity"
    )
    assert {k: body[k] for k in ("LogicalName", "EntitySetName", "PrimaryIdAttribute", "PrimaryNameAttribute")} == {
        "LogicalName": "lead",
        "EntitySetName": "leads",
        "PrimaryIdAttribute": "leadid",
        "PrimaryNameAttribute": "fullname",
    }
    assert "MetadataId" in body
    by_id = api.get(f"EntityDefinitions({body['MetadataId']})?$select=LogicalName").json()
    assert by_id["LogicalName"] == "lead"
    assert api.get("EntityDefinitions(LogicalName='contact')").status_code == 404


def test_attributes_common_properties_and_filters(api: WebApi) -> None:
    select = (
        "LogicalName,SchemaName,AttributeType,AttributeTypeName,IsValidForCreate,IsValidForUpdate,RequiredLevel,"
        "IsCustomAttribute"
    )
    body = api.get(f"{LEAD}/Attributes?$select={select}&$filter=IsValidForCreate eq true").json()
    attrs = {a["LogicalName"]: a for a in body["value"]}
    assert "fullname" not in attrs and "statecode" not in attrs
    sub = attrs["subject"]
    assert sub["@odata.type"] == "#Microsoft.Dynamics.CRM.StringAttributeMetadata"
    assert sub["AttributeTypeName"] == {"Value": "StringType"}
    assert sub["RequiredLevel"] == {
        "Value": "ApplicationRequired",
        "CanBeChanged": True,
        "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
    }
    assert attrs["uni_applicantid"]["IsCustomAttribute"] is True
    assert attrs["leadsourcecode"]["AttributeType"] == "Picklist"
    required = api.get(
        f"{LEAD}/Attributes?$select=LogicalName&$filter=RequiredLevel/Value eq "
        "Microsoft.Dynamics.CRM.AttributeRequiredLevel'ApplicationRequired'"
    ).json()["value"]
    assert {"lastname", "subject"} <= {a["LogicalName"] for a in required}
    picklists = api.get(
        f"{LEAD}/Attributes?$select=LogicalName&$filter=AttributeType eq "
        "Microsoft.Dynamics.CRM.AttributeTypeCode'Picklist'"
    ).json()["value"]
    assert "uni_programme" in {a["LogicalName"] for a in picklists}
    one = api.get(f"{LEAD}/Attributes(LogicalName='emailaddress1')").json()
    assert one["MaxLength"] == 100 and one["Format"] == "Email"
    assert error_of(api.get(f"{LEAD}/Attributes?$select=MaxLength"))[0] == 400


def test_string_and_memo_casts(api: WebApi) -> None:
    strings = api.get(
        f"{LEAD}/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata?$select=LogicalName,MaxLength,Format"
    ).json()
    by_name = {a["LogicalName"]: a for a in strings["value"]}
    assert by_name["uni_applicantid"]["MaxLength"] == 100
    assert "description" not in by_name
    memos = api.get(
        f"{LEAD}/Attributes/Microsoft.Dynamics.CRM.MemoAttributeMetadata?$select=LogicalName,MaxLength"
    ).json()["value"]
    description = next(m for m in memos if m["LogicalName"] == "description")
    assert (description["LogicalName"], description["MaxLength"]) == ("description", 2000)
    assert api.get(f"{LEAD}/Attributes/Microsoft.Dynamics.CRM.EnumAttributeMetadata").status_code == 400


def test_option_set_shape(api: WebApi) -> None:
    r = api.get(f"{LEAD}/Attributes(LogicalName='leadsourcecode')/{PICKLIST}?$select=LogicalName&$expand=OptionSet")
    body = r.json()
    assert r.status_code == 200
    assert body["@odata.context"].endswith(f"/Attributes/{PICKLIST}(LogicalName,OptionSet)/$entity")
    assert set(body) == {"@odata.context", "LogicalName", "MetadataId", "OptionSet"}
    option_set = body["OptionSet"]
    for key in ("Options", "IsCustomOptionSet", "IsGlobal", "IsManaged", "Name", "OptionSetType", "MetadataId"):
        assert key in option_set
    assert option_set["OptionSetType"] == "Picklist" and option_set["IsGlobal"] is False
    first = option_set["Options"][0]
    assert first["Value"] == 1
    localized = first["Label"]["LocalizedLabels"][0]
    assert {k: localized[k] for k in ("Label", "LanguageCode", "IsManaged", "HasChanged")} == {
        "Label": "Advertisement",
        "LanguageCode": 1033,
        "IsManaged": True,
        "HasChanged": None,
    }
    assert first["Label"]["UserLocalizedLabel"]["Label"] == "Advertisement"
    assert first["Description"] == {"LocalizedLabels": [], "UserLocalizedLabel": None}
    for key in ("Color", "IsManaged", "MetadataId", "HasChanged"):
        assert key in first


def test_bulk_picklists_with_global_option_set(api: WebApi) -> None:
    r = api.get(
        f"{LEAD}/Attributes/{PICKLIST}?$select=LogicalName&$expand=OptionSet($select=Options),GlobalOptionSet($select=Options)"
    )
    values = {a["LogicalName"]: a for a in r.json()["value"]}
    assert values["uni_programme"]["GlobalOptionSet"] is None
    assert [o["Value"] for o in values["uni_leadstage"]["OptionSet"]["Options"]][:2] == [727000000, 727000001]
    assert "statecode" not in values
    status, _, message = error_of(api.get(f"{LEAD}/Attributes?$select=LogicalName&$expand=OptionSet"))
    assert status == 400 and "OptionSet" in message
    boolean = api.get(
        f"{LEAD}/Attributes(LogicalName='uni_consentgiven')/Microsoft.Dynamics.CRM.BooleanAttributeMetadata?$expand=OptionSet"
    ).json()
    assert boolean["OptionSet"]["TrueOption"]["Value"] == 1 and boolean["OptionSet"]["FalseOption"]["Value"] == 0
    state = api.get(
        f"{LEAD}/Attributes(LogicalName='statecode')/Microsoft.Dynamics.CRM.StateAttributeMetadata?$expand=OptionSet"
    ).json()
    assert state["OptionSet"]["Options"][1]["DefaultStatus"] == 3


def test_insert_option_value_and_publish(make_sandbox: Any, connect: Any) -> None:
    sb, client = make_sandbox()
    api: WebApi = connect(sb)
    label = {
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel",
                "Label": "MSc Robotics",
                "LanguageCode": 1033,
                "IsManaged": False,
            }
        ],
    }
    r = api.post(
        "InsertOptionValue",
        {"AttributeLogicalName": "uni_programme", "EntityLogicalName": "lead", "Value": None, "Label": label},
    )
    assert r.status_code == 200
    assert r.json() == {
        "@odata.context": f"{api.base}/$metadata#Microsoft.Dynamics.CRM.InsertOptionValueResponse",
        "NewOptionValue": 727000005,
    }
    again = api.post(
        "InsertOptionValue",
        {"AttributeLogicalName": "uni_programme", "EntityLogicalName": "lead", "Value": 727000005, "Label": "Other"},
    )
    assert again.status_code == 400
    dup_label = api.post(
        "InsertOptionValue",
        {"AttributeLogicalName": "uni_programme", "EntityLogicalName": "lead", "Value": 727000009, "Label": label},
    )
    assert dup_label.status_code == 400
    assert (
        api.post(
            "InsertOptionValue", {"AttributeLogicalName": "nope", "EntityLogicalName": "lead", "Label": "x"}
        ).status_code
        == 404
    )
    lead_id = api.create({"lastname": "Robo", "uni_programme": 727000005})
    assert api.get(f"leads({lead_id})?$select=uni_programme").json()["uni_programme"] == 727000005
    xml = "<importexportxml><entities><entity>lead</entity></entities></importexportxml>"
    assert api.post("PublishXml", {"ParameterXml": xml}).status_code == 204
    assert api.post("PublishXml", {}).status_code == 400
    assert api.post("PublishAllXml").status_code == 204
    stats = client.get("/dataverse/stats")
    assert (
        stats["insert_option_value_calls"] == 1
        and stats["publish_xml_calls"] == 1
        and stats["publish_all_xml_calls"] == 1
    )
    options = api.get(
        f"{LEAD}/Attributes(LogicalName='uni_programme')/{PICKLIST}?$expand=OptionSet($select=Options)"
    ).json()
    assert options["OptionSet"]["Options"][-1]["Label"]["UserLocalizedLabel"]["Label"] == "MSc Robotics"
    client.post("/dataverse/reset")
    assert client.get("/dataverse/stats")["insert_option_value_calls"] == 0
    assert error_of(api.post("leads", {"uni_programme": 727000005}))[1] == "0x8004431a"


def test_keys_listing(api: WebApi) -> None:
    body = api.get(f"{LEAD}/Keys?$select=SchemaName,KeyAttributes,EntityKeyIndexStatus").json()
    key = next(k for k in body["value"] if k["SchemaName"] == "uni_applicantid_key")
    assert key["KeyAttributes"] == ["uni_applicantid"] and key["EntityKeyIndexStatus"] == "Active"
    assert api.get(f"{LEAD}/Keys({key['MetadataId']})?$select=SchemaName").json()["SchemaName"] == "uni_applicantid_key"


def test_service_document_and_csdl(api: WebApi) -> None:
    body = api.get("").json()
    assert {"name": "leads", "kind": "EntitySet", "url": "leads"} in body["value"]
    csdl = api.get("$metadata", headers={"Accept": "application/xml"})
    assert csdl.status_code == 200 and '<EntityType Name="lead"' in csdl.text


def test_entity_definitions_carry_is_private_and_table_type(api: WebApi) -> None:
    """Microsoft's Python SDK lists tables with ``$filter=IsPrivate eq false``."""
    r = api.get(
        "EntityDefinitions", params={"$filter": "IsPrivate eq false", "$select": "LogicalName,IsPrivate,TableType"}
    )
    assert r.status_code == 200, r.text
    [lead] = r.json()["value"]
    assert (lead["LogicalName"], lead["IsPrivate"], lead["TableType"]) == ("lead", False, "Standard")
    assert api.get("EntityDefinitions", params={"$filter": "IsPrivate eq true"}).json()["value"] == []


def test_entity_definitions_filter_on_a_property_left_out_by_select(api: WebApi) -> None:
    r = api.get("EntityDefinitions", params={"$filter": "IsPrivate eq false", "$select": "LogicalName"})
    assert r.status_code == 200, r.text
    assert [row["LogicalName"] for row in r.json()["value"]] == ["lead"]
    assert set(r.json()["value"][0]) == {"LogicalName", "MetadataId"}
