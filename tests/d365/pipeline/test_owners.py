"""Owner rules (first match wins, fallback to contact_owner) and the owner checks of the preflight."""

from __future__ import annotations

from typing import Any

import pytest

from d365.pipeline.fit import LeadSchema
from d365.pipeline.mapping import Mapper
from d365.pipeline.owners import OwnerIds, first_match, owner_problem, resolve_owners
from d365.pipeline.settings import ContactOwner, SettingsError, parse_settings

MAPPING = {"lastname": "applicant.name.family"}
ANNA = {"email": "anna.virtanen@university.example"}
BRUNO = {"email": "bruno.costa@university.example"}
EVA = {"domainname": "eva.lindqvist@university.example"}
RULES = [
    {"when": {"programme_code": ["CS-BSC"]}, "owner": BRUNO},
    {"when": {"citizenship": ["FI", "SE"]}, "owner": EVA},
    {
        "when": {"citizenship": "EE", "tracker_code": ["WEBINAR"]},
        "owner": {"id": "00000000-0000-0000-0000-000000000001"},
    },
]


def settings(rules: list[dict[str, Any]] = RULES, **extra: Any) -> Any:
    return parse_settings({"data_mapping": MAPPING, "contact_owner": ANNA, "owner_rules": rules, **extra})


def lookup(**values: Any) -> Any:
    return lambda source: values.get(source)


def test_rules_in_order_first_match_wins_and_no_match_falls_back() -> None:
    rules = settings().owner_rules
    assert first_match(rules, lookup(**{"programme.code": "CS-BSC", "applicant.citizenship": "FI"})) == 0
    assert first_match(rules, lookup(**{"programme.code": "ECON", "applicant.citizenship": "SE"})) == 1
    assert first_match(rules, lookup(**{"applicant.citizenship": "EE", "tracker.code": "WEBINAR"})) == 2
    assert first_match(rules, lookup(**{"applicant.citizenship": "EE"})) is None  # every condition must hold
    assert first_match(rules, lookup()) is None
    # the fallback itself (no rule matched → contact owner) is the plan's: test_plan.test_owner_for_create_*


def test_values_compare_ignoring_case_accents_and_list_items() -> None:
    rules = settings(
        [{"when": {"programme_codes": ["cs-bsc"], "term_type": ["Fall semester"]}, "owner": BRUNO}]
    ).owner_rules
    assert first_match(rules, lookup(**{"programme.codes": ["ECON", "CS-BSC"], "term.type": "FÁLL  semester"})) == 0
    assert first_match(rules, lookup(**{"programme.codes": ["ECON"], "term.type": "Fall semester"})) is None


def test_any_source_field_can_be_a_condition_and_typos_are_named() -> None:
    rules = settings([{"when": {"applicant.reference": ["S-1"]}, "owner": BRUNO}]).owner_rules
    assert first_match(rules, lookup(**{"applicant.reference": "s-1"})) == 0
    with pytest.raises(SettingsError) as info:
        settings([{"when": {"programm_code": ["CS-BSC"]}, "owner": BRUNO}])
    assert info.value.errors == [
        "owner_rules.0.when: unknown condition 'programm_code'; did you mean 'programme_code'? "
        "(a short name or a source field)"
    ]
    with pytest.raises(SettingsError) as info:
        settings([{"when": {}, "owner": BRUNO}])
    assert "give at least one condition" in info.value.errors[0]
    with pytest.raises(SettingsError) as info:
        settings([{"when": {"citizenship": ["FI"]}, "owner": {"email": "a@b.example", "domainname": "x"}}])
    assert "exactly one of 'email', 'domainname' or 'id'" in info.value.errors[0]
    with pytest.raises(SettingsError) as info:
        parse_settings({"data_mapping": MAPPING, "owner_rules": RULES})
    assert "owner_rules need contact_owner" in str(info.value)


def test_the_mapper_records_the_matching_rule_citizenship_as_iso_code() -> None:
    s = settings()
    catalog = {"courses": {"3": {"id": 3, "code": "CS-BSC", "name": "Computer Science"}}, "terms": {}}
    mapper = Mapper(s, LeadSchema.from_metadata_json(), catalog, instance="apply.example.edu")
    assert mapper.map({"applicant_id": 7, "name_family": "Tamm", "citizenship": "fi"}).owner_rule == 1
    assert mapper.map({"applicant_id": 8, "name_family": "Tamm", "citizenship": "Sweden"}).owner_rule == 1
    assert mapper.map({"applicant_id": 9, "name_family": "Tamm", "citizenship": "EE"}).owner_rule is None
    no_rules = Mapper(parse_settings({"data_mapping": MAPPING}), LeadSchema.from_metadata_json(), {}, instance="x")
    assert no_rules.map({"applicant_id": 7, "name_family": "Tamm", "citizenship": "FI"}).owner_rule is None


USERS = {
    ("email", "anna.virtanen@university.example"): {"systemuserid": "A", "fullname": "Anna", "accessmode": 0},
    ("email", "bruno.costa@university.example"): {"systemuserid": "B", "fullname": "Bruno", "isdisabled": True},
    ("domainname", "eva.lindqvist@university.example"): {"systemuserid": "E", "fullname": "Eva", "accessmode": 0},
    ("email", "app@university.example"): {"systemuserid": "APP", "applicationid": "c1", "accessmode": 4},
    ("user_id", "00000000-0000-0000-0000-000000000002"): {"systemuserid": "S", "fullname": "SYSTEM"},
}


def find_in(users: dict[tuple[str, str], dict[str, Any]], calls: list[Any]) -> Any:
    def find(**kw: str) -> dict[str, Any] | None:
        calls.append(kw)
        [(key, value)] = kw.items()
        return users.get((key, value))

    return find


def test_owner_problems_name_what_is_wrong() -> None:
    anna = ContactOwner(email="anna.virtanen@university.example")
    assert owner_problem(USERS[("email", "anna.virtanen@university.example")], anna) is None
    assert owner_problem(None, anna) == "no Dynamics user with email 'anna.virtanen@university.example'"
    bruno = ContactOwner(email="bruno.costa@university.example")
    assert owner_problem(USERS[("email", "bruno.costa@university.example")], bruno) == (
        "the Dynamics user with email 'bruno.costa@university.example' is disabled"
    )
    app = ContactOwner(email="app@university.example")
    assert "is the application user" in (owner_problem(USERS[("email", "app@university.example")], app) or "")
    caller = {"systemuserid": "X", "fullname": "Sync"}
    assert "is the application user" in (owner_problem(caller, app, caller_id="x") or "")
    system = ContactOwner(id="00000000-0000-0000-0000-000000000002")
    assert "built-in SYSTEM user" in (owner_problem({"systemuserid": "S", "fullname": "SYSTEM"}, system) or "")


def test_resolve_checks_every_owner_once_and_names_the_setting() -> None:
    calls: list[Any] = []
    rules = [*RULES[:2], {"when": {"citizenship": ["NO"]}, "owner": EVA}]
    ids, errors = resolve_owners(settings(rules), find_in(USERS, calls))
    assert ids.default == "A" and ids.rules == [None, "E", "E"]
    assert errors == ["owner_rules[0].owner: the Dynamics user with email 'bruno.costa@university.example' is disabled"]
    assert len(calls) == 3  # Eva looked up once for two rules

    calls.clear()
    s = parse_settings({"data_mapping": MAPPING, "contact_owner": {"email": "nobody@university.example"}})
    ids, errors = resolve_owners(s, find_in(USERS, calls))
    assert ids.default is None
    assert errors == ["contact_owner: no Dynamics user with email 'nobody@university.example'"]
    assert OwnerIds.from_json(None, default="A").to_json() == {"default": "A", "rules": []}
