"""The DP-SGD benchmark keeps running (figures are reported, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dp_sgd_benchmark_runs_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dp_sgd.py"), "--quick", "--no-write", "--json", str(out),
         "--models", "mlp,lstm"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["mlp", "lstm"]
    assert all(
        r["veil"]["samples_per_s"] > 0 and r["non_private"]["samples_per_s"] > 0 for r in rows
    )
