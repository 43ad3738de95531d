"""fencing token and settle time

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.models

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('refund') as batch:
        batch.add_column(sa.Column('claim', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('settle_until', worker.models.TZDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('refund') as batch:
        batch.drop_column('settle_until')
        batch.drop_column('claim')
