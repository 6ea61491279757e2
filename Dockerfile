# syntax=docker/dockerfile:1
# One image for every Conveyor process: `conveyor migrate|api|worker|relay|beat|flower`.
# docker-compose.yml picks the process with `command:`.
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package and its dependencies into a virtualenv -------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The context is filtered by .dockerignore (no .venv, .git, .env, caches, tests).
COPY . .
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install ./clients/python .

# --- runtime: the virtualenv only, run as an unprivileged user ----------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONVEYOR_DATA_DIR=/var/lib/conveyor
RUN groupadd --system --gid 10001 conveyor \
    && useradd --system --uid 10001 --gid conveyor --home-dir /home/conveyor --create-home \
       --shell /usr/sbin/nologin conveyor \
    && install -d -o conveyor -g conveyor /var/lib/conveyor
COPY --from=build /opt/venv /opt/venv
WORKDIR /home/conveyor
# Numeric so that "run as non-root" policies (e.g. Kubernetes runAsNonRoot) can verify it.
USER 10001:10001
EXPOSE 8000 5555
CMD ["conveyor", "api", "--host", "0.0.0.0", "--port", "8000"]
