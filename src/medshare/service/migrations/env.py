"""Alembic environment: runs on the connection :func:`medshare.service.db.migrate` passes."""

from alembic import context

from medshare.service.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable by running alembic by hand
    raise RuntimeError("run migrations through medshare.service.db.migrate(engine)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
