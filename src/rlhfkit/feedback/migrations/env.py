"""Alembic environment: runs on the connection `rlhfkit.feedback.store.migrate` passes in."""

from alembic import context

from rlhfkit.feedback.schema import Base

context.configure(connection=context.config.attributes["connection"], target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
