"""order progress: the partner, appointment window and dispatch version of each order

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
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("partner_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("window_start", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("window_end", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("dispatch_detail", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("dispatch_version", sa.Integer(), nullable=False,
                                      server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("dispatch_version")
        batch_op.drop_column("dispatch_detail")
        batch_op.drop_column("window_end")
        batch_op.drop_column("window_start")
        batch_op.drop_column("partner_id")
