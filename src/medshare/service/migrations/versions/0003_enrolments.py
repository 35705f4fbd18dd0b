"""Enrolment codes: a person's wallet is made on their own device.

A hospital enrols a patient or a staff member by handing them a one-time code; their
wallet makes its identity key (and a patient's seed) on the device and redeems the code
with the public key only. The table keeps the code's SHA-256, never the code.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrolments",
        sa.Column("identity", sa.String(255), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("hospital", sa.String(16), sa.ForeignKey("hospitals.code"), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("dept", sa.String(64), nullable=True),
        sa.Column("code_digest", sa.String(64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.Column("redeemed_ms", sa.BigInteger(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("enrolments")
