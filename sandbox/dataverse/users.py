"""systemusers, teams and the business unit of the sandbox organization.

Users (ids are stable uuid5 values, so configuration can name them):

* five interactive users (accessmode 0 Read-Write, licensed, enabled) with names, emails, domain names
  and Entra object ids;
* one disabled interactive user (``isdisabled`` true);
* the application user bound to the sandbox app registration: ``applicationid`` = the client id,
  ``systemuserid`` = ``state.application_user_id``, accessmode 4 (Non-interactive) [unverified];
* the built-in ``SYSTEM`` and ``INTEGRATION`` users. Decision on the [unverified] point: both are
  enabled, accessmode 0 and have no applicationid, so they DO match
  ``isdisabled eq false and accessmode eq 0 and applicationid eq null``; an owner picker must exclude
  them by name or id.

One team: the business unit's default team (``isdefault`` true, teamtype 0 Owner).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sandbox.dataverse import errors, odata

NS = uuid.UUID("9d7c1c1e-4f0b-4d55-9a43-5a9d3f1c2b10")


def stable_id(name: str) -> str:
    return str(uuid.uuid5(NS, name))


ORGANIZATION_ID = stable_id("organization")
BUSINESS_UNIT_ID = stable_id("businessunit:root")
ORG_NAME = "University Admissions (sandbox)"

INTERACTIVE_USERS = [
    ("Anna", "Virtanen", "Admissions Officer"),
    ("Bruno", "Costa", "Admissions Officer"),
    ("Chloé", "Martin", "Recruitment Manager"),
    ("Daniel", "O'Brien", "International Recruitment Officer"),
    ("Eva", "Lindqvist", "Admissions Coordinator"),
]
DISABLED_USER = ("Frank", "Meyer", "Former Admissions Officer")

USER_PROPERTIES: dict[str, str] = {
    "systemuserid": "guid",
    "fullname": "string",
    "firstname": "string",
    "lastname": "string",
    "internalemailaddress": "string",
    "domainname": "string",
    "title": "string",
    "isdisabled": "bool",
    "accessmode": "int",
    "applicationid": "guid",
    "azureactivedirectoryobjectid": "guid",
    "islicensed": "bool",
    "isintegrationuser": "bool",
    "caltype": "int",
    "_businessunitid_value": "guid",
    "createdon": "datetime",
    "modifiedon": "datetime",
    "versionnumber": "int",
}
TEAM_PROPERTIES: dict[str, str] = {
    "teamid": "guid",
    "name": "string",
    "teamtype": "int",
    "isdefault": "bool",
    "_businessunitid_value": "guid",
    "azureactivedirectoryobjectid": "guid",
    "createdon": "datetime",
    "modifiedon": "datetime",
    "versionnumber": "int",
}


def _email_part(text: str) -> str:
    table = str.maketrans({"é": "e", "'": "", " ": ""})
    return text.lower().translate(table)


def build_users(application_user_id: str, client_id: str) -> list[dict[str, Any]]:
    created = "2024-01-15T09:00:00Z"
    users: list[dict[str, Any]] = []
    version = 500_000

    def add(**fields: Any) -> None:
        nonlocal version
        version += 1
        row = {name: None for name in USER_PROPERTIES}
        row.update(
            {
                "isdisabled": False,
                "accessmode": 0,
                "islicensed": True,
                "isintegrationuser": False,
                "caltype": 0,
                "_businessunitid_value": BUSINESS_UNIT_ID,
                "createdon": created,
                "modifiedon": created,
                "versionnumber": version,
            }
        )
        row.update(fields)
        users.append(row)

    def add_person(first: str, last: str, title: str, **fields: Any) -> None:
        login = f"{_email_part(first)}.{_email_part(last)}@university.example"
        add(
            systemuserid=stable_id(f"user:{login}"),
            firstname=first,
            lastname=last,
            fullname=f"{first} {last}",
            internalemailaddress=login,
            domainname=login,
            title=title,
            azureactivedirectoryobjectid=stable_id(f"aad:{login}"),
            **fields,
        )

    for first, last, title in INTERACTIVE_USERS:
        add_person(first, last, title)
    add_person(*DISABLED_USER, isdisabled=True, islicensed=False)
    add(
        systemuserid=application_user_id,
        firstname="# DreamApply",
        lastname="Sync",
        fullname="# DreamApply Sync",
        internalemailaddress=f"{client_id}@university.example",
        domainname=f"{client_id}@university.example",
        applicationid=client_id,
        accessmode=4,
        islicensed=False,
        azureactivedirectoryobjectid=stable_id(f"aad:app:{client_id}"),
    )
    add(
        systemuserid=stable_id("user:SYSTEM"),
        firstname="",
        lastname="SYSTEM",
        fullname="SYSTEM",
        domainname="",
        islicensed=False,
    )
    add(
        systemuserid=stable_id("user:INTEGRATION"),
        firstname="",
        lastname="INTEGRATION",
        fullname="INTEGRATION",
        domainname="",
        islicensed=False,
        isintegrationuser=True,
    )
    return users


def build_teams() -> list[dict[str, Any]]:
    return [
        {
            "teamid": stable_id("team:default"),
            "name": ORG_NAME,
            "teamtype": 0,
            "isdefault": True,
            "_businessunitid_value": BUSINESS_UNIT_ID,
            "azureactivedirectoryobjectid": None,
            "createdon": "2024-01-15T09:00:00Z",
            "modifiedon": "2024-01-15T09:00:00Z",
            "versionnumber": 400_001,
        }
    ]


class SimpleTable(odata.DictRows):
    """A small read-only entity set (systemusers, teams) for the shared query engine."""

    def __init__(
        self, entity_set: str, logical: str, primary_id: str, properties: dict[str, str], rows: list[dict[str, Any]]
    ) -> None:
        self.entity_set = entity_set
        self.logical = logical
        self.type_name = f"Microsoft.Dynamics.CRM.{logical}"
        self.primary_id = primary_id
        self.properties = properties
        super().__init__(rows)

    def resolve(self, name: str) -> tuple[Callable[[Any], Any], str]:
        kind = self.properties.get(name)
        if kind is None:
            raise errors.unknown_property(name, self.type_name)
        return (lambda row: row.get(name)), kind

    def index_lookup(self, name: str, values: list[Any]) -> set[str] | None:
        if name == self.primary_id:
            return {str(v).lower() for v in values}
        return None

    def check_select(self, names: list[str]) -> None:
        for name in names:
            if name not in self.properties:
                raise errors.unknown_property(name, self.type_name)
