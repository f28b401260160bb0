"""Local, faithful stand-ins for DreamApply API v9, Dynamics 365 (Dataverse Web API v9.2) and Entra ID.

Everything the sync talks to in tests, benchmarks and the default run lives here. Start it with
``python -m sandbox serve`` or, in-process, with :class:`sandbox.runner.Sandbox`.
"""

from sandbox.config import SandboxConfig, ServiceProtectionLimits
from sandbox.runner import Sandbox

__all__ = ["Sandbox", "SandboxConfig", "ServiceProtectionLimits"]
