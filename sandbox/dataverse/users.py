"""systemusers, teams and the business unit of the sandbox organization.

Users (ids are stable uuid5 values, so configuration can name them):

* five interactive users (accessmode 0 Read-Write, licensed, enabled) with names, emails, domain names
  and Entra object ids;
* one disabled interactive user (``isdisabled`` true);
* one application user per app registration of the tenant (``state.apps``: the sandbox app, then
  ``extra_app_users`` more): ``applicationid`` = the client id, ``systemuserid`` = the app's user id
  (``state.application_user_id`` for the first), accessmode 4 (Non-interactive) [unverified], enabled;
* the built-in ``SYSTEM`` and ``INTEGRATION`` users. Decision on the [unverified] point: both are
  enabled, accessmode 0 and have no applicationid, so they DO match
  ``isdisabled eq false and accessmode eq 0 and applicationid eq null``; an owner picker must exclude
  them by name or id.

One team: the business unit's default team (``isdefault`` true, teamtype 0 Owner).

Security roles (``roles``), read per user as Dataverse serves them:
``GET systemusers(<id>)/systemuserroles_association?$select=name,roleid``. Every application user holds the custom
role "DreamApply Integration", the interactive users (the disabled one too) "Salesperson", the built-in users
"System Administrator". A user without a role can do nothing in a real org, so a check for "has a role" is what
tells an application user that was never set up from a working one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sandbox.dataverse import errors, odata
from sandbox.entra.apps import AppUser

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
ROLE_PROPERTIES: dict[str, str] = {
    "roleid": "guid",
    "name": "string",
    "ismanaged": "bool",
    "_businessunitid_value": "guid",
    "createdon": "datetime",
    "modifiedon": "datetime",
    "versionnumber": "int",
}
# The navigation property that lists a user's security roles (N:N systemuserroles).
USER_ROLES_NAVIGATION = "systemuserroles_association"
SYSTEM_ADMINISTRATOR = "System Administrator"
SALESPERSON = "Salesperson"
INTEGRATION_ROLE = "DreamApply Integration"
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


def build_users(apps: Sequence[AppUser]) -> list[dict[str, Any]]:
    """The org's users: the people, one application user per app registration, the built-in users."""
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
    for app in apps:
        add(
            systemuserid=app.user_id,
            firstname="# DreamApply",
            lastname=app.name.removeprefix("# DreamApply "),
            fullname=app.name,
            internalemailaddress=f"{app.client_id}@university.example",
            domainname=f"{app.client_id}@university.example",
            applicationid=app.client_id,
            accessmode=4,
            islicensed=False,
            azureactivedirectoryobjectid=stable_id(f"aad:app:{app.client_id}"),
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


ROLES = ((SYSTEM_ADMINISTRATOR, True), (SALESPERSON, True), (INTEGRATION_ROLE, False))  # (name, managed)


def build_roles() -> list[dict[str, Any]]:
    created = "2024-01-15T09:00:00Z"
    return [
        {
            "roleid": stable_id(f"role:{name}"),
            "name": name,
            "ismanaged": managed,
            "_businessunitid_value": BUSINESS_UNIT_ID,
            "createdon": created,
            "modifiedon": created,
            "versionnumber": 300_001 + i,
        }
        for i, (name, managed) in enumerate(ROLES)
    ]


def role_names_of(user: dict[str, Any]) -> list[str]:
    """The roles a sandbox user holds (see the module docstring)."""
    if user.get("applicationid"):
        return [INTEGRATION_ROLE]
    if str(user.get("fullname") or "") in ("SYSTEM", "INTEGRATION"):
        return [SYSTEM_ADMINISTRATOR]
    return [SALESPERSON]


class RoleDirectory:
    """Security roles and who holds them; serves ``systemusers(<id>)/systemuserroles_association``."""

    def __init__(self, users: Iterable[dict[str, Any]]) -> None:
        self.roles = {row["name"]: row for row in build_roles()}
        self.held = {user["systemuserid"]: role_names_of(user) for user in users}

    def table_of(self, user_id: str) -> SimpleTable:
        """The roles of one user as a queryable entity set ($select, $filter, $top work on it)."""
        rows = [self.roles[name] for name in self.held.get(user_id, [])]
        return SimpleTable("roles", "role", "roleid", ROLE_PROPERTIES, rows)


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
