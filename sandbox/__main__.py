"""``python -m sandbox serve``: run the local DreamApply, Dynamics 365 and Entra ID servers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sandbox.config import SandboxConfig, ServiceProtectionLimits, valid_entity_set_name
from sandbox.runner import STATE_FILE, Sandbox


def build_parser() -> argparse.ArgumentParser:
    d = SandboxConfig()
    lim = ServiceProtectionLimits()
    p = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="start the sandbox servers (Ctrl-C stops them)")
    g = s.add_argument_group("network (servers bind to 127.0.0.1 only; port 0 picks a free port)")
    g.add_argument("--login-port", type=int, default=d.login_port, help="Entra ID token service (default %(default)s)")
    g.add_argument(
        "--dataverse-port", type=int, default=d.dataverse_port, help="Dynamics 365 Web API (default %(default)s)"
    )
    g.add_argument(
        "--dreamapply-port", type=int, default=d.dreamapply_port, help="DreamApply API (default %(default)s)"
    )
    g.add_argument("--admin-port", type=int, default=d.admin_port, help="sandbox-only controls (default %(default)s)")
    g.add_argument(
        "--state-dir",
        type=Path,
        default=d.state_dir,
        help=f"where the CA bundle (ca.pem) and {STATE_FILE} are written (default %(default)s)",
    )
    g = s.add_argument_group("data")
    g.add_argument(
        "--applicants", type=int, default=d.applicants, help="synthetic applicants, 10..200000 (default %(default)s)"
    )
    g.add_argument("--seed", type=int, default=d.seed, help="random seed of the generator (default %(default)s)")
    g = s.add_argument_group("identity")
    g.add_argument(
        "--token-lifetime", type=int, default=d.token_lifetime_seconds, help="access token lifetime in seconds"
    )
    g.add_argument(
        "--extra-app-users",
        type=int,
        default=d.extra_app_users,
        help="application users besides the sandbox app (users 2, 3, ...; their credentials are in the state file)",
    )
    g = s.add_argument_group("limits")
    g.add_argument(
        "--dreamapply-rpm",
        type=int,
        default=d.dreamapply_requests_per_minute,
        help="DreamApply requests per minute per key",
    )
    g.add_argument(
        "--window", type=float, default=lim.window_seconds, help="Dataverse service-protection window, seconds"
    )
    g.add_argument("--max-requests", type=int, default=lim.max_requests, help="Dataverse requests per window per user")
    g.add_argument(
        "--max-execution-ms",
        type=float,
        default=lim.max_execution_ms,
        help="Dataverse execution time per window per user",
    )
    g.add_argument(
        "--max-concurrent", type=int, default=lim.max_concurrent, help="Dataverse concurrent requests per user"
    )
    g.add_argument(
        "--retry-after", type=float, default=lim.retry_after_seconds, help="first Retry-After of a penalty, seconds"
    )
    g.add_argument("--dop-hint", type=int, default=lim.dop_hint, help="x-ms-dop-hint sent by Dataverse")
    g.add_argument(
        "--request-latency-ms", type=float, default=d.request_latency_ms, help="simulated server time per request"
    )
    g.add_argument("--operation-ms", type=float, default=d.operation_ms, help="simulated server time per operation")
    g.add_argument(
        "--key-activation",
        type=float,
        default=d.alternate_key_activation_seconds,
        help="seconds before the applicant-ID alternate key turns Active (negative: no key)",
    )
    g.add_argument(
        "--lead-entity-set",
        default=d.lead_entity_set,
        help="entity set name of the lead table in metadata and routes (default %(default)s)",
    )
    return p


def config_from_args(a: argparse.Namespace) -> SandboxConfig:
    if not 10 <= a.applicants <= 200_000:
        raise SystemExit("--applicants must be between 10 and 200000")
    if not valid_entity_set_name(a.lead_entity_set):
        raise SystemExit(
            f"--lead-entity-set {a.lead_entity_set!r}: a name of letters, digits and _ that no other route uses"
        )
    return SandboxConfig(
        login_port=a.login_port,
        dataverse_port=a.dataverse_port,
        dreamapply_port=a.dreamapply_port,
        admin_port=a.admin_port,
        state_dir=a.state_dir,
        applicants=a.applicants,
        seed=a.seed,
        token_lifetime_seconds=a.token_lifetime,
        extra_app_users=a.extra_app_users,
        dreamapply_requests_per_minute=a.dreamapply_rpm,
        limits=ServiceProtectionLimits(
            window_seconds=a.window,
            max_requests=a.max_requests,
            max_execution_ms=a.max_execution_ms,
            max_concurrent=a.max_concurrent,
            retry_after_seconds=a.retry_after,
            dop_hint=a.dop_hint,
        ),
        request_latency_ms=a.request_latency_ms,
        operation_ms=a.operation_ms,
        alternate_key_activation_seconds=a.key_activation,
        lead_entity_set=a.lead_entity_set,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        started = time.perf_counter()
        sandbox = Sandbox(config_from_args(args))

        def announce() -> None:
            info = sandbox.info()
            print(
                json.dumps({"ready_in_seconds": round(time.perf_counter() - started, 3), **info}, indent=2), flush=True
            )

        sandbox.serve_forever(on_ready=announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
