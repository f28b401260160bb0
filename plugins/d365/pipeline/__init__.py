"""Pipeline steps as plain modules that know nothing of Airflow (extract, mapping, ledger, plan, report)."""
