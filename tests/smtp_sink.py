"""A real SMTP server for tests (aiosmtpd on 127.0.0.1, a free port) wired in as Airflow's ``smtp_default``."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        """Every text part, decoded (the notifier sends HTML)."""
        parts = [p.get_content() for p in self.message.walk() if p.get_content_maintype() == "text"]
        return "\n".join(parts)


@dataclass
class _Handler:
    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        msg = message_from_bytes(envelope.content, policy=policy.default)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), msg, envelope.content))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


class SmtpSink:
    def __init__(self) -> None:
        self.handler = _Handler()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[Received]:
        return self.handler.received

    def wait(self, n: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.messages)

    def connection(self) -> dict[str, Any]:
        return {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": self.port,
            "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "airflow@example.test", "timeout": 10},
        }


@pytest.fixture
def smtp_sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpSink]:
    """A running aiosmtpd server as ``AIRFLOW_CONN_SMTP_DEFAULT`` (no auth, no TLS)."""
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-connection chatter
    sink = SmtpSink()
    sink.controller.start()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(sink.connection()))
    try:
        yield sink
    finally:
        sink.controller.stop()
