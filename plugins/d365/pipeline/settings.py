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

import difflib
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from d365.pipeline.fields import DEFAULT_POLICIES, QUALITY_FIELDS, SOURCE_FIELDS, FieldPolicy
from d365.pipeline.lead_stage import DEFAULT_RULES, StageRules

ENV_VAR = "D365_SYNC_SETTINGS"
REPO_ROOT = Path(__file__).resolve().parents[3]
REPO_SETTINGS = REPO_ROOT / "include" / "mappings" / "settings.yaml"
DOCKER_SETTINGS = Path("/opt/airflow/include/mappings/settings.yaml")


# The source fields a data_mapping entry may read, their kinds (validation here, type checks in
# fit.check_mapping) and the quality field names are views of the registry in fields.py.

Format = Literal["text", "date", "datetime_utc", "date_local", "e164", "country_name", "country_code"]
# which formats make sense for which source kind
_FORMATS_BY_KIND: dict[str, set[str]] = {
    "text": {"text"},
    "int": {"text"},
    "bool": {"text"},
    "list": {"text"},
    "date": {"text", "date", "date_local", "datetime_utc"},
    "datetime": {"text", "date", "date_local", "datetime_utc"},
    "phone": {"text", "e164"},
    "country": {"text", "country_code", "country_name"},
}
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

DEFAULT_JOURNAL_EVENTS: tuple[str, ...] = (
    "Applicant registered",
    "Applicant was collected",
    "Applicant was edited",
    "Applicant consent was changed",
    "Application was created",
    "Application was created by cloning",
    "Application was submitted",
    "Application was withdrawn",
    "Offer was edited: ?",
)
DEFAULT_DELETION_EVENTS: tuple[str, ...] = ("Applicant was deleted",)


def template_placeholders(template: str) -> list[str]:
    """Source names a template reads; ``{{`` and ``}}`` are literal braces."""
    return PLACEHOLDER.findall(template.replace("{{", "").replace("}}", ""))


class SettingsError(ValueError):
    """The settings file is missing, unreadable or invalid. ``errors`` lists one line per problem."""

    def __init__(self, message: str, errors: Iterable[str] = (), path: Path | None = None) -> None:
        self.errors = list(errors)
        self.path = path
        text = message
        if self.errors:
            text += "\n" + "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(text)


def _check_email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"{value!r} is not a valid e-mail address ({exc})") from None


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown timezone {value!r} (use an IANA name such as 'Europe/Tallinn' or 'UTC')") from None
    return value


def _close(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


# Dataverse logical names: lower-case SchemaNames (see /work/shared/reference/dataverse-web-api.md §3): a letter,
# then lower-case letters, digits and underscores; at most 50 characters. Column names from the settings go
# into URLs, $select and $filter: nothing else may pass.
LOGICAL_NAME = re.compile(r"[a-z][a-z0-9_]{0,49}")


def check_logical_name(value: str) -> str:
    """``value`` if it is a Dataverse logical name, else a ValueError saying the rule."""
    if not isinstance(value, str) or not LOGICAL_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a logical name (lower-case letters, digits and underscores, starting with a "
            "letter, at most 50 characters; e.g. 'firstname' or 'uni_applicantid')"
        )
    return value


# A column (or table) logical name in the settings.
LogicalName = Annotated[str, AfterValidator(check_logical_name)]
# A share between 0 and 1 (a YAML number; true/false or text is refused, see ``_Model``).
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


def _scalar_kinds(annotation: Any) -> set[str]:
    """The scalar kinds a field's type accepts: bool, int, float, str, or "other" (models, lists, Any)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _scalar_kinds(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return set().union(*(_scalar_kinds(arg) for arg in get_args(annotation)))
    if origin is Literal:
        return {type(v).__name__ for v in get_args(annotation)} & {"bool", "int", "float", "str"} or {"other"}
    if annotation is type(None):
        return set()
    if annotation in (bool, int, float, str):
        return {annotation.__name__}
    return {"other"}


def _strict_scalar(kinds: set[str], value: Any) -> Any:
    """Refuse what pydantic's lax mode would convert silently: true/false as a number, a number as true/false,
    a number written as text, a fraction where a whole number belongs."""
    if "other" in kinds or not kinds:
        return value
    numeric = kinds & {"int", "float"}
    if isinstance(value, bool):
        if "bool" not in kinds and numeric:
            raise ValueError(f"expected a number, got {str(value).lower()} (true/false is not a number)")
    elif isinstance(value, int | float):
        if "bool" in kinds and not numeric and "str" not in kinds:
            raise ValueError(f"expected true or false, got {value!r} (a number is not a boolean)")
        if isinstance(value, float) and kinds & {"int"} and not kinds & {"float"} and "str" not in kinds:
            raise ValueError(f"expected a whole number, got {value!r}")
    elif isinstance(value, str) and numeric and "str" not in kinds:
        raise ValueError(f"expected a number, got the text {value!r} (write numbers without quotes)")
    return value


class _Model(BaseModel):
    """Every settings section: unknown keys fail, and a value keeps its YAML type: true/false is never read as
    a number, a number never as true/false, quoted text never as a number (pydantic's lax mode would)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        return value if field is None else _strict_scalar(_scalar_kinds(field.annotation), value)


# --------------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------------


class DynamicsSettings(_Model):
    connection_id: str = "dynamics365_default"
    entity: LogicalName = "lead"
    alternate_key: LogicalName | None = "uni_applicantid"
    instance_column: LogicalName | None = "uni_dreamapplyinstance"


class DreamApplySettings(_Model):
    connection_id: str = "dreamapply_default"
    journal_events: tuple[str, ...] = DEFAULT_JOURNAL_EVENTS
    deletion_events: tuple[str, ...] = DEFAULT_DELETION_EVENTS
    page_size: StrictInt = Field(1000, ge=1, le=8192)

    @field_validator("journal_events")
    @classmethod
    def _events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one journal event")
        if any(not e.strip() for e in value):
            raise ValueError("event names must not be empty")
        if len(set(value)) != len(value):
            raise ValueError("event names are listed twice")
        return value


class ConsentRef(_Model):
    """A consent chosen by ``id`` or by ``text`` (case-insensitive substring of the definition text)."""

    id: StrictInt | None = Field(None, ge=1)
    text: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"id": data}
        return data

    @model_validator(mode="after")
    def _one(self) -> ConsentRef:
        if (self.id is None) == (self.text is None or not self.text.strip()):
            raise ValueError("give exactly one of 'id' or 'text'")
        return self

    def matches(self, consent_id: int, text: str | None) -> bool:
        if self.id is not None:
            return self.id == consent_id
        return bool(text) and (self.text or "").strip().casefold() in (text or "").casefold()

    def describe(self) -> str:
        return f"id {self.id}" if self.id is not None else f"text {self.text!r}"


def resolve_consents(refs: Iterable[ConsentRef], catalog_consents: Mapping[str, Any]) -> tuple[set[int], list[str]]:
    """Consent ids the refs select in the catalog, and one error per ref that selects nothing."""
    ids: set[int] = set()
    errors: list[str] = []
    for ref in refs:
        found = False
        for key, definition in (catalog_consents or {}).items():
            try:
                cid = int(key)
            except (TypeError, ValueError):
                continue
            text = definition.get("text") if isinstance(definition, Mapping) else None
            if ref.matches(cid, text):
                ids.add(cid)
                found = True
        if not found:
            errors.append(f"consent {ref.describe()} matches no consent definition in DreamApply")
    return ids, errors


DEFAULT_WITHDRAWAL_FLAGS = ("donotemail", "donotbulkemail", "donotphone", "donotpostalmail", "donotfax", "donotsendmm")


class ConsentSettings(_Model):
    required: tuple[ConsentRef, ...] = ()
    undecided_counts_as: Literal["not_given"] = "not_given"
    on_withdrawal: Literal["flag", "deactivate", "delete"] = "flag"
    # "flag": these Boolean lead columns are set to 1 (Do Not Allow); the lead is no longer updated.
    withdrawal_flags: tuple[LogicalName, ...] = DEFAULT_WITHDRAWAL_FLAGS

    def resolve(self, catalog_consents: Mapping[str, Any]) -> tuple[set[int], list[str]]:
        return resolve_consents(self.required, catalog_consents)


class ContactOwner(_Model):
    """Exactly one of ``email`` (internalemailaddress), ``domainname`` or ``id`` (systemuserid)."""

    email: str | None = None
    domainname: str | None = None
    id: str | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else _check_email(value)

    @field_validator("id")
    @classmethod
    def _guid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError(f"{value!r} is not a GUID (systemuserid)") from None

    @model_validator(mode="after")
    def _one(self) -> ContactOwner:
        given = [k for k in ("email", "domainname", "id") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of 'email', 'domainname' or 'id'")
        return self

    @property
    def by(self) -> str:
        return next(k for k in ("email", "domainname", "id") if getattr(self, k))

    @property
    def value(self) -> str:
        return str(getattr(self, self.by))


# Owner rule conditions: a short name (below) or any source field name (``programme.code``, ...).
OWNER_RULE_FIELDS: dict[str, str] = {
    "programme_code": "programme.code",
    "programme_codes": "programme.codes",
    "programme_id": "programme.id",
    "citizenship": "applicant.citizenship",
    "tracker_code": "tracker.code",
    "lead_stage": "lead.stage",
    "term_type": "term.type",
}


class OwnerRule(_Model):
    """``when`` every listed field has one of its values (case- and accent-insensitive), created leads are
    owned by ``owner``. Rules are tried in order; the first match wins; no match → ``contact_owner``."""

    when: dict[str, tuple[str, ...]]
    owner: ContactOwner

    @field_validator("when", mode="before")
    @classmethod
    def _scalars(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        out: dict[Any, Any] = {}
        for key, values in value.items():
            items = [values] if isinstance(values, str | int) and not isinstance(values, bool) else values
            if isinstance(items, list | tuple):
                items = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in items]
            out[key] = items
        return out

    @field_validator("when", mode="after")
    @classmethod
    def _fields(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        if not value:
            raise ValueError("give at least one condition (e.g. {citizenship: [FI, SE]})")
        names = [*OWNER_RULE_FIELDS, *SOURCE_FIELDS]
        for key, values in value.items():
            if key not in OWNER_RULE_FIELDS and key not in SOURCE_FIELDS:
                raise ValueError(f"unknown condition {key!r}{_close(key, names)} (a short name or a source field)")
            if not values or any(not str(v).strip() for v in values):
                raise ValueError(f"condition {key!r}: list at least one non-empty value")
        return value

    def sources(self) -> dict[str, tuple[str, ...]]:
        """Source field name → accepted values."""
        return {OWNER_RULE_FIELDS.get(k, k): v for k, v in self.when.items()}


class FitOverride(_Model):
    too_long: Literal["truncate", "quarantine"]


class FitPolicySettings(_Model):
    too_long: Literal["truncate", "quarantine"] = "truncate"
    wrong_type: Literal["quarantine"] = "quarantine"
    overrides: dict[LogicalName, FitOverride] = Field(default_factory=dict)


# The applicant fields a quality check can find invalid (quality.py): ``QUALITY_FIELDS`` (fields.py) maps
# their short names to the source field that reads them (``None``: the application dates, which feed the lead
# stage, not a column). ``quality.field_policy`` and ``quality.identity`` use these names.
DEFAULT_IDENTITY: tuple[tuple[str, ...], ...] = (("name_family", "name_full"), ("email", "phone"))


class QualitySettings(_Model):
    """Great Expectations checks on each extract (quality.py). An applicant is withheld (quarantined) only
    for its identity: not a record, no or a duplicated id, a malformed record, no usable identity
    (``identity``). Any other invalid value follows ``field_policy`` (default ``drop``). These batch-level
    limits fail the run before any write."""

    # More than this fraction of the extracted applicants invalid → the run stops before the load.
    max_invalid_fraction: Fraction = 0.25
    # The fraction applies only from this many rows on (a run with 3 applicants and 1 bad one is fine).
    min_rows_for_threshold: StrictInt = Field(20, ge=0)
    # A full extract may not shrink by more than this fraction against the previous full extract.
    max_drop_fraction: Fraction = 0.5
    # Compare a full extract's row count with DreamApply's X-Count (HEAD /applicants).
    check_api_count: StrictBool = True
    # The count may differ by this fraction of X-Count, rounded up (applicants registered during the run).
    api_count_tolerance: Fraction = 0.01
    # An applicant without a usable e-mail address is quarantined: the same as adding [email] to ``identity``
    # (false: sent without one; the lead allows it).
    quarantine_missing_email: StrictBool = False
    # Per field (QUALITY_FIELDS): what an invalid value does. drop (default) = the column is left out on
    # create and cleared (null) on update; send_as_entered = sent as typed when it fits the column, else
    # dropped; quarantine = the applicant is withheld.
    field_policy: dict[str, FieldPolicy] = Field(default_factory=dict)
    # Usable identity: every group needs one field that is present and passes its checks. Default: a family
    # or full name, and an e-mail or a phone. [] = only the applicant id is required.
    identity: tuple[tuple[str, ...], ...] = DEFAULT_IDENTITY
    # Region (ISO 3166-1 alpha-2, e.g. EE) for phones typed without a country code when the applicant's
    # citizenship does not give a valid number; None = the citizenship only.
    default_region: str | None = None

    @field_validator("field_policy")
    @classmethod
    def _policy_fields(cls, value: dict[str, FieldPolicy]) -> dict[str, FieldPolicy]:
        for name in value:
            if name not in QUALITY_FIELDS:
                known = ", ".join(QUALITY_FIELDS)
                raise ValueError(f"unknown field {name!r}{_close(name, QUALITY_FIELDS)} (fields: {known})")
        return value

    @field_validator("identity")
    @classmethod
    def _identity_fields(cls, value: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        for group in value:
            if not group:
                raise ValueError("each identity group lists at least one field")
            for name in group:
                if name not in QUALITY_FIELDS or name == "application_dates":
                    raise ValueError(f"unknown identity field {name!r}{_close(name, QUALITY_FIELDS)}")
        return value

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is None:
            return None
        import phonenumbers

        code = value.strip().upper()
        if code not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a region phonenumbers knows (an ISO 3166-1 alpha-2 code, e.g. 'EE')")
        return code

    def policy(self, field: str) -> FieldPolicy:
        """What an invalid value of ``field`` does (``field_policy``, else the field's default: ``drop``)."""
        return self.field_policy.get(field, DEFAULT_POLICIES.get(field, "drop"))

    def identity_groups(self) -> tuple[tuple[str, ...], ...]:
        """``identity`` plus ``[email]`` when ``quarantine_missing_email`` is on."""
        if self.quarantine_missing_email and ("email",) not in self.identity:
            return (*self.identity, ("email",))
        return self.identity


class ErasureSettings(_Model):
    """Applicants DreamApply purged with a request to be forgotten."""

    # delete the lead | anonymise it (personal columns cleared) | flag it (withdrawal flags, no more updates)
    action: Literal["delete", "anonymise", "flag"] = "delete"


class AlertSettings(_Model):
    """E-mails to ``technical_contact``: a task failure alert, one digest of record-level failures per run."""

    enabled: StrictBool = True
    # Airflow SMTP connection the mails go through (the smtp provider's SmtpNotifier / SmtpHook).
    smtp_conn_id: str = "smtp_default"
    # Sender; None: the connection's ``from_email`` extra, else ``d365-sync@localhost``.
    from_email: str | None = None
    # Send the per-run digest of record-level failures and quarantines.
    digest: StrictBool = True
    # At most this many applicant IDs listed per cause in the digest (the count is always complete).
    max_ids_per_cause: StrictInt = Field(200, ge=1)


class PauseSettings(_Model):
    """Automatic pause: more than ``max_irrecoverable_failures`` in ``window_minutes`` stop further loads."""

    enabled: StrictBool = True
    max_irrecoverable_failures: StrictInt = Field(20, ge=0)
    window_minutes: StrictInt = Field(60, ge=1)


class ParkingSettings(_Model):
    """A record that failed ``max_failed_runs`` runs in a row is parked: listed for a person, no longer re-sent
    until released (``python -m d365.parking release``). 0: never park."""

    max_failed_runs: StrictInt = Field(5, ge=0)


class ReconcileSettings(_Model):
    """The nightly reconciliation DAG (``reconcile_dreamapply_leads``): drift between the ledger and Dynamics."""

    # Leads deleted in the CRM are marked for re-send (ledger FAILED, reason "deleted in CRM"): the next sync
    # recreates them with the same deterministic lead id. False: reported only.
    recreate_deleted: StrictBool = False
    # More than this share of the checked leads read as deleted: nothing is marked, the run fails (a wrong read
    # of the CRM must not mark every lead deleted; a real mass deletion needs a person to look first).
    max_deleted_fraction: StrictInt | StrictFloat = Field(0.05, ge=0, le=1)


class RetentionSettings(_Model):
    """How long run folders (``D365_SYNC_RUN_ROOT``) are kept; enforced nightly (``d365.pipeline.retention``)."""

    # Files with personal data (extracts, transform/plan payloads, load results, quarantine, GX results):
    # deleted this many days after the run started.
    personal_days: StrictInt = Field(14, ge=1)
    # What is left (reports, quality summaries, counts: applicant ids, no personal data): the whole run folder
    # is deleted this many days after the run started.
    report_days: StrictInt = Field(400, ge=1)

    @model_validator(mode="after")
    def _order(self) -> RetentionSettings:
        if self.report_days < self.personal_days:
            raise ValueError("retention.report_days must be at least retention.personal_days")
        return self


class DedupeSettings(_Model):
    adopt_existing_by_email: StrictBool = True
    email_column: LogicalName = "emailaddress1"


class LeadStageSettings(_Model):
    rejected_offer_types: tuple[str, ...] = DEFAULT_RULES.rejected_offer_types
    pending_offer_types: tuple[str, ...] = DEFAULT_RULES.pending_offer_types
    enrolled_offer_types: tuple[str, ...] = DEFAULT_RULES.enrolled_offer_types
    applying_statuses: tuple[str, ...] = DEFAULT_RULES.applying_statuses
    submitted_statuses: tuple[str, ...] = DEFAULT_RULES.submitted_statuses
    withdrawn_statuses: tuple[str, ...] = DEFAULT_RULES.withdrawn_statuses
    closed_statuses: tuple[str, ...] = DEFAULT_RULES.closed_statuses

    def rules(self) -> StageRules:
        return StageRules(**{name: getattr(self, name) for name in type(self).model_fields})


Scalar = str | int | float | bool | None


class FieldMapping(_Model):
    """One lead attribute's source. A bare string in YAML is shorthand for ``{source: <string>}``."""

    source: str | None = None
    template: str | None = None
    constant: Scalar = None
    fallback: tuple[str, ...] = ()
    format: Format | None = None
    timezone: str | None = None
    separator: str = ","
    value_map: dict[str, Scalar] | None = None
    default: Scalar = None
    picklist: StrictBool = False
    on_missing_option: Literal["quarantine", "add", "ignore"] = "quarantine"
    add_allowlist: tuple[str, ...] = ()
    max_length_policy: Literal["truncate", "quarantine"] | None = None
    if_empty: Literal["null", "omit", "quarantine"] = "null"
    consents: tuple[ConsentRef, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"source": data}
        return data

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        return None if value is None else _check_timezone(value)

    @model_validator(mode="after")
    def _consistent(self) -> FieldMapping:
        forms = [f for f in ("source", "template", "constant") if f in self.model_fields_set]
        if self.source is None and "source" in forms:
            forms.remove("source")
        if self.template is None and "template" in forms:
            forms.remove("template")
        if len(forms) != 1:
            raise ValueError("give exactly one of 'source', 'template' or 'constant'")
        names = list(SOURCE_FIELDS)
        if self.source is not None and self.source not in SOURCE_FIELDS:
            hint = _close(self.source, names)
            if "{" in self.source:
                hint = "; to combine fields use {template: '...'}"
            raise ValueError(f"unknown source {self.source!r}{hint} (see docs/settings.md for the list)")
        for name in self.fallback:
            if name not in SOURCE_FIELDS:
                raise ValueError(f"unknown fallback source {name!r}{_close(name, names)}")
        if self.fallback and self.source is None:
            raise ValueError("'fallback' needs 'source'")
        if self.template is not None:
            for name in template_placeholders(self.template):
                if name.strip() not in SOURCE_FIELDS:
                    raise ValueError(f"template placeholder {{{name}}} is not a source field{_close(name, names)}")
        if self.format is not None and self.source is not None:
            kind = SOURCE_FIELDS[self.source].kind
            if self.format not in _FORMATS_BY_KIND[kind]:
                allowed = ", ".join(sorted(_FORMATS_BY_KIND[kind]))
                raise ValueError(f"format {self.format!r} does not apply to {self.source} (allowed: {allowed})")
        if self.format is not None and self.source is None and self.format != "text":
            raise ValueError(f"format {self.format!r} applies only to a 'source'")
        if self.consents is not None and self.source != "consent.given":
            raise ValueError("'consents' applies only to source consent.given")
        if not self.picklist and ("on_missing_option" in self.model_fields_set or self.add_allowlist):
            raise ValueError("'on_missing_option' and 'add_allowlist' need 'picklist: true'")
        if self.add_allowlist and self.on_missing_option != "add":
            raise ValueError("'add_allowlist' needs 'on_missing_option: add'")
        if self.on_missing_option == "add" and not self.add_allowlist:
            raise ValueError("'on_missing_option: add' needs 'add_allowlist' (the labels that may be added, or '*')")
        return self

    @property
    def form(self) -> Literal["source", "template", "constant"]:
        if self.source is not None:
            return "source"
        if self.template is not None:
            return "template"
        return "constant"

    def reads(self) -> list[str]:
        """The source fields this entry reads."""
        if self.source is not None:
            return [self.source, *self.fallback]
        if self.template is not None:
            return [n.strip() for n in template_placeholders(self.template)]
        return []


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
