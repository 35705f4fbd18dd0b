"""Longer grant ids; drop two columns nothing used.

Grant ids embed study names (up to 128 characters) and patient ids, which do not fit 64
characters (PostgreSQL enforces the length; SQLite does not). ``principals.revoked_ms`` and
``patients.research_consent`` were never written: revocation is per issued key and
research consent is a grant.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.alter_column("id", existing_type=sa.String(64), type_=sa.String(255))
    with op.batch_alter_table("principals") as batch:
        batch.drop_column("revoked_ms")
    with op.batch_alter_table("patients") as batch:
        batch.drop_column("research_consent")


def downgrade() -> None:
    with op.batch_alter_table("patients") as batch:
        batch.add_column(
            sa.Column("research_consent", sa.Boolean(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("principals") as batch:
        batch.add_column(sa.Column("revoked_ms", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("grants") as batch:
        batch.alter_column("id", existing_type=sa.String(255), type_=sa.String(64))
