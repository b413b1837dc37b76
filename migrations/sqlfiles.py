"""Run the plain .sql files of sql/ from Alembic revisions.

Online, a file goes to asyncpg's simple-query protocol in one call (a prepared
statement cannot hold several statements, and SQLAlchemy would read `:name` as
a bind parameter). Offline (`zepix-hub sql`), the text is printed as is.
"""

from __future__ import annotations

from pathlib import Path

from alembic import context, op
from sqlalchemy import text
from sqlalchemy.util import await_only

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def run_sql_files(*names: str) -> None:
    """Execute sql/<name> for each name, in order, inside the revision's transaction."""
    for name in names:
        sql = (SQL_DIR / name).read_text()
        if context.is_offline_mode():
            # Backslash-escaped colons are emitted literally by text().
            op.execute(text(sql.replace(":", "\\:")))
            continue
        raw = op.get_bind().connection.dbapi_connection
        assert raw is not None
        await_only(raw.driver_connection.execute(sql))  # type: ignore[attr-defined]
