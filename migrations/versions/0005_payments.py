"""money ceilings: the payment table (one lock row per original payment) and the refund's payment,
paid, settled and follow-up columns

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 00:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.models

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'payment',
        sa.Column('account', sa.String(length=100), nullable=False),
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('currency', sa.String(length=32), nullable=False),
        sa.Column('refundable', worker.models.Money(), nullable=True),
        sa.Column('source', sa.String(length=16), nullable=True),
        sa.Column('read_at', worker.models.TZDateTime(timezone=True), nullable=True),
        sa.Column('detail', sa.JSON(), nullable=False),
        sa.Column('created_at', worker.models.TZDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('account', 'key'),
    )
    with op.batch_alter_table('refund') as batch:
        batch.add_column(sa.Column('payment_key', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('paid_amount', worker.models.Money(), nullable=True))
        batch.add_column(sa.Column('follow_up_of', sa.String(length=40), nullable=True))
        batch.add_column(sa.Column('settled_amount', worker.models.Money(), nullable=True))
        batch.add_column(sa.Column('fee', worker.models.Money(), nullable=True))
        batch.create_index('ix_refund_payment', ['account', 'payment_key'])
        batch.create_index('ix_refund_follow_up_of', ['follow_up_of'])


def downgrade() -> None:
    with op.batch_alter_table('refund') as batch:
        batch.drop_index('ix_refund_follow_up_of')
        batch.drop_index('ix_refund_payment')
        batch.drop_column('fee')
        batch.drop_column('settled_amount')
        batch.drop_column('follow_up_of')
        batch.drop_column('paid_amount')
        batch.drop_column('payment_key')
    op.drop_table('payment')
