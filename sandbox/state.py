"""The shared state of one sandbox: configuration, endpoints, clock, logs, faults, tokens and the two data stores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.clock import SandboxClock
from sandbox.config import SandboxConfig
from sandbox.entra.apps import AppRegistry
from sandbox.entra.tokens import TokenIssuer
from sandbox.faults import FaultInjector
from sandbox.requestlog import RequestLog
from sandbox.tls import SandboxTLS


@dataclass(frozen=True)
class Endpoints:
    login_url: str
    org_url: str
    dreamapply_url: str
    admin_url: str
    tenant_id: str

    @property
    def authority(self) -> str:
        return f"{self.login_url}/{self.tenant_id}"

    @property
    def web_api_url(self) -> str:
        return f"{self.org_url}/api/data/v9.2"

    @property
    def dreamapply_api_url(self) -> str:
        return f"{self.dreamapply_url}/api/v9"


@dataclass
class SandboxState:
    config: SandboxConfig
    endpoints: Endpoints
    tls: SandboxTLS
    clock: SandboxClock = field(default_factory=SandboxClock)
    request_log: RequestLog = field(init=False)
    faults: FaultInjector = field(default_factory=FaultInjector)
    tokens: TokenIssuer = field(init=False)
    # The tenant's app registrations (the sandbox app, then ``config.extra_app_users`` more), one application user each.
    apps: AppRegistry = field(init=False)
    # Filled in by the domain packages (sandbox.dreamapply, sandbox.dataverse) at start-up.
    dreamapply: Any = None
    dataverse: Any = None
    # Called with (user, retry_after_seconds) when a fault rule injects a Dataverse 429, so the
    # penalty is enforced like a real one.
    on_injected_throttle: Callable[[str | None, float], None] | None = None

    @property
    def application_user_id(self) -> str:
        """The systemuserid of the Dataverse application user bound to the sandbox app registration (user 1)."""
        return self.apps.primary.user_id

    def __post_init__(self) -> None:
        self.request_log = RequestLog(self.config.request_log_size)
        self.apps = AppRegistry(self.config)
        self.tokens = TokenIssuer(
            tenant_id=self.config.tenant_id,
            issuer_url=f"{self.endpoints.login_url}/{self.config.tenant_id}/v2.0",
            lifetime_seconds=self.config.token_lifetime_seconds,
        )
