"""The settings sections other than the data mapping: connections, journal events, consent, owners, fit
policy, quality, erasure, alerts, pause, parking, reconcile, retention, dedupe and lead-stage rules. Each key is
documented in ``docs/settings.md``."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, field_validator, model_validator

from d365.pipeline.fields import DEFAULT_POLICIES, QUALITY_FIELDS, SOURCE_FIELDS, FieldPolicy
from d365.pipeline.lead_stage import DEFAULT_RULES, StageRules
from d365.pipeline.settings_base import Fraction, LogicalName, _check_email, _close, _Model

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


class DynamicsSettings(_Model):
    connection_id: str = "dynamics365_default"
    entity: LogicalName = "lead"
    alternate_key: LogicalName | None = "uni_applicantid"
    instance_column: LogicalName | None = "uni_dreamapplyinstance"
    # Upserts go as UpsertMultiple where preflight finds the org supports it for the table (a group that fails as
    # a whole is sent again as $batch with continue-on-error); false: always $batch.
    bulk_messages: StrictBool = True


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


class EstimateSettings(_Model):
    """The dry run's estimate of the load time (``d365.pipeline.estimate``). The server time one write adds
    cannot be measured without writing: it is an assumption an org corrects here (plug-ins and workflows on the
    lead table raise it)."""

    record_ms: StrictInt | StrictFloat = Field(10, ge=0, le=10_000)


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
