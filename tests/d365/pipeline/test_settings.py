"""Settings file: the default loads and fits the sandbox; mistakes fail with the key's path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from d365.pipeline import settings as settings_mod
from d365.pipeline.fit import LeadSchema, check_mapping, mapping_warnings
from d365.pipeline.mapping import SOURCE_GETTERS
from d365.pipeline.settings import (
    ENV_VAR,
    REPO_SETTINGS,
    SOURCE_FIELDS,
    ConsentRef,
    SettingsError,
    load_settings,
    parse_settings,
    resolve_consents,
    settings_path,
)

REPO = Path(__file__).resolve().parents[3]
DOCS = REPO / "docs" / "settings.md"
MINIMAL = {"data_mapping": {"lastname": "applicant.name.family"}}


def errors_of(data: dict) -> list[str]:
    with pytest.raises(SettingsError) as info:
        parse_settings(data)
    return info.value.errors


def with_(**extra: object) -> dict:
    return {**MINIMAL, **extra}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


# -- the default file -------------------------------------------------------------------------------


def test_default_settings_load_and_fit_the_sandbox_schema() -> None:
    s = load_settings()
    assert s.send_all_new and s.automatic_updates
    assert s.contact_owner is not None and s.contact_owner.by == "email"
    assert s.contact_owner.value == "anna.virtanen@university.example"
    assert [r.id for r in s.consent.required] == [1]
    schema = LeadSchema.from_metadata_json()
    assert check_mapping(s, schema) == []
    assert mapping_warnings(s, schema) == []


def test_default_settings_map_every_field_the_seed_lists() -> None:
    s = load_settings()
    used = set(s.source_fields())
    seed = {
        "applicant.id",
        "applicant.name.full",  # "name" (lastname fallback)
        "applicant.name.given",
        "applicant.name.family",
        "applicant.email",
        "applicant.phone",
        "applicant.registered",
        "applicant.citizenship",
        "applicant.reference",
        "applicant.matriculation",
        "lead.stage",
        "lead.stage_changed",
        "programme.ids",
        "term.name",
        "term.year",
        "term.type",
        "term.start",
    }
    assert seed <= used
    assert "subject" in s.data_mapping and s.data_mapping["subject"].form == "template"


def test_contact_owner_is_an_enabled_sandbox_user() -> None:
    from sandbox.dataverse.users import build_users
    from sandbox.entra.apps import AppUser

    users = build_users([AppUser(1, "client", "secret")])
    enabled = {u["internalemailaddress"] for u in users if not u["isdisabled"] and u["applicationid"] is None}
    assert load_settings().contact_owner.value in enabled


def test_default_consent_ids_match_the_sandbox_catalog() -> None:
    from sandbox.data.catalog import CONSENTS

    consents = {str(i + 1): {"id": i + 1, "type": t, "text": text} for i, (t, text, _) in enumerate(CONSENTS)}
    ids, errors = load_settings().consent.resolve(consents)
    assert (ids, errors) == ({1}, [])
    assert consents["1"]["type"] == "Mandatory" and "privacy policy" in consents["1"]["text"]


def test_source_registry_and_getters_match() -> None:
    assert set(SOURCE_FIELDS) == set(SOURCE_GETTERS)


def test_every_key_and_source_field_is_documented() -> None:
    doc = DOCS.read_text(encoding="utf-8")
    for name in SOURCE_FIELDS:
        assert f"`{name}`" in doc, name
    models = [
        settings_mod.Settings,
        settings_mod.DynamicsSettings,
        settings_mod.DreamApplySettings,
        settings_mod.ConsentSettings,
        settings_mod.ContactOwner,
        settings_mod.FitPolicySettings,
        settings_mod.DedupeSettings,
        settings_mod.LeadStageSettings,
        settings_mod.FieldMapping,
    ]
    for model in models:
        for key in model.model_fields:
            assert f"`{key}`" in doc, f"{model.__name__}.{key} is not documented"


# -- typos and rules ---------------------------------------------------------------------------------


def test_typo_in_nested_key_names_the_path_and_suggests() -> None:
    errs = errors_of({"data_mapping": {"firstname": {"source": "applicant.name.given", "formt": "text"}}})
    assert errs == ["data_mapping.firstname.formt: unknown key; did you mean 'format'?"]


def test_typo_in_top_level_key() -> None:
    assert errors_of(with_(dynamcs={})) == ["dynamcs: unknown key; did you mean 'dynamics'?"]


def test_typo_in_section_key() -> None:
    errs = errors_of(with_(dynamics={"alternate_keys": "x"}))
    assert errs == ["dynamics.alternate_keys: unknown key; did you mean 'alternate_key'?"]


def test_unknown_source_suggests_the_close_name() -> None:
    (err,) = errors_of({"data_mapping": {"firstname": "applicant.name.givn"}})
    assert err.startswith("data_mapping.firstname: unknown source 'applicant.name.givn'")
    assert "did you mean 'applicant.name.given'" in err


def test_template_placeholders_are_checked() -> None:
    (err,) = errors_of({"data_mapping": {"subject": {"template": "Applicant {applicant.idd}"}}})
    assert "data_mapping.subject" in err and "{applicant.idd}" in err


def test_template_with_literal_braces_is_fine() -> None:
    s = parse_settings({"data_mapping": {"subject": {"template": "{{x}} {applicant.id}"}}})
    assert s.data_mapping["subject"].reads() == ["applicant.id"]


def test_contact_owner_required_when_send_all_new() -> None:
    (err,) = errors_of(with_(send_all_new=True))
    assert "contact_owner is required when send_all_new" in err
    ok = parse_settings(with_(send_all_new=True, contact_owner={"domainname": "bruno.costa@university.example"}))
    assert ok.contact_owner.by == "domainname"


def test_contact_owner_exactly_one_way() -> None:
    (err,) = errors_of(with_(contact_owner={"email": "a@example.com", "domainname": "a@example.com"}))
    assert err.startswith("contact_owner:") and "exactly one" in err
    (err,) = errors_of(with_(contact_owner={"id": "not-a-guid"}))
    assert err.startswith("contact_owner.id:")


def test_technical_contact_is_an_email() -> None:
    (err,) = errors_of(with_(technical_contact="it-team"))
    assert err.startswith("technical_contact:")
    assert parse_settings(with_(technical_contact="it@example.edu")).technical_contact == "it@example.edu"


def test_bad_types_and_values_show_what_was_given() -> None:
    errs = errors_of(with_(send_all_new="yes", timezone="Mars/Base", fit_policy={"too_long": "ellipsis"}))
    assert any(e.startswith("send_all_new:") and "'yes'" in e for e in errs)
    assert any(e.startswith("timezone:") and "Mars/Base" in e for e in errs)
    assert any(e.startswith("fit_policy.too_long:") and "'ellipsis'" in e for e in errs)


def test_format_must_fit_the_source() -> None:
    (err,) = errors_of({"data_mapping": {"mobilephone": {"source": "applicant.phone", "format": "date"}}})
    assert err.startswith("data_mapping.mobilephone: format 'date'")


def test_picklist_options_need_picklist_and_allowlist() -> None:
    (err,) = errors_of({"data_mapping": {"uni_leadstage": {"source": "lead.stage", "on_missing_option": "ignore"}}})
    assert "need 'picklist: true'" in err
    (err,) = errors_of(
        {"data_mapping": {"uni_leadstage": {"source": "lead.stage", "picklist": True, "on_missing_option": "add"}}}
    )
    assert "add_allowlist" in err


def test_exactly_one_source_form() -> None:
    (err,) = errors_of({"data_mapping": {"subject": {"source": "applicant.id", "constant": "x"}}})
    assert "exactly one of 'source', 'template' or 'constant'" in err
    s = parse_settings({"data_mapping": {"description": {"constant": None}}})
    assert s.data_mapping["description"].form == "constant"


def test_alternate_key_column_must_map_the_applicant_id() -> None:
    (err,) = errors_of({"data_mapping": {"uni_applicantid": "applicant.email"}})
    assert "uni_applicantid" in err and "applicant.id" in err


def test_consent_refs_by_id_or_text() -> None:
    s = parse_settings(with_(consent={"required": [1, {"text": "Privacy Policy"}]}))
    catalog = {"1": {"text": "x"}, "7": {"text": "I agree to the privacy policy."}}
    assert s.consent.resolve(catalog) == ({1, 7}, [])
    ids, errors = resolve_consents([ConsentRef(text="nothing like this")], catalog)
    assert ids == set() and "matches no consent" in errors[0]
    errs = errors_of(with_(consent={"required": [{"id": 1, "text": "x"}], "on_withdrawal": "erase"}))
    assert any(e.startswith("consent.required.0:") for e in errs)
    assert any(e.startswith("consent.on_withdrawal:") for e in errs)


def test_undecided_is_a_documented_constant() -> None:
    (err,) = errors_of(with_(consent={"undecided_counts_as": "given"}))
    assert err.startswith("consent.undecided_counts_as:")


def test_attribute_names_are_logical_names() -> None:
    (err,) = errors_of({"data_mapping": {"FirstName": "applicant.name.given"}})
    assert "'FirstName' is not a logical name" in err


def test_too_long_policy_precedence() -> None:
    s = parse_settings(
        {
            "data_mapping": {
                "firstname": {"source": "applicant.name.given", "max_length_policy": "quarantine"},
                "lastname": "applicant.name.family",
                "middlename": "applicant.name.middle",
            },
            "fit_policy": {"too_long": "truncate", "overrides": {"lastname": {"too_long": "quarantine"}}},
        }
    )
    assert s.too_long_policy("firstname") == "quarantine"
    assert s.too_long_policy("lastname") == "quarantine"
    assert s.too_long_policy("middlename") == "truncate"
    assert s.too_long_policy("uni_applicantid") == "quarantine"  # identity columns are never cut


def test_source_fields_lists_what_is_read() -> None:
    s = parse_settings(
        {
            "data_mapping": {
                "lastname": {"source": "applicant.name.family", "fallback": ["applicant.name.full"]},
                "subject": {"template": "{term.name} / {programme.name}"},
            }
        }
    )
    assert s.source_fields() == [
        "applicant.id",
        "applicant.name.family",
        "applicant.name.full",
        "dreamapply.instance",
        "programme.name",
        "term.name",
    ]


# -- finding and reading the file --------------------------------------------------------------------


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_env_var_overrides_the_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    custom = write(tmp_path / "custom.yaml", with_(timezone="Europe/Helsinki"))
    monkeypatch.setenv(ENV_VAR, str(custom))
    assert settings_path() == custom
    assert load_settings().timezone == "Europe/Helsinki"


def test_explicit_path_beats_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(write(tmp_path / "env.yaml", with_(timezone="Europe/Riga"))))
    explicit = write(tmp_path / "explicit.yaml", with_(timezone="Europe/Vilnius"))
    assert load_settings(explicit).timezone == "Europe/Vilnius"


def test_default_path_is_the_repo_file() -> None:
    assert settings_path() == REPO_SETTINGS
    assert REPO_SETTINGS == REPO / "include" / "mappings" / "settings.yaml"


def test_missing_files_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "gone.yaml"))
    with pytest.raises(SettingsError, match=re.escape(f"${ENV_VAR}")):
        load_settings()


def test_no_file_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(settings_mod, "REPO_SETTINGS", tmp_path / "a.yaml")
    monkeypatch.setattr(settings_mod, "DOCKER_SETTINGS", tmp_path / "b.yaml")
    with pytest.raises(SettingsError, match=ENV_VAR):
        settings_path()


def test_duplicate_yaml_keys_fail(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("data_mapping:\n  firstname: applicant.name.given\n  firstname: applicant.name.family\n")
    with pytest.raises(SettingsError, match="duplicate key 'firstname'"):
        load_settings(path)


def test_broken_and_empty_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data_mapping: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(SettingsError, match="empty"):
        load_settings(empty)
    listed = write(tmp_path / "list.yaml", [1, 2])
    with pytest.raises(SettingsError, match="mapping of keys"):
        load_settings(listed)


def test_error_message_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "typo.yaml", {"data_mapping": {"firstname": {"sorce": "applicant.name.given"}}})
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    text = str(info.value)
    assert str(path) in text and "data_mapping.firstname.sorce: unknown key; did you mean 'source'?" in text
    assert info.value.path == path


# -- strict values: YAML types are kept, column names are logical names, every error names its key --------------

INJECTION = "emailaddress1') or (true"


def _sections() -> dict[str, type]:
    """Settings keys whose value is a section model (dynamics, quality, parking, ...), whoever added them."""
    out = {}
    for key, field in settings_mod.Settings.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, settings_mod._Model):
            out[key] = field.annotation
    return out


def _numeric_keys() -> list[tuple[str, str]]:
    keys = [("", "version")]
    for section, model in _sections().items():
        for key, field in model.model_fields.items():
            kinds = settings_mod._scalar_kinds(field.annotation)
            if kinds and kinds <= {"int", "float"}:
                keys.append((section, key))
    return keys


def _bool_keys() -> list[tuple[str, str]]:
    keys = [("", k) for k, f in settings_mod.Settings.model_fields.items() if f.annotation is bool]
    for section, model in _sections().items():
        keys += [
            (section, k) for k, f in model.model_fields.items() if settings_mod._scalar_kinds(f.annotation) == {"bool"}
        ]
    return keys


def _at(section: str, key: str, value: object) -> dict:
    return with_(**({section: {key: value}} if section else {key: value}))


@pytest.mark.parametrize(("section", "key"), _numeric_keys(), ids=lambda v: v or "top")
def test_booleans_and_quoted_text_are_not_numbers(section: str, key: str) -> None:
    path = f"{section}.{key}" if section else key
    for value, says in ((True, "true/false is not a number"), (False, "true/false is not a number"), ("1", "text")):
        errs = errors_of(_at(section, key, value))
        assert len(errs) == 1 and errs[0].startswith(f"{path}: ") and says in errs[0], (value, errs)


@pytest.mark.parametrize(("section", "key"), _bool_keys(), ids=lambda v: v or "top")
def test_numbers_are_not_booleans(section: str, key: str) -> None:
    path = f"{section}.{key}" if section else key
    for value in (1, 0, "yes"):
        errs = errors_of(_at(section, key, value))
        assert len(errs) == 1 and errs[0].startswith(f"{path}: "), (value, errs)


def test_the_quality_gate_cannot_be_switched_off_by_a_boolean() -> None:
    """``max_invalid_fraction: true`` was read as 1.0: the gate was off."""
    (err,) = errors_of(with_(quality={"max_invalid_fraction": True}))
    assert err == "quality.max_invalid_fraction: expected a number, got true (true/false is not a number)"
    assert parse_settings(with_(quality={"max_invalid_fraction": 1})).quality.max_invalid_fraction == 1.0


def test_fractions_lie_between_zero_and_one() -> None:
    fractions = [
        (section, key)
        for section, model in _sections().items()
        for key, field in model.model_fields.items()
        if key.endswith("_fraction") or key.endswith("_tolerance")
    ]
    assert ("quality", "max_invalid_fraction") in fractions and ("quality", "api_count_tolerance") in fractions
    for section, key in fractions:
        for bad in (-0.01, 1.01, float("nan"), float("inf")):
            (err,) = errors_of(_at(section, key, bad))
            assert err.startswith(f"{section}.{key}: "), err
        for good in (0, 0.5, 1):
            parse_settings(_at(section, key, good))


def test_whole_numbers_stay_whole() -> None:
    (err,) = errors_of(with_(pause={"window_minutes": 60.5}))
    assert err == "pause.window_minutes: expected a whole number, got 60.5"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (with_(dedupe={"email_column": INJECTION}), "dedupe.email_column"),
        (with_(dynamics={"alternate_key": INJECTION}), "dynamics.alternate_key"),
        (with_(dynamics={"instance_column": "Uni_DreamApplyInstance"}), "dynamics.instance_column"),
        (with_(dynamics={"entity": "lead$"}), "dynamics.entity"),
        (with_(consent={"withdrawal_flags": ["donotemail", "donotphone eq true"]}), "consent.withdrawal_flags.1"),
        (with_(fit_policy={"overrides": {INJECTION: {"too_long": "truncate"}}}), f"fit_policy.overrides.{INJECTION}"),
        ({"data_mapping": {INJECTION: "applicant.name.family"}}, "data_mapping"),
        ({"data_mapping": {"1stname": "applicant.name.given"}}, "data_mapping"),
        ({"data_mapping": {"a" * 51: "applicant.name.given"}}, "data_mapping"),
        ({"data_mapping": {"_firstname": "applicant.name.given"}}, "data_mapping"),
    ],
)
def test_column_names_are_dataverse_logical_names(data: dict, path: str) -> None:
    (err,) = errors_of(data)
    assert err.startswith(f"{path}: ") and "is not a logical name" in err and "at most 50 characters" in err, err


def test_logical_names_up_to_fifty_characters_pass() -> None:
    name = "uni_" + "x" * 46
    s = parse_settings(
        {
            "data_mapping": {name: "applicant.name.family", "lastname": "applicant.name.family"},
            "dynamics": {"alternate_key": None, "instance_column": "new_instance2"},
            "dedupe": {"email_column": "emailaddress2"},
            "consent": {"withdrawal_flags": ["donotemail"]},
            "fit_policy": {"overrides": {name: {"too_long": "quarantine"}}},
        }
    )
    assert len(name) == 50 and s.too_long_policy(name) == "quarantine"
    assert s.dynamics.alternate_key is None and s.dedupe.email_column == "emailaddress2"


def test_every_error_is_reported_with_its_key_at_once() -> None:
    errs = errors_of(
        with_(
            quality={"max_invalid_fraction": True, "max_drop_fraction": 2},
            dedupe={"email_column": INJECTION},
            send_all_new=1,
        )
    )
    assert sorted(e.split(":", 1)[0] for e in errs) == [
        "dedupe.email_column",
        "quality.max_drop_fraction",
        "quality.max_invalid_fraction",
        "send_all_new",
    ]


def test_constants_may_still_be_any_scalar() -> None:
    s = parse_settings({"data_mapping": {"donotemail": {"constant": True}, "lastname": {"constant": "x"}}})
    assert s.data_mapping["donotemail"].constant is True
