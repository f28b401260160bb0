"""``make env``: write the ``.env`` that docker-compose.yaml requires, with fresh secrets. Never overwrites one.

Generates the Fernet key (Airflow encrypts connection passwords and variables with it), the api-server's secret
key and JWT secret, and random passwords for PostgreSQL (Airflow's login), the ledger's own login, Redis and the
UI's admin user. The base image digest is resolved with ``docker buildx imagetools inspect`` when Docker can reach
the registry, or given with ``--base-digest``; otherwise it is left empty and compose refuses to start, naming it.
The file is created with mode 0600. Nothing secret is printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = "apache/airflow:3.3.2-python3.11"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
INSPECT = ["docker", "buildx", "imagetools", "inspect", BASE_IMAGE, "--format", "{{json .Manifest.Digest}}"]


def fernet_key() -> str:
    """A key for ``AIRFLOW__CORE__FERNET_KEY`` (cryptography's own generator when it is installed)."""
    try:
        from cryptography.fernet import Fernet
    except ImportError:  # the same construction: 32 random bytes, url-safe base64
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    return Fernet.generate_key().decode()


def resolve_digest() -> str | None:
    """The base image's digest from the registry, or None when Docker (with buildx) cannot tell."""
    if shutil.which("docker") is None:
        return None
    try:
        done = subprocess.run(INSPECT, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        digest = json.loads(done.stdout.strip() or "null")
    except json.JSONDecodeError:
        return None
    return digest if done.returncode == 0 and isinstance(digest, str) and DIGEST.match(digest) else None


def render(*, uid: int, base_digest: str) -> str:
    """The text of a new ``.env``. Passwords are URL-safe: they go into connection URLs unescaped."""
    values = {
        "AIRFLOW__CORE__FERNET_KEY": fernet_key(),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
        "AIRFLOW_DB_PASSWORD": secrets.token_urlsafe(24),
        "D365_LEDGER_DB_PASSWORD": secrets.token_urlsafe(24),
        "REDIS_PASSWORD": secrets.token_urlsafe(24),
        "AIRFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(18),
    }
    secret_lines = "\n".join(f"{key}={value}" for key, value in values.items())
    digest_note = "" if base_digest else f"# Required, not resolved: {' '.join(INSPECT[:5])}\n"
    return (
        "# Written by scripts/make_env.py (make env). Keep it private: it holds every secret of the deployment.\n"
        '# Meaning of each variable: README "Deploy" and .env.example.\n'
        f"AIRFLOW_UID={uid}\n"
        f"{digest_note}AIRFLOW_BASE_DIGEST={base_digest}\n"
        f"{secret_lines}\n"
        "# The UI listens on 127.0.0.1:8080; set another address only behind TLS and a real auth manager.\n"
        "# AIRFLOW_API_BIND=127.0.0.1\n"
        '# Connections (or create them in the UI): README "Point it at a real DreamApply and Dynamics 365".\n'
        "# AIRFLOW_CONN_DYNAMICS365_DEFAULT=\n"
        "# AIRFLOW_CONN_DREAMAPPLY_DEFAULT=\n"
    )


def default_uid() -> int:
    """Your user id, so files the containers write in logs/ are yours; as root, the image's airflow user (50000)."""
    uid = os.getuid()
    return uid if uid != 0 else 50000


def write_new(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600; FileExistsError if it exists (checked atomically, never overwritten)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / ".env", help="where to write (default: .env)")
    parser.add_argument("--base-digest", help=f"digest of {BASE_IMAGE} (sha256:...), instead of asking Docker")
    parser.add_argument("--no-resolve-digest", action="store_true", help="do not run docker to find the digest")
    parser.add_argument("--uid", type=int, default=default_uid(), help="AIRFLOW_UID (default: your user id)")
    args = parser.parse_args(argv)

    if args.output.exists():
        print(f"{args.output} exists; left unchanged (delete it first to generate new secrets)", file=sys.stderr)
        return 1
    digest = args.base_digest or ("" if args.no_resolve_digest else resolve_digest() or "")
    if digest and not DIGEST.match(digest):
        print(f"--base-digest must look like sha256:<64 hex digits>, got {digest!r}", file=sys.stderr)
        return 2
    try:
        write_new(args.output, render(uid=args.uid, base_digest=digest))
    except FileExistsError:
        print(f"{args.output} exists; left unchanged", file=sys.stderr)
        return 1
    print(f"wrote {args.output} (mode 0600): Fernet key, api secrets and passwords generated")
    if not digest:
        print(
            f"AIRFLOW_BASE_DIGEST is empty: docker compose will refuse to start until you set it to the digest of\n"
            f"{BASE_IMAGE}, from: {' '.join(INSPECT[:5])} --format '{{{{json .Manifest.Digest}}}}'",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
