"""``veil demo`` (what ``make demo`` runs) completes and cleans up its server."""

from __future__ import annotations

import pytest

from veil.demo import run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo() == 0
    out = capsys.readouterr().out
    assert "PermissionDenied" in out and "approved" in out and "node server stopped" in out
    assert "matches the hospital's true column means" in out
    assert "node accepts crypto provider trusted-dealer" in out  # the owner approved the dealer
    assert "matches; the hospital never saw her weights" in out  # the MPC step ran
