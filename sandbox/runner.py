"""Start and stop the sandbox servers: in the foreground (CLI) or on a background thread (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from sandbox.admin import server as admin
from sandbox.config import SandboxConfig
from sandbox.dataverse import server as dataverse
from sandbox.dreamapply import server as dreamapply
from sandbox.entra import server as entra
from sandbox.state import Endpoints, SandboxState
from sandbox.tls import create_tls

STATE_FILE = "sandbox.json"


def _progress_to_stderr() -> None:
    """The CLI shows the sandbox's own progress lines (generating a large population) on stderr, unless the host
    program configured logging itself; stdout keeps the ready announcement."""
    logger = logging.getLogger("sandbox")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


class Sandbox:
    """One running sandbox: Entra ID, Dataverse, DreamApply and the sandbox-only admin server."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.state: SandboxState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def _prepare(self) -> dict[str, socket.socket]:
        cfg = self.config
        if cfg.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the sandbox binds to loopback only")
        socks = {
            "login": _bind(cfg.host, cfg.login_port),
            "dataverse": _bind(cfg.host, cfg.dataverse_port),
            "dreamapply": _bind(cfg.host, cfg.dreamapply_port),
            "admin": _bind(cfg.host, cfg.admin_port),
        }
        port = {name: s.getsockname()[1] for name, s in socks.items()}
        base = f"https://{cfg.host}"
        endpoints = Endpoints(
            login_url=f"{base}:{port['login']}",
            org_url=f"{base}:{port['dataverse']}",
            dreamapply_url=f"{base}:{port['dreamapply']}",
            admin_url=f"{base}:{port['admin']}",
            tenant_id=cfg.tenant_id,
        )
        tls = create_tls(Path(cfg.state_dir))
        state = SandboxState(config=cfg, endpoints=endpoints, tls=tls)
        state.dreamapply = dreamapply.create_store(state)
        state.dataverse = dataverse.create_service(state)
        self.state = state
        return socks

    async def _start_sites(self, socks: dict[str, socket.socket]) -> None:
        assert self.state is not None
        builders = {
            "login": entra.build_app,
            "dataverse": dataverse.build_app,
            "dreamapply": dreamapply.build_app,
            "admin": admin.build_app,
        }
        ssl_ctx = self.state.tls.server_context()
        for name, sock in socks.items():
            runner = web.AppRunner(
                builders[name](self.state), access_log=None, handle_signals=False, shutdown_timeout=0.5
            )
            await runner.setup()
            site = web.SockSite(runner, sock, ssl_context=ssl_ctx)
            await site.start()
            self._runners.append(runner)
        self._write_state_file()

    async def _stop_sites(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    def start(self) -> Sandbox:
        """Start on a background thread; returns once every server accepts connections."""
        socks = self._prepare()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_sites(socks))
            except BaseException as exc:  # surfaced to the caller of start()
                self._start_error = exc
                self._started.set()
                return
            self._started.set()
            loop.run_forever()
            loop.run_until_complete(self._stop_sites())
            # Handlers still sleeping (latency/timeout faults) are cancelled, not destroyed mid-flight.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="sandbox", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop = None
        self._thread = None

    def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Run in the foreground until interrupted (the CLI)."""
        _progress_to_stderr()
        socks = self._prepare()

        async def main() -> None:
            await self._start_sites(socks)
            if on_ready is not None:
                on_ready()
            try:
                await asyncio.Event().wait()
            finally:
                await self._stop_sites()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- facts for clients ----------------------------------------------------------------
    @property
    def endpoints(self) -> Endpoints:
        assert self.state is not None, "sandbox not started"
        return self.state.endpoints

    @property
    def ca_path(self) -> Path:
        assert self.state is not None, "sandbox not started"
        return self.state.tls.ca_path

    def info(self) -> dict[str, Any]:
        """Everything a client needs to connect, as written to ``<state_dir>/sandbox.json``."""
        state = self.state
        assert state is not None
        ep = state.endpoints
        cfg = state.config
        return {
            "ca_bundle": str(state.tls.ca_path),
            "entra": {
                "login_url": ep.login_url,
                "authority": ep.authority,
                "tenant_id": cfg.tenant_id,
                "client_id": cfg.client_id,
                "client_secret": cfg.client_secret,
                # application users 2, 3, ... of the same tenant and org (SandboxConfig.extra_app_users)
                "extra_app_users": [
                    {
                        "number": a.number,
                        "client_id": a.client_id,
                        "client_secret": a.client_secret,
                        "user_id": a.user_id,
                    }
                    for a in state.apps.apps[1:]
                ],
            },
            "dynamics365": {"org_url": ep.org_url, "web_api_url": ep.web_api_url},
            "dreamapply": {
                "url": ep.dreamapply_url,
                "api_url": ep.dreamapply_api_url,
                "api_key": cfg.dreamapply_api_key,
            },
            "admin": {"url": ep.admin_url},
            "applicants": cfg.applicants,
            "seed": cfg.seed,
        }

    def _write_state_file(self) -> None:
        path = Path(self.config.state_dir) / STATE_FILE
        path.write_text(json.dumps(self.info(), indent=2) + "\n")
