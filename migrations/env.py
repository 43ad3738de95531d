"""Alembic environment: the URL comes from refundq's settings (or the caller's config)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import worker.models  # noqa: F401  (registers the tables)
from worker.db import WRITE, get_engine

config = context.config
url = config.get_main_option("sqlalchemy.url")
if not url:
    from config.settings import get_settings

    url = get_settings().database_url

with get_engine(url).connect() as connection:
    connection.execution_options(**{WRITE: True})  # DDL writes: on SQLite BEGIN IMMEDIATE, as engine.begin()
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
