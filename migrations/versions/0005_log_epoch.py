"""Log epoch: a random id for the event log, replaced by the restore fence.

Clients resume with since=N&epoch=E; a resume with another log's epoch
reloads instead of replaying (docs/protocol.md, docs/dba.md "After a restore").

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from migrations.sqlfiles import run_sql_files

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FILES = ("v5/01_event_log_epoch.sql",)


def upgrade() -> None:
    run_sql_files(*FILES)


def downgrade() -> None:
    run_sql_files("v5/downgrade.sql")
