"""parked messages: the order each one waits for, indexed (hand-back finds them by it)

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from serviceloop.eventstore import add_parked_waiting_columns, drop_parked_waiting_columns

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_parked_waiting_columns(op)


def downgrade() -> None:
    drop_parked_waiting_columns(op)
