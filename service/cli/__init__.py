"""The zepix-hub command line (console entry point `service.cli:main`); the commands live in service/cli/main.py.

The top of the house: it may import every other package, and nothing imports it (docs/adr/0012-concern-packages.md).
"""

from .main import main as main
