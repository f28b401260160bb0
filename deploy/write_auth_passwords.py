"""Write the simple auth manager's passwords file from ``AIRFLOW_ADMIN_PASSWORD`` (run by compose's airflow-init).

With every configured user in the file, the api-server neither generates a password nor prints one to its log; the
password lives in ``.env`` only. Rewritten on every ``docker compose up``, so changing it in ``.env`` rotates it.
Standard library only: it runs with the image's Python before Airflow starts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def write_passwords(path: Path, username: str, password: str, uid: int) -> None:
    """Write ``{username: password}`` to ``path`` readable only by ``uid`` (the api-server's user)."""
    if not password:
        raise ValueError("AIRFLOW_ADMIN_PASSWORD is empty (run make env)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps({username: password}) + "\n")
    if os.geteuid() == 0:
        os.chown(tmp, uid, 0)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: write_auth_passwords.py PASSWORDS_FILE UID", file=sys.stderr)
        return 2
    username = os.environ.get("_AIRFLOW_WWW_USER_USERNAME") or "airflow"
    try:
        write_passwords(Path(argv[1]), username, os.environ.get("AIRFLOW_ADMIN_PASSWORD", ""), int(argv[2]))
    except ValueError as exc:
        print(f"write_auth_passwords: {exc}", file=sys.stderr)
        return 1
    print(f"write_auth_passwords: password of {username!r} set from AIRFLOW_ADMIN_PASSWORD")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
