"""Event store v1: trades, logs, the commit-ordered events log, triggers and views.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from migrations.sqlfiles import run_sql_files

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

FILES = (
    "v1/01_tables.sql",
    "v1/02_hub_event_frame_v1.sql",
    "v1/03_hub_append_event_v1.sql",
    "v1/04_hub_trades_event_v1.sql",
    "v1/05_hub_logs_event_v1.sql",
    "v1/06_hub_notify_v1.sql",
    "v1/07_triggers.sql",
    "v1/08_views.sql",
)


def upgrade() -> None:
    run_sql_files(*FILES)


def downgrade() -> None:
    run_sql_files("v1/downgrade.sql")
