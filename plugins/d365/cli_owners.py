"""``python -m d365 owners``: the Dynamics 365 users that can own leads, to fill in ``contact_owner`` and the
owners of ``owner_rules`` without knowing an email or GUID by heart.

Reads every enabled ``systemuser`` of the organization behind ``dynamics.connection_id`` (or ``--connection``)
through the hook's paged query, and keeps those preflight would accept as an owner (``pipeline.owners``: not an
application, non-interactive or built-in SYSTEM / INTEGRATION user). Prints name, email and id as a table (or
``--json``), marking the users the settings already name. Reads only; nothing is written anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from d365.cli_common import connection_password, logs_to_stderr
from d365.pipeline.owners import can_own_leads

COMMAND = "python -m d365 owners"
# a settings owner's ``by`` -> the systemuser column it names
OWNER_COLUMN = {"email": "internalemailaddress", "domainname": "domainname", "id": "systemuserid"}


@dataclass
class Owner:
    """One user who can own leads, and where the settings already name it (``contact_owner``, ``owner_rules[0]``)."""

    name: str
    email: str | None
    domainname: str | None
    id: str
    configured_as: list[str] = field(default_factory=list)


def configured_owners(settings: Any) -> list[tuple[str, str, str]]:
    """(setting, systemuser column, value) of every owner the settings name."""
    named: list[tuple[str, Any]] = []
    if settings.contact_owner is not None:
        named.append(("contact_owner", settings.contact_owner))
    named += [(f"owner_rules[{i}].owner", rule.owner) for i, rule in enumerate(settings.owner_rules)]
    return [(where, OWNER_COLUMN[owner.by], owner.value) for where, owner in named]


def eligible_owners(users: Iterable[Mapping[str, Any]], configured: Sequence[tuple[str, str, str]] = ()) -> list[Owner]:
    """The users that can own leads, sorted by name; each marked with the settings that name it."""
    owners: list[Owner] = []
    for user in users:
        if not can_own_leads(user):
            continue
        marks = [
            where
            for where, column, value in configured
            if str(user.get(column) or "").strip().casefold() == value.strip().casefold()
        ]
        owners.append(
            Owner(
                name=str(user.get("fullname") or "").strip(),
                email=user.get("internalemailaddress") or None,
                domainname=user.get("domainname") or None,
                id=str(user["systemuserid"]),
                configured_as=marks,
            )
        )
    return sorted(owners, key=lambda o: (o.name.casefold(), o.id))


def read_owners(conn_id: str, configured: Sequence[tuple[str, str, str]] = ()) -> list[Owner]:
    """Every page of the enabled systemusers (``isdisabled eq false``; the rest of the rule is applied here)."""
    from d365.hooks.dynamics import DynamicsHook

    hook = DynamicsHook(conn_id)
    try:
        return eligible_owners(hook.list_systemusers(filter="isdisabled eq false"), configured)
    finally:
        hook.close()


def table(owners: Sequence[Owner]) -> str:
    """Aligned columns: name, email, id, and the setting that names the user, if any."""
    rows = [("name", "email", "id", "in settings")]
    rows += [(o.name, o.email or "-", o.id, ", ".join(o.configured_as)) for o in owners]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + ("  " + row[3] if row[3] else "")
        for row in rows
    ).rstrip()


def main(argv: list[str] | None = None) -> int:
    from airflow.sdk.exceptions import AirflowNotFoundException

    from d365.hooks.errors import ApiError
    from d365.notifications import redact
    from d365.pipeline.settings import SettingsError, load_settings

    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", help="settings file (default: $D365_SYNC_SETTINGS or the repository's)")
    parser.add_argument("--connection", help="Dynamics 365 connection (default: dynamics.connection_id)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    args = parser.parse_args(argv)

    settings: Any = None
    try:
        settings = load_settings(args.settings)
    except SettingsError as exc:
        if not args.connection:
            print(f"owners: {exc}", file=sys.stderr)
            return 1
        print(f"owners: settings not read ({exc}); listing without them", file=sys.stderr)
    conn_id = args.connection or settings.dynamics.connection_id
    try:
        with logs_to_stderr():
            owners = read_owners(conn_id, configured_owners(settings) if settings is not None else ())
    except (ApiError, AirflowNotFoundException) as exc:
        shown = redact(str(exc), settings, secrets=connection_password(conn_id))
        print(f"owners: Dynamics 365 connection {conn_id!r}: {shown}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(o) for o in owners], ensure_ascii=False, indent=2))
        return 0
    print(f"Dynamics 365 users who can own leads (connection {conn_id}): {len(owners)}")
    if owners:
        print(table(owners))
        print("name one in the settings, e.g. contact_owner: {email: <email>} (or {id: <id>})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
