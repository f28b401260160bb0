"""Every knob of the sandbox in one place, so the CLI, tests and benchmarks size it the same way."""

from __future__ import annotations

import dataclasses
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# Fixed, documented sandbox identities. They are not secrets: they only open the local sandbox.
SANDBOX_TENANT_ID = "6f0c2a1e-5b7d-4c1a-9e3f-2d8b7a6c5e4f"
SANDBOX_CLIENT_ID = "0b8d3f7e-1c2a-4e5b-8f9d-7a6c5b4e3d2c"
SANDBOX_CLIENT_SECRET = "sandbox-client-secret-do-not-use-in-production"
SANDBOX_DREAMAPPLY_API_KEY = "sandbox-dreamapply-api-key-0123456789abcdef"


def extra_app_user(number: int) -> tuple[str, str]:
    """(client id, client secret) of the sandbox's extra application user ``number`` (2, 3, ...): deterministic,
    documented and not secret, like ``SANDBOX_CLIENT_ID``; they only open the local sandbox."""
    if number < 2:
        raise ValueError("extra application users are numbered from 2 (user 1 is SANDBOX_CLIENT_ID)")
    client_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-extra-app-user:{number}"))
    return client_id, f"sandbox-client-secret-user{number}-do-not-use-in-production"


# Web API route names the lead table's entity set must not shadow.
RESERVED_ROUTES = frozenset(
    {"systemusers", "teams", "sdkmessagefilters", "EntityDefinitions", "WhoAmI", "RetrieveVersion", "InsertOptionValue"}
    | {"PublishXml", "PublishAllXml", "BulkDelete", "$metadata", "$batch"}
)

# The bulk messages a table may support (sdkmessagefilters); DeleteMultiple is for elastic tables only.
BULK_MESSAGES = frozenset({"CreateMultiple", "UpdateMultiple", "UpsertMultiple"})


def valid_entity_set_name(name: str) -> bool:
    """An OData identifier that no other sandbox route answers to."""
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name)) and name not in RESERVED_ROUTES


@dataclass
class ServiceProtectionLimits:
    """Dataverse per-user service-protection limits over a sliding window (defaults as documented)."""

    window_seconds: float = 300.0
    max_requests: int = 6000
    max_execution_ms: float = 1_200_000.0
    max_concurrent: int = 52
    # Retry-After given on the first 429 of a penalty; doubled (up to the cap) while the client keeps sending.
    retry_after_seconds: float = 5.0
    retry_after_max_seconds: float = 300.0
    dop_hint: int = 48


@dataclass
class SandboxConfig:
    host: str = "127.0.0.1"
    # 0 asks the OS for a free port; the chosen ports are written to the state file.
    login_port: int = 8443
    dataverse_port: int = 8444
    dreamapply_port: int = 8445
    admin_port: int = 8446
    # Where the CA bundle and sandbox.json (endpoints, credentials) are written.
    state_dir: Path = field(default_factory=lambda: Path(".sandbox"))

    # Synthetic data
    applicants: int = 200
    seed: int = 42

    # Identities
    tenant_id: str = SANDBOX_TENANT_ID
    client_id: str = SANDBOX_CLIENT_ID
    client_secret: str = SANDBOX_CLIENT_SECRET
    dreamapply_api_key: str = SANDBOX_DREAMAPPLY_API_KEY
    # More application users of the same tenant and org (users 2..1+n, ``extra_app_user``): each gets tokens with
    # its own object id, is an enabled application user with a role, and is metered on its own.
    extra_app_users: int = 0

    # Entra ID
    token_lifetime_seconds: int = 3599

    # DreamApply
    dreamapply_requests_per_minute: int = 180

    # Dataverse
    limits: ServiceProtectionLimits = field(default_factory=ServiceProtectionLimits)
    # Simulated server time: a fixed cost per HTTP request plus a cost per operation it carries
    # (a $batch of 100 upserts costs request_latency_ms + 100 * operation_ms). Both are really
    # awaited, so they also count as execution time for service protection.
    request_latency_ms: float = 0.0
    operation_ms: float = 0.0
    # The DreamApply-applicant-ID alternate key exists at start in Pending state and turns Active
    # after this many seconds (0: Active at once; negative: no key defined at all).
    alternate_key_activation_seconds: float = 0.0
    # The lead table's entity set name (metadata ``EntitySetName`` and the Web API route): ``leads`` in a stock
    # org; another name stands for an org where it differs, so a client must use what the metadata says.
    lead_entity_set: str = "leads"
    # Keep at most this many request-log entries (oldest dropped first).
    request_log_size: int = 500_000
    # Bulk messages the org offers on the lead table: the sdkmessagefilters rows it serves and the
    # ``leads/Microsoft.Dynamics.CRM.<Message>`` actions it runs (any other → 400 0x80040800). Empty: an org
    # without bulk support for lead. Names: CreateMultiple, UpdateMultiple, UpsertMultiple.
    lead_bulk_messages: tuple[str, ...] = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
    # Simulated server time of a bulk message, in units of ``operation_ms`` (an ASSUMPTION, not a measurement
    # of Dataverse; see sandbox/dataverse/protection.py): a fixed part per request plus a smaller part per
    # target than a single operation costs. With the defaults 100 upserts cost 1 + 100 * 0.25 = 26 operations
    # where a $batch of them costs 100 (Microsoft's illustrative sample: 1 s against 4 s).
    bulk_request_operations: float = 1.0
    bulk_target_operations: float = 0.25

    def __post_init__(self) -> None:
        if not 0 <= self.extra_app_users <= 50:
            raise ValueError("extra_app_users must be between 0 and 50")
        if not valid_entity_set_name(self.lead_entity_set):
            raise ValueError(f"lead_entity_set {self.lead_entity_set!r} is not a usable entity set name")
        unknown = set(self.lead_bulk_messages) - BULK_MESSAGES
        if unknown:
            raise ValueError(f"lead_bulk_messages: unknown {sorted(unknown)}; choose from {sorted(BULK_MESSAGES)}")
        if self.bulk_request_operations < 0 or self.bulk_target_operations < 0:
            raise ValueError("bulk_request_operations and bulk_target_operations must not be negative")

    def replace(self, **changes: object) -> SandboxConfig:
        return dataclasses.replace(self, **changes)
