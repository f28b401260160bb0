"""``python -m d365 <command>``: operations on the integration from a host with its connections and settings.

Commands::

    python -m d365 owners [--json]    # the Dynamics 365 users that can own leads (name, email, id)
    python -m d365 check              # preflight against the configured connections and settings, without a sync

The ledger's own commands stay where they are: ``python -m d365.pause``, ``python -m d365.parking``,
``python -m d365.pipeline.lock``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE = "usage: python -m d365 {owners,check} [options]   (python -m d365 <command> --help for its options)"


def _commands() -> dict[str, Callable[[list[str] | None], int]]:
    from d365 import cli_check, cli_owners

    return {"owners": cli_owners.main, "check": cli_check.main}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    commands = _commands()
    command = commands.get(args[0])
    if command is None:
        print(f"unknown command {args[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    return command(args[1:])


if __name__ == "__main__":
    sys.exit(main())
