"""A lead's identity is derived, not remembered: uuid5 over the DreamApply instance and applicant id.

``PATCH leads(<that id>)`` is an upsert, so a lost ledger, a retry after a crash or two overlapping runs
all address the same row and can never create a second lead for one applicant.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

# A fixed namespace for this integration's lead ids (never change it: ids would stop matching).
LEAD_NAMESPACE = uuid.UUID("5b0c1f8e-7d2a-4e63-9a41-0d6f3c2b8e17")


def instance_key(instance_url: str) -> str:
    """Normalise a DreamApply instance URL to the lower-case host[:port] that identifies it."""
    raw = instance_url.strip()
    if "://" not in raw:
        raw = "https://" + raw
    parts = urlsplit(raw)
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"not a DreamApply instance URL: {instance_url!r}")
    default_port = {"https": 443, "http": 80}.get(parts.scheme)
    return host if parts.port in (None, default_port) else f"{host}:{parts.port}"


def lead_id_for(instance: str, applicant_id: int) -> str:
    """The deterministic Dataverse lead id for one applicant of one DreamApply instance."""
    return str(uuid.uuid5(LEAD_NAMESPACE, f"dreamapply:{instance_key(instance)}:applicant:{int(applicant_id)}"))
