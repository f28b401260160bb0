"""The load's size knobs: one reading for the DAG and the dry run's estimate; a wrong value is a clear error."""

from __future__ import annotations

import pytest

from d365.tuning import load_tuning


def test_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("D365_SYNC_BATCH_SIZE", raising=False)
    monkeypatch.delenv("D365_SYNC_MAX_WORKERS", raising=False)
    assert load_tuning() == (100, 16)
    monkeypatch.setenv("D365_SYNC_BATCH_SIZE", "250")
    monkeypatch.setenv("D365_SYNC_MAX_WORKERS", " 8 ")
    assert load_tuning() == (250, 8)


@pytest.mark.parametrize(("name", "raw"), [("D365_SYNC_BATCH_SIZE", "lots"), ("D365_SYNC_MAX_WORKERS", "0")])
def test_a_wrong_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError, match=name):
        load_tuning()
