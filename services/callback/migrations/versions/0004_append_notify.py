"""the log notifies its relay of appends (PostgreSQL LISTEN/NOTIFY; the relay stops polling)

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from serviceloop.eventstore import add_append_notify, drop_append_notify

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_append_notify(op, "callback")


def downgrade() -> None:
    drop_append_notify(op)
