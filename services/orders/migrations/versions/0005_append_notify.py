"""the log notifies its relay of appends (PostgreSQL LISTEN/NOTIFY; the relay stops polling)

Revision ID: 0005
Revises: 0004
"""

from alembic import op

from serviceloop.eventstore import add_append_notify, drop_append_notify

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_append_notify(op, "orders")


def downgrade() -> None:
    drop_append_notify(op)
