"""Judging rules and accounts: lease/judgment slots (per_item held by the database), deactivation,
server-side sessions, API tokens, the audit log.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

# Existing rows get slots 0, 1, ... per item in id (or user) order: unique, as the new constraints want.
NUMBER_JUDGMENTS = """
UPDATE judgments SET slot = (
    SELECT COUNT(*) FROM judgments AS earlier WHERE earlier.item_id = judgments.item_id AND earlier.id < judgments.id
)
"""
NUMBER_LEASES = """
UPDATE leases SET slot = (
    SELECT COUNT(*) FROM judgments WHERE judgments.item_id = leases.item_id
) + (
    SELECT COUNT(*) FROM leases AS earlier WHERE earlier.item_id = leases.item_id AND earlier.user_id < leases.user_id
)
"""


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN and unique indexes: a batch table rebuild on SQLite would drop the users
    # table, and with foreign keys on that cascades into every judgment.
    op.add_column("users", sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()))
    for table, numbering, index in (
        ("judgments", NUMBER_JUDGMENTS, "one_judgment_per_slot"),
        ("leases", NUMBER_LEASES, "one_lease_per_slot"),
    ):
        op.add_column(table, sa.Column("slot", sa.Integer, nullable=False, server_default="0"))
        op.execute(numbering)
        op.create_index(index, table, ["item_id", "slot"], unique=True)
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
    )


def downgrade() -> None:
    for table in ("audit_log", "api_tokens", "sessions"):
        op.drop_table(table)
    for table, index in (("leases", "one_lease_per_slot"), ("judgments", "one_judgment_per_slot")):
        op.drop_index(index, table)
        op.drop_column(table, "slot")
    op.drop_column("users", "active")
