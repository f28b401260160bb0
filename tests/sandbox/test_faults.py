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


# -- answers that are not what they claim (the hooks must check every answer's shape) --------------------


def _dreamapply(client: SandboxClient) -> tuple[requests.Session, str, dict[str, str]]:
    info = client.info["dreamapply"]
    return client.session(), info["api_url"], {"Authorization": f'DREAM apikey="{info["api_key"]}"'}


def _fired(client: SandboxClient, rule_id: int) -> int:
    return next(r["fired"] for r in client.get("/faults")["rules"] if r["id"] == rule_id)


@pytest.mark.parametrize("kind", ["html", "json_error", "empty"])
def test_untrusted_200_answers_replace_the_resource(sandbox_client: SandboxClient, kind: str) -> None:
    http, api, auth = _dreamapply(sandbox_client)
    rule = sandbox_client.add_fault(kind=kind, server="dreamapply", path="/applicants$", nth=1)
    answer = http.get(f"{api}/applicants", params={"limit": 5}, headers=auth)
    assert answer.status_code == 200
    if kind == "html":
        assert answer.headers["Content-Type"].startswith("text/html")
        assert "<html>" in answer.text
    elif kind == "empty":
        assert answer.content == b""
    else:
        assert set(answer.json()) == {"error"}
    assert _fired(sandbox_client, rule["id"]) == 1
    real = http.get(f"{api}/applicants", params={"limit": 5}, headers=auth)
    assert len(real.json()) == 5


def test_cut_body_is_the_real_answer_cut_in_half(sandbox_client: SandboxClient) -> None:
    http, api, auth = _dreamapply(sandbox_client)
    whole = http.get(f"{api}/applicants", params={"limit": 5}, headers=auth).content
    rule = sandbox_client.add_fault(kind="cut", server="dreamapply", path="/applicants$", nth=1)
    cut = http.get(f"{api}/applicants", params={"limit": 5}, headers=auth)
    assert cut.status_code == 200
    assert cut.content == whole[: len(whole) // 2]
    with pytest.raises(ValueError):
        cut.json()
    assert _fired(sandbox_client, rule["id"]) == 1


def test_wrong_encoding_breaks_strict_utf8_decoding(sandbox_client: SandboxClient) -> None:
    http, api, auth = _dreamapply(sandbox_client)
    whole = http.get(f"{api}/applicants", params={"limit": 200}, headers=auth).content
    assert not whole.isascii()  # the synthetic names use many scripts
    sandbox_client.add_fault(kind="wrong_encoding", server="dreamapply", path="/applicants$", nth=1)
    bad = http.get(f"{api}/applicants", params={"limit": 200}, headers=auth)
    assert "utf-8" in bad.headers["Content-Type"].lower()
    with pytest.raises(UnicodeDecodeError):
        bad.content.decode("utf-8")
    assert "\ufffd" in bad.content.decode("utf-8", errors="replace")
    log = sandbox_client.requests(server="dreamapply")[-1]
    assert log["fault"] == {"id": log["fault"]["id"], "kind": "wrong_encoding", "changed": True}


@pytest.mark.parametrize("value", ["1e9", "-5", "inf", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_retry_after_is_sent_verbatim(sandbox_client: SandboxClient, value: str) -> None:
    http, api, auth = _dreamapply(sandbox_client)
    sandbox_client.add_fault(kind="status", status=429, retry_after=value, server="dreamapply", nth=1)
    answer = http.get(f"{api}/applicants", params={"limit": 1}, headers=auth)
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == value


@pytest.mark.parametrize("mode", ["repeat", "foreign"])
def test_next_link_rewritten(sandbox_client: SandboxClient, mode: str) -> None:
    import msal

    from sandbox.client import VerifiedSession

    info = sandbox_client.info
    app = msal.ConfidentialClientApplication(
        info["entra"]["client_id"],
        client_credential=info["entra"]["client_secret"],
        authority=info["entra"]["authority"],
        validate_authority=False,
        instance_discovery=False,
        http_client=VerifiedSession(sandbox_client.ca_path),
    )
    token = app.acquire_token_for_client(scopes=[info["dynamics365"]["org_url"] + "/.default"])["access_token"]
    http = sandbox_client.session()
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json", "Prefer": "odata.maxpagesize=2"}
    url = info["dynamics365"]["web_api_url"] + "/leads?$select=leadid"
    rule = sandbox_client.add_fault(kind="next_link", mode=mode, server="dataverse", path="/leads$", nth=1)
    first = http.get(url, headers=headers)
    assert first.status_code == 200
    link = first.json()["@odata.nextLink"]
    if mode == "repeat":
        assert link == url.replace("$select", "%24select") or link == url
    else:
        assert link.startswith("https://localhost:")
        assert link.split("/", 3)[3].startswith(url.split("/", 3)[3].split("?")[0])
    assert _fired(sandbox_client, rule["id"]) == 1


def test_unknown_next_link_mode_is_rejected() -> None:
    with pytest.raises(ValueError):
        FaultInjector().add(kind="next_link", mode="sideways")
