"""write RPCs answer a request id asked again with their first answer (serviceloop.answers)

Revision ID: 0005
Revises: 0004
"""

from alembic import op

from serviceloop.eventstore import add_answers_table, drop_answers_table

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_answers_table(op)


def downgrade() -> None:
    drop_answers_table(op)
