"""Run only by test_ci_guards (not named test_*.py): one test per backend marker, and one for both."""

from __future__ import annotations

import pytest


@pytest.mark.backend("server", reason="probe: needs the server")
def test_server_only() -> None:
    assert True


@pytest.mark.backend("embedded", reason="probe: needs the embedded one")
def test_embedded_only() -> None:
    assert True


def test_everywhere() -> None:
    assert True
