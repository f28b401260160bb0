"""Where a connection may send its secret: TLS on, verified, unless the connection is explicitly a sandbox.

A connection's secret (the Entra client secret, the DreamApply API key) must only travel over verified TLS.
``verify: false`` in the extras or an ``http://`` URL would send it readable (or to anyone in the middle), so
both are refused, with a message naming the connection and the extra, unless the connection carries the
documented sandbox flag ``"sandbox": true`` (a local stand-in such as this project's sandbox, where the
secrets are fixed test values that open nothing else). The flag is a deliberate, visible choice per
connection; nothing else turns these checks off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

SANDBOX_EXTRA = "sandbox"

# An error class that takes (message, code=...): DynamicsAuthError or DreamApplyAuthError.
ErrorFactory = Callable[..., Exception]


def is_sandbox(extra: Mapping[str, Any] | None) -> bool:
    """True only for ``"sandbox": true`` (a JSON boolean, or the text ``true`` a form may store)."""
    value = (extra or {}).get(SANDBOX_EXTRA)
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() == "true"


def verify_from_extra(extra: Mapping[str, Any] | None) -> bool | str | None:
    """The ``verify`` extra as given: None (absent), a bool, or a CA bundle path."""
    value = (extra or {}).get("verify")
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() in ("false", "0", "no", "off"):
        return False
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    return text


def check_transport(
    conn_id: str,
    *,
    urls: Mapping[str, str | None],
    verify: bool | str | None,
    sandbox: bool,
    error: ErrorFactory,
) -> None:
    """Refuse ``http://`` URLs (``urls``: field name → URL) and ``verify: false`` unless ``sandbox``.

    The message names the connection and the field or extra concerned, never a secret.
    """
    if sandbox:
        return
    for field_name, url in urls.items():
        if url and urlsplit(url.strip()).scheme.lower() == "http":
            raise error(
                f"connection {conn_id!r}: {field_name} {url.strip()!r} is plain http; the secret would travel "
                f'unencrypted. Use https (or mark a local test connection with the extra "{SANDBOX_EXTRA}": true)',
                code="InsecureConnection",
            )
    if verify is False:
        raise error(
            f'connection {conn_id!r}: the extra "verify": false turns TLS verification off; the secret could go '
            f'to anyone in the middle. Remove it, or give a CA bundle in "ca_bundle" (or mark a local test '
            f'connection with "{SANDBOX_EXTRA}": true)',
            code="InsecureConnection",
        )
