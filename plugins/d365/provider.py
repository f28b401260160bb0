"""Airflow provider metadata: registers the ``dynamics365`` and ``dreamapply`` connection types.

Loaded through the ``apache_airflow_provider`` entry point declared in ``pyproject.toml``. The connection
form fields are declared here (``conn-fields``/``ui-field-behaviour``, the Airflow 3.2+ way), so the UI
shows what a DreamApply admin already knows from DreamApply's own Dynamics settings form.
"""

from __future__ import annotations

from typing import Any


def _transport_fields(sandbox_allows: str) -> dict[str, Any]:
    """The extras both connection types share: TLS trust, the Retry-After cap and the sandbox flag."""
    return {
        "ca_bundle": {
            "label": "CA bundle path",
            "description": "Optional: PEM file to verify TLS against (the local sandbox's CA).",
            "schema": {"type": ["string", "null"]},
        },
        "retry_after_max_seconds": {
            "label": "Longest Retry-After wait (s)",
            "description": "Optional: a server asking for a longer wait gets this (default 300).",
            "schema": {"type": ["number", "null"]},
        },
        "sandbox": {
            "label": "Sandbox",
            "description": f"Only for a local test stand-in: allows {sandbox_allows}, which are refused otherwise.",
            "schema": {"type": ["boolean", "null"]},
        },
    }


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "dreamapply-d365-sync",
        "name": "DreamApply to Dynamics 365",
        "description": "Export DreamApply applicants to Microsoft Dynamics 365 leads.",
        "versions": ["0.1.0"],
        "connection-types": [
            {
                "hook-class-name": "d365.hooks.dynamics.DynamicsHook",
                "hook-name": "Dynamics 365",
                "connection-type": "dynamics365",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "extra"],
                    "relabeling": {
                        "host": "Organization URL",
                        "login": "Application (client) ID",
                        "password": "Application Secret",
                    },
                    "placeholders": {
                        "host": "https://org123abcd.crm4.dynamics.com",
                        "login": "00000000-0000-0000-0000-000000000000",
                    },
                },
                "conn-fields": {
                    "tenant_id": {
                        "label": "Tenant ID",
                        "description": "Optional: discovered from the organization URL when empty.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "authority_host": {
                        "label": "Authority host",
                        "description": "Optional: a Microsoft login host (https://login.microsoftonline.com unless "
                        "a national cloud, e.g. https://login.microsoftonline.us). Another host only with Sandbox.",
                        "schema": {"type": ["string", "null"]},
                    },
                    **_transport_fields("a custom authority host, http:// and verify: false"),
                },
            },
            {
                "hook-class-name": "d365.hooks.dreamapply.DreamApplyHook",
                "hook-name": "DreamApply",
                "connection-type": "dreamapply",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "extra"],
                    "relabeling": {"host": "DreamApply instance URL", "password": "API key"},
                    "placeholders": {"host": "https://apply.example.edu"},
                },
                "conn-fields": {
                    "requests_per_minute": {
                        "label": "Requests per minute",
                        "description": "The key's quota (DreamApply's default is 180).",
                        "schema": {"type": ["integer", "null"]},
                    },
                    **_transport_fields("http:// and verify: false"),
                },
            },
        ],
    }
