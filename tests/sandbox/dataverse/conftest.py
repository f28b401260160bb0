"""Fixtures for the Dataverse sandbox tests (helpers live in ``dvhelpers.py``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from dvhelpers import WebApi

from sandbox import Sandbox


@pytest.fixture
def api(sandbox: Sandbox) -> WebApi:
    return WebApi(sandbox)


@pytest.fixture
def connect() -> Callable[[Sandbox], WebApi]:
    return WebApi
