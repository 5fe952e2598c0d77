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


def _run_with_crypten(python: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "mpc.py"), "--quick", "--no-write",
           "--crypten", python]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_mpc_benchmark_refuses_a_crypten_on_another_torch(tmp_path: Path) -> None:
    """A side by side on two torch versions compares two int64 kernels: it must stop, loudly."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho '2.0.1+cpu 0.4.1'\n")
    fake.chmod(0o755)
    proc = _run_with_crypten(str(fake), tmp_path)
    assert proc.returncode != 0
    assert "runs torch 2.0.1+cpu" in proc.stderr and "Rebuild the side venv" in proc.stderr
    assert "mul 1e+03" not in proc.stdout  # stopped before measuring anything


def test_mpc_benchmark_refuses_a_missing_crypten_interpreter(tmp_path: Path) -> None:
    proc = _run_with_crypten(str(tmp_path / "nowhere" / "python"), tmp_path)
    assert proc.returncode != 0
    assert "no such interpreter" in proc.stderr and "benchmarks/README.md" in proc.stderr
