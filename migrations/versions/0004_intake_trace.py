"""rejected intake: one row per message (delivery id), its queue, producer and raw excerpt

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 22:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('rejected_intake') as batch:
        batch.add_column(sa.Column('message_id', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('queue', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('producer', sa.String(length=100), nullable=True))
        batch.add_column(sa.Column('raw', sa.Text(), nullable=True))
        batch.create_unique_constraint('uq_rejected_intake_message_id', ['message_id'])
        batch.create_index('ix_rejected_intake_created_at', ['created_at'])


def downgrade() -> None:
    with op.batch_alter_table('rejected_intake') as batch:
        batch.drop_index('ix_rejected_intake_created_at')
        batch.drop_constraint('uq_rejected_intake_message_id', type_='unique')
        batch.drop_column('raw')
        batch.drop_column('producer')
        batch.drop_column('queue')
        batch.drop_column('message_id')
