# syntax=docker/dockerfile:1
#
# One image for every platform process: the Dagster code location (gRPC), webserver and daemon, the
# risk API, the gRPC API, the Kafka scorer and producer. They share one dependency set and one
# `crypto-platform` CLI; docker-compose.yml picks the process with `command:`.
#
#   docker build -f docker/platform.Dockerfile -t crypto-platform:0.1.0 .
#
# Stage 1 resolves and installs everything into /opt/venv (pip's cache and build tools never reach the
# runtime image); stage 2 is a slim Python with that venv copied in, running as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build

# Dependencies first, from pyproject.toml alone, so a code change reuses this (large: TensorFlow, Dagster,
# MLflow) layer. The placeholder packages let setuptools resolve the project without its sources.
COPY pyproject.toml README.md ./
RUN mkdir -p crypto_platform serving \
    && touch crypto_platform/__init__.py serving/__init__.py \
    && pip install --upgrade pip \
    && pip install . \
    && pip uninstall -y crypto-platform \
    && rm -rf crypto_platform serving

# Then the project itself, non-editable: the runtime image holds no source tree.
COPY crypto_platform ./crypto_platform
COPY serving ./serving
# The gRPC stubs are generated here, into the installed package, while it is still writable (the runtime
# user cannot write to site-packages; serving/grpc/stubs.py would otherwise regenerate on every start).
RUN pip install --no-deps . \
    && python -c "from serving.grpc import stubs; print('grpc stubs in', stubs.ensure())" \
    && crypto-platform --help >/dev/null


FROM ${PYTHON_IMAGE} AS runtime
ARG APP_UID=10001
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/home \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MLFLOW_TRACKING_URI=http://mlflow:5000

# tini reaps the step/run subprocesses Dagster forks and forwards SIGTERM, so `docker compose stop`
# ends a run cleanly instead of waiting for the kill timeout.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid ${APP_UID} app \
    && useradd --system --uid ${APP_UID} --gid app --home-dir /home/app --create-home app \
    && install -d -o app -g app /opt/dagster/home

COPY --from=builder /opt/venv /opt/venv
# The Dagster instance (Postgres storage, S3 compute logs) and the workspace pointing at the code
# server; both read their connection details from the environment. DAGSTER_HOME stays writable by the
# app user: Dagster keeps local artifacts and staged step logs there.
COPY --chown=app:app docker/dagster/dagster.yaml docker/dagster/workspace.yaml /opt/dagster/home/

USER app
WORKDIR /home/app
ENTRYPOINT ["/usr/bin/tini", "--"]
# Each compose service sets its own command and healthcheck; alone, the image serves the API.
CMD ["crypto-platform", "serve", "--host", "0.0.0.0", "--port", "8800"]
EXPOSE 8800
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8800/health', timeout=4)"]
