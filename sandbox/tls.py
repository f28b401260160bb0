"""A fresh local certificate authority per sandbox start, so clients verify TLS instead of disabling it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass
class SandboxTLS:
    ca: trustme.CA
    server_cert: trustme.LeafCert
    ca_path: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        return ctx


def create_tls(state_dir: Path) -> SandboxTLS:
    """Create the CA and one server certificate for the loopback names; write the CA bundle (PEM)."""
    ca = trustme.CA(organization_name="DreamApply-D365 sandbox")
    leaf = ca.issue_cert(*SERVER_NAMES)
    state_dir.mkdir(parents=True, exist_ok=True)
    ca_path = state_dir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return SandboxTLS(ca=ca, server_cert=leaf, ca_path=ca_path.resolve())
