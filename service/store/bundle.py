"""Where the files that ship beside the code live: alembic.ini, migrations/ and sql/.

A checkout keeps them at the repository root; a wheel carries them as package data under `service/_db/`
(pyproject.toml maps the root there). `root()` finds whichever of the two this `service` came with.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from ..errors import DatabaseSetupError

#: The package-data folder of an installed wheel (pyproject.toml: [tool.setuptools.package-dir]).
BUNDLED = "_db"


@functools.cache
def root() -> Path:
    """The directory holding alembic.ini, migrations/ and sql/.

    Raises DatabaseSetupError when neither the wheel's copy nor a checkout has them (a broken install).
    """
    package = resources.files("service")
    # Alembic and the SQL readers need real files: a zipped install (zipimport) has none to offer.
    candidates = [Path(str(package / BUNDLED)), Path(str(package)).parent]
    for candidate in candidates:
        if all((candidate / name).exists() for name in ("alembic.ini", "migrations", "sql")):
            return candidate
    raise DatabaseSetupError(f"alembic.ini, migrations/ and sql/ are missing beside {package}: "
                             "reinstall zepix-hub (pip install zepix-hub, or pip install -e . in a checkout)")


def sql_dir() -> Path:
    return root() / "sql"


def alembic_ini() -> Path:
    return root() / "alembic.ini"


def migrations_dir() -> Path:
    return root() / "migrations"
