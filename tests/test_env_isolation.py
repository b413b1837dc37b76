"""HUB_* variables in the environment of whoever runs the suite never reach the hubs the tests start."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings
from tests.env_probe import POISON
from tests.hubs import SUITE_KNOBS, hub_variable, nested_pytest
from tests.pg import PgServer


def test_no_suite_knob_is_a_hub_setting() -> None:
    settings = {f"HUB_{name.upper()}" for name in Settings.model_fields}
    assert not SUITE_KNOBS & settings
    assert all(hub_variable(name) for name in settings | {"DATABASE_URL", "HUB_TOKEN", "HUB_BENCH_JSON"})
    assert not hub_variable("HUB_TEST_DATABASE_URL")


async def test_hubs_started_by_the_suite_ignore_the_callers_hub_variables(pg: PgServer, tmp_path: Path) -> None:
    """A pytest run with poisonous HUB_* variables in its environment: its in-process hub, its hub process
    and its CLI run all behave as the tests configured them (tests/env_probe.py shows it from outside)."""
    code, text = await nested_pytest(tmp_path / "probe", "tests/env_probe.py",
                                     HUB_TEST_DATABASE_URL=pg.admin_dsn, **POISON)
    assert code == 0, f"a hub started by the suite read the caller's HUB_* variables:\n{text[-4000:]}"
    assert re.search(r"\b4 passed\b", text), text[-2000:]
    assert "ignored from the environment" in text and "HUB_JWT_AUDIENCE" in text, text[-3000:]
