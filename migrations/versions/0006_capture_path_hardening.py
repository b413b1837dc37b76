"""Capture path v3: its own schema, a lock no login can take, seq-only NOTIFY, durable commits, guarded logs.

Why each: docs/adr/0007-capture-path-hardening.md (issue 11).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from migrations.sqlfiles import run_sql_files

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

FILES = (
    "v6/01_schema.sql",
    "v6/02_hub_append_event_v3.sql",
    "v6/03_hub_trades_event_v3.sql",
    "v6/04_hub_logs_event_v3.sql",
    "v6/05_hub_notify_v3.sql",
    "v6/06_hub_prune_logs_v1.sql",
    "v6/07_logs_append_only.sql",
    "v6/08_triggers.sql",
)


def upgrade() -> None:
    run_sql_files(*FILES)


def downgrade() -> None:
    run_sql_files("v6/downgrade.sql")
