"""Fault rules fire exactly when asked to, and the request log never stores credentials."""

from __future__ import annotations

import pytest
import requests

from sandbox.client import SandboxClient
from sandbox.faults import FaultInjector
from sandbox.requestlog import redact_header


def test_nth_rule_fires_once_on_the_nth_match() -> None:
    faults = FaultInjector()
    faults.add(kind="status", status=503, server="dataverse", nth=3)
    fired = [faults.pick("dataverse", "GET", "/api/data/v9.2/leads") is not None for _ in range(6)]
    assert fired == [False, False, True, False, False, False]


def test_every_rule_and_path_filter() -> None:
    faults = FaultInjector()
    faults.add(kind="reset", path=r"\$batch", every=2)
    assert faults.pick("dataverse", "POST", "/api/data/v9.2/leads") is None
    picks = [faults.pick("dataverse", "POST", "/api/data/v9.2/$batch") is not None for _ in range(4)]
    assert picks == [False, True, False, True]


def test_rate_rule_is_seeded_and_bounded_by_times() -> None:
    a, b = FaultInjector(), FaultInjector()
    a.add(kind="status", status=429, rate=0.3, seed=5, times=4)
    b.add(kind="status", status=429, rate=0.3, seed=5, times=4)
    seq_a = [a.pick("dataverse", "GET", "/x") is not None for _ in range(100)]
    seq_b = [b.pick("dataverse", "GET", "/x") is not None for _ in range(100)]
    assert seq_a == seq_b
    assert sum(seq_a) == 4


def test_unknown_fault_fields_are_rejected() -> None:
    with pytest.raises(ValueError):
        FaultInjector().add(kind="status", colour="red")
    with pytest.raises(ValueError):
        FaultInjector().add(kind="explode")


def test_authorization_values_are_fingerprinted() -> None:
    redacted = redact_header("Authorization", 'DREAM apikey="abc123secret"')
    assert "abc123secret" not in redacted
    assert redacted.startswith("DREAM <redacted sha256:")
    assert redact_header("Accept", "application/json") == "application/json"


def test_injected_status_and_reset_over_the_wire(sandbox_client: SandboxClient) -> None:
    http = sandbox_client.session()
    login = sandbox_client.info["entra"]["login_url"]
    url = f"{sandbox_client.info['entra']['authority']}/v2.0/.well-known/openid-configuration"
    sandbox_client.add_fault(kind="status", status=503, server="login", nth=1)
    assert http.get(url).status_code == 503
    assert http.get(url).status_code == 200
    sandbox_client.add_fault(kind="reset", server="login", nth=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        http.get(url)
    assert http.get(url).status_code == 200
    entries = sandbox_client.requests(server="login")
    assert [e["status"] for e in entries[-4:]] == [503, 200, 0, 200]
    assert entries[-2]["fault"]["kind"] == "reset"
    assert login.startswith("https://127.0.0.1:")


def test_timeout_fault_makes_the_client_time_out(sandbox_client: SandboxClient) -> None:
    http = sandbox_client.session()
    url = f"{sandbox_client.info['entra']['authority']}/v2.0/.well-known/openid-configuration"
    sandbox_client.add_fault(kind="timeout", seconds=2, server="login", nth=1)
    with pytest.raises(requests.exceptions.Timeout):
        http.get(url, timeout=0.5)
    assert http.get(url, timeout=5).status_code == 200
