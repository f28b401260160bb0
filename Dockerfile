# syntax=docker/dockerfile:1
# The Airflow image with this integration installed (used by docker-compose.yaml). Targets:
#   runtime  Airflow 3.3.2 on Python 3.11 + the d365 package (registers the connection types). No sandbox.
#   sandbox  the local DreamApply / Dynamics 365 / Entra ID stand-in (compose profile "sandbox" only).
#
# The base image is pinned by digest, and the digest is a required build argument: it is not written here because
# it could not be checked from where this file was written, and a guessed digest would be worse than none. Get it
# from the registry and put it in .env (compose passes it on):
#   docker buildx imagetools inspect apache/airflow:3.3.2-python3.11 --format '{{json .Manifest.Digest}}'
#   docker build --build-arg AIRFLOW_BASE_DIGEST=sha256:<digest> --target runtime -t dreamapply-d365-airflow .
# Everything is installed with Airflow's constraints file for 3.3.2 / Python 3.11 (AIRFLOW_CONSTRAINTS_URL), so
# the image keeps the dependency versions Airflow was released and tested with.
ARG AIRFLOW_BASE_DIGEST

FROM apache/airflow:3.3.2-python3.11@${AIRFLOW_BASE_DIGEST:?} AS base
ARG AIRFLOW_CONSTRAINTS_URL=https://raw.githubusercontent.com/apache/airflow/constraints-3.3.2/constraints-3.11.txt
COPY --chown=airflow:0 requirements.txt deploy/constrain_requirements.py /opt/d365/build/
RUN curl -fsSL "${AIRFLOW_CONSTRAINTS_URL}" -o /opt/d365/build/constraints.txt \
 && python /opt/d365/build/constrain_requirements.py /opt/d365/build/requirements.txt \
      /opt/d365/build/constraints.txt /opt/d365/build/requirements.image.txt \
 && pip install --no-cache-dir "apache-airflow==3.3.2" -r /opt/d365/build/requirements.image.txt \
      --constraint /opt/d365/build/constraints.txt

FROM base AS sandbox
COPY --chown=airflow:0 sandbox /opt/d365-sandbox/sandbox
ENV PYTHONPATH=/opt/d365-sandbox

# The default target (last stage): what every Airflow service runs.
FROM base AS runtime
COPY --chown=airflow:0 pyproject.toml README.md /opt/d365/
COPY --chown=airflow:0 plugins/d365 /opt/d365/plugins/d365
COPY --chown=airflow:0 deploy/write_auth_passwords.py /opt/d365/deploy/
RUN pip install --no-cache-dir --no-deps -e /opt/d365
