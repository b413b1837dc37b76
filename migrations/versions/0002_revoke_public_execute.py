"""Only the triggers may append events: revoke PUBLIC's EXECUTE on the SECURITY DEFINER writers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from migrations.sqlfiles import run_sql_files

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_files("v2/01_revoke_public_execute.sql")


def downgrade() -> None:
    run_sql_files("v2/downgrade.sql")
