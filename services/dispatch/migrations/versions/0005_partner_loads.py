"""each partner's active assignments per day, kept as they change (partner_loads): an
assignment reads one row per partner instead of counting every assignment of the day

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "partner_loads",
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("active", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "partner_id"),
    )
    op.execute("INSERT INTO partner_loads (day, partner_id, active)"
               " SELECT day, partner_id, count(*) FROM assignments WHERE active"
               " GROUP BY day, partner_id")
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.drop_index("ix_assignments_day_partner")


def downgrade() -> None:
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.create_index("ix_assignments_day_partner", ["day", "partner_id"], unique=False)
    op.drop_table("partner_loads")
