"""The package registers its two connection types with Airflow's providers manager (UI form fields)."""

from __future__ import annotations

from importlib.metadata import entry_points


def test_entry_point_is_installed() -> None:
    values = [e.value for e in entry_points(group="apache_airflow_provider")]
    assert "d365.provider:get_provider_info" in values


def test_connection_types_and_form_fields_reach_airflow() -> None:
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    assert pm.hooks["dynamics365"].hook_class_name == "d365.hooks.dynamics.DynamicsHook"
    assert pm.hooks["dreamapply"].hook_class_name == "d365.hooks.dreamapply.DreamApplyHook"
    widgets = set(pm.connection_form_widgets)
    assert {"extra__dynamics365__tenant_id", "extra__dynamics365__authority_host"} <= widgets
    assert "extra__dreamapply__requests_per_minute" in widgets
    for conn_type in ("dynamics365", "dreamapply"):  # the documented sandbox flag and Retry-After cap
        assert {f"extra__{conn_type}__sandbox", f"extra__{conn_type}__retry_after_max_seconds"} <= widgets
    relabel = pm.field_behaviours["dynamics365"]["relabeling"]
    assert relabel == {
        "host": "Organization URL",
        "login": "Application (client) ID",
        "password": "Application Secret",
    }
    assert pm.field_behaviours["dreamapply"]["relabeling"]["password"] == "API key"


def test_default_connection_ids() -> None:
    from d365.hooks.dreamapply import DreamApplyHook
    from d365.hooks.dynamics import DynamicsHook

    assert DynamicsHook.default_conn_name == "dynamics365_default"
    assert DreamApplyHook.default_conn_name == "dreamapply_default"
