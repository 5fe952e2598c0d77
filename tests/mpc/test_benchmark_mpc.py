"""benchmarks/mpc.py keeps running (numbers are reported, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_mpc_benchmark_runs_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "mpc.py"), "--quick", "--no-write",
           "--crypten", "", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    names = {
        (r["name"].split(",")[0], r["parties"], r["deploy"], r["security"]) for r in data["rows"]
    }
    for row in [("mul 1e+03", 2, "in-process", "semi-honest"), ("matmul 16", 2, "loopback", "semi-honest"),
                ("relu 1e+02", 2, "in-process", "malicious"), ("LeNet inference", 2, "in-process", "semi-honest"),
                ("MLP training step", 2, "in-process", "semi-honest")]:  # fmt: skip
        assert row in names, row
    mul = next(r for r in data["rows"] if r["name"] == "mul 1e+03" and r["deploy"] == "in-process")
    assert mul["bytes_per_party"] == mul["min_bytes"] == 16_000 and mul["rounds"] == 1
