# The Airflow image with this integration installed (used by docker-compose.yaml).
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:0 requirements.txt pyproject.toml README.md /opt/d365/
COPY --chown=airflow:0 plugins/d365 /opt/d365/plugins/d365
COPY --chown=airflow:0 sandbox /opt/d365/sandbox
RUN pip install --no-cache-dir -r /opt/d365/requirements.txt \
 && pip install --no-cache-dir --no-deps -e /opt/d365
