"""The sync's settings file: load, validate, explain.

The file mirrors DreamApply's own Dynamics 365 settings form (data mapping, consent, "send all new
applicants automatically" + contact owner, "update applicant records automatically", technical contact)
plus what a production tool needs (connections, journal events, fit policy, dedupe, lead-stage rules,
timezone). Every key is documented in ``docs/settings.md``; the default is
``include/mappings/settings.yaml``.

Where the file is found (first hit wins): the ``path`` argument, the ``D365_SYNC_SETTINGS`` environment
variable, ``<repo>/include/mappings/settings.yaml`` (located from this file), then
``/opt/airflow/include/mappings/settings.yaml`` (the docker image).

Validation is strict: unknown keys fail with their full path (``data_mapping.firstname.formt: unknown
key; did you mean 'format'?``), duplicate YAML keys fail, and cross-field rules (contact owner required
when sending all new applicants, source names, template placeholders, formats that fit the source) are
checked here. Checks that need the live lead metadata are in ``fit.check_mapping``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, StrictBool, ValidationError, field_validator, model_validator

from d365.pipeline.fields import QUALITY_FIELDS, SOURCE_FIELDS
from d365.pipeline.settings_base import (
    LOGICAL_NAME,
    Fraction,
    LogicalName,
    _check_email,
    _check_timezone,
    _close,
    _Model,
    check_logical_name,
)
from d365.pipeline.settings_base import _scalar_kinds as _scalar_kinds  # the tests check every section's keys with it
from d365.pipeline.settings_mapping import PLACEHOLDER, FieldMapping, Format, Scalar, template_placeholders
from d365.pipeline.settings_sections import (
    DEFAULT_DELETION_EVENTS,
    DEFAULT_IDENTITY,
    DEFAULT_JOURNAL_EVENTS,
    DEFAULT_WITHDRAWAL_FLAGS,
    OWNER_RULE_FIELDS,
    AlertSettings,
    ConsentRef,
    ConsentSettings,
    ContactOwner,
    DedupeSettings,
    DreamApplySettings,
    DynamicsSettings,
    ErasureSettings,
    EstimateSettings,
    FitOverride,
    FitPolicySettings,
    LeadStageSettings,
    OwnerRule,
    ParkingSettings,
    PauseSettings,
    QualitySettings,
    ReconcileSettings,
    RetentionSettings,
    resolve_consents,
)

# The settings' public names, wherever they are defined (settings_base, settings_sections, settings_mapping):
# callers import them from here.
__all__ = [
    "DEFAULT_DELETION_EVENTS",
    "DEFAULT_IDENTITY",
    "DEFAULT_JOURNAL_EVENTS",
    "DEFAULT_WITHDRAWAL_FLAGS",
    "DOCKER_SETTINGS",
    "ENV_VAR",
    "LOGICAL_NAME",
    "OWNER_RULE_FIELDS",
    "PLACEHOLDER",
    "QUALITY_FIELDS",
    "REPO_ROOT",
    "REPO_SETTINGS",
    "SOURCE_FIELDS",
    "AlertSettings",
    "ConsentRef",
    "ConsentSettings",
    "ContactOwner",
    "DedupeSettings",
    "DreamApplySettings",
    "DynamicsSettings",
    "ErasureSettings",
    "EstimateSettings",
    "FieldMapping",
    "FitOverride",
    "FitPolicySettings",
    "Format",
    "Fraction",
    "LeadStageSettings",
    "LogicalName",
    "OwnerRule",
    "ParkingSettings",
    "PauseSettings",
    "QualitySettings",
    "ReconcileSettings",
    "RetentionSettings",
    "Scalar",
    "Settings",
    "SettingsError",
    "available_source_fields",
    "check_logical_name",
    "friendly_errors",
    "load_settings",
    "parse_settings",
    "resolve_consents",
    "settings_path",
    "template_placeholders",
]

ENV_VAR = "D365_SYNC_SETTINGS"
REPO_ROOT = Path(__file__).resolve().parents[3]
REPO_SETTINGS = REPO_ROOT / "include" / "mappings" / "settings.yaml"
DOCKER_SETTINGS = Path("/opt/airflow/include/mappings/settings.yaml")


class SettingsError(ValueError):
    """The settings file is missing, unreadable or invalid. ``errors`` lists one line per problem."""

    def __init__(self, message: str, errors: Iterable[str] = (), path: Path | None = None) -> None:
        self.errors = list(errors)
        self.path = path
        text = message
        if self.errors:
            text += "\n" + "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(text)


class Settings(_Model):
    version: Literal[1] = 1
    dynamics: DynamicsSettings = Field(default_factory=DynamicsSettings)
    dreamapply: DreamApplySettings = Field(default_factory=DreamApplySettings)
    data_mapping: dict[str, FieldMapping]
    consent: ConsentSettings = Field(default_factory=ConsentSettings)
    send_all_new: StrictBool = False
    automatic_updates: StrictBool = False
    contact_owner: ContactOwner | None = None
    owner_rules: tuple[OwnerRule, ...] = ()
    technical_contact: str | None = None
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    pause: PauseSettings = Field(default_factory=PauseSettings)
    parking: ParkingSettings = Field(default_factory=ParkingSettings)
    fit_policy: FitPolicySettings = Field(default_factory=FitPolicySettings)
    dedupe: DedupeSettings = Field(default_factory=DedupeSettings)
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    estimate: EstimateSettings = Field(default_factory=EstimateSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    erasure: ErasureSettings = Field(default_factory=ErasureSettings)
    lead_stage: LeadStageSettings = Field(default_factory=LeadStageSettings)
    timezone: str = "UTC"

    @field_validator("technical_contact")
    @classmethod
    def _contact(cls, value: str | None) -> str | None:
        return None if value is None else _check_email(value)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        return _check_timezone(value)

    @field_validator("data_mapping")
    @classmethod
    def _mapping(cls, value: dict[str, FieldMapping]) -> dict[str, FieldMapping]:
        if not value:
            raise ValueError("map at least one lead attribute")
        for attribute in value:
            check_logical_name(attribute)
        return value

    @model_validator(mode="after")
    def _rules(self) -> Settings:
        if self.send_all_new and self.contact_owner is None:
            raise ValueError("contact_owner is required when send_all_new is true (the owner of created leads)")
        if self.owner_rules and self.contact_owner is None:
            raise ValueError("owner_rules need contact_owner (the owner when no rule matches)")
        key = self.dynamics.alternate_key
        entry = self.data_mapping.get(key) if key else None
        if entry is not None and (entry.source != "applicant.id" or entry.fallback):
            raise ValueError(f"data_mapping.{key}: the alternate key column must map applicant.id (or be left out)")
        column = self.dynamics.instance_column
        entry = self.data_mapping.get(column) if column else None
        if entry is not None and entry.source != "dreamapply.instance":
            raise ValueError(f"data_mapping.{column}: the instance column must be mapped to dreamapply.instance")
        for attribute in self.fit_policy.overrides:
            if attribute not in self.data_mapping:
                raise ValueError(f"fit_policy.overrides.{attribute}: attribute is not in data_mapping")
        return self

    # -- helpers -----------------------------------------------------------------------------------

    def source_fields(self) -> list[str]:
        """Sorted source field names this configuration reads (extract can skip what nobody reads)."""
        used: set[str] = set()
        for entry in self.data_mapping.values():
            used.update(entry.reads())
        if self.dynamics.alternate_key:
            used.add("applicant.id")
        if self.dynamics.instance_column:
            used.add("dreamapply.instance")
        return sorted(used)

    def too_long_policy(self, attribute: str) -> Literal["truncate", "quarantine"]:
        """Mapping entry's ``max_length_policy`` > ``fit_policy.overrides`` > ``fit_policy.too_long``.
        The identity columns (alternate key, instance column) are never truncated."""
        if attribute in (self.dynamics.alternate_key, self.dynamics.instance_column):
            return "quarantine"
        entry = self.data_mapping.get(attribute)
        if entry is not None and entry.max_length_policy:
            return entry.max_length_policy
        override = self.fit_policy.overrides.get(attribute)
        if override is not None:
            return override.too_long
        return self.fit_policy.too_long


def available_source_fields() -> dict[str, str]:
    """Every source field name with its description (the table in docs/settings.md)."""
    return {f.name: f.description for f in SOURCE_FIELDS.values()}


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in result:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1}, column {mark.column + 1})", mark
            )
        result[key] = loader.construct_object(value_node, deep=deep)
    return result


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def settings_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The settings file to use: explicit argument, then $D365_SYNC_SETTINGS, then the repo's default,
    then the docker image's. Raises SettingsError naming the places searched."""
    if path is not None:
        candidate = Path(path).expanduser()
        if not candidate.is_file():
            raise SettingsError(f"settings file not found: {candidate}")
        return candidate
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        candidate = Path(env).expanduser()
        if not candidate.is_file():
            raise SettingsError(f"settings file not found: {candidate} (from ${ENV_VAR})")
        return candidate
    for candidate in (REPO_SETTINGS, DOCKER_SETTINGS):
        if candidate.is_file():
            return candidate
    raise SettingsError(
        f"no settings file: set ${ENV_VAR} or create one of: {REPO_SETTINGS}, {DOCKER_SETTINGS}",
    )


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


_ALL_KEYS: set[str] = set()


def _known_keys() -> set[str]:
    if not _ALL_KEYS:
        for model in (
            Settings,
            DynamicsSettings,
            DreamApplySettings,
            ConsentSettings,
            ConsentRef,
            ContactOwner,
            OwnerRule,
            FitPolicySettings,
            FitOverride,
            DedupeSettings,
            ReconcileSettings,
            RetentionSettings,
            QualitySettings,
            LeadStageSettings,
            FieldMapping,
            AlertSettings,
            PauseSettings,
            ParkingSettings,
        ):
            _ALL_KEYS.update(model.model_fields)
    return _ALL_KEYS


def friendly_errors(exc: ValidationError) -> list[str]:
    """One readable line per pydantic error, prefixed with the key's dotted path."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        kind = err.get("type", "")
        msg = str(err.get("msg", ""))
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            lines.append(f"{_loc(loc)}: unknown key{_close(key, _known_keys())}")
            continue
        if kind == "missing":
            lines.append(f"{_loc(loc)}: required key is missing")
            continue
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        # pydantic adds the function name of a before-validator, and "[key]" for a bad mapping key, to the path
        loc = tuple(p for p in loc if not (isinstance(p, str) and (p.startswith("function-") or p == "[key]")))
        value = err.get("input")
        if kind not in ("value_error", "assertion_error") and isinstance(value, str | int | float):
            msg += f" (got {value!r})"
        lines.append(f"{_loc(loc)}: {msg}")
    return lines


def parse_settings(data: Any, *, source: str = "settings") -> Settings:
    """Validate already-parsed settings data (a mapping)."""
    if not isinstance(data, Mapping):
        raise SettingsError(f"{source}: the settings must be a mapping of keys, got {type(data).__name__}")
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as exc:
        raise SettingsError(f"{source}: invalid settings", friendly_errors(exc)) from None


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Find (see ``settings_path``), parse and validate the settings file."""
    found = settings_path(path)
    try:
        text = found.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{found}: cannot read settings ({exc})", path=found) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SettingsError(f"{found}: not valid YAML", [str(exc).replace("\n", " ")], path=found) from None
    if data is None:
        raise SettingsError(f"{found}: the settings file is empty", path=found)
    try:
        return parse_settings(data, source=str(found))
    except SettingsError as exc:
        exc.path = found
        raise
