"""The sync's own failures that more than one layer names: raised by the task bodies, recognised by the automatic
pause and the failure alert. In a module of their own so that those modules need not import each other."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException


class PreflightError(AirflowFailException):
    """The integration is misconfigured: stop before any extract or write, naming what is wrong.

    An ``AirflowFailException``: task retries cannot fix a configuration, so the run fails at once."""


class PreflightUnavailable(Exception):
    """A service could not be reached during preflight (5xx, network, throttling): task retries apply."""


class IntegrationPaused(AirflowFailException):
    """Preflight refuses to run while the integration is paused (not itself counted as a failure)."""
