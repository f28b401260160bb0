#!/bin/sh
# Creates the sync's ledger database and its own login (d365_ledger), apart from Airflow's metadata database.
# The official postgres image runs this once, on the first start of an empty data volume, as the superuser.
# On an existing volume run it by hand:  docker compose exec postgres sh /docker-entrypoint-initdb.d/10-d365-ledger.sh
# The password is passed as a psql variable and quoted by psql (:'...'), never spliced into the SQL text.
set -eu
: "${D365_LEDGER_DB_PASSWORD:?D365_LEDGER_DB_PASSWORD is not set (run make env)}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v ledger_password="$D365_LEDGER_DB_PASSWORD" -v airflow_db="$POSTGRES_DB" <<'SQL'
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'd365_ledger') AS create_role \gset
\if :create_role
CREATE ROLE d365_ledger LOGIN PASSWORD :'ledger_password';
\else
ALTER ROLE d365_ledger LOGIN PASSWORD :'ledger_password';
\endif
SELECT NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'd365_ledger') AS create_db \gset
\if :create_db
CREATE DATABASE d365_ledger OWNER d365_ledger;
\endif
-- Only its owner (and the superuser) may connect to either database: the ledger login cannot read Airflow's
-- metadata (connections, variables) and the Airflow login is not needed in the ledger.
REVOKE ALL ON DATABASE d365_ledger FROM PUBLIC;
REVOKE ALL ON DATABASE :"airflow_db" FROM PUBLIC;
SQL
