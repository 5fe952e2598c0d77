"""The benchmark script keeps running (numbers are reported, not asserted)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_remote_ops_benchmark_runs_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "remote_ops.py"), "--quick", "--no-write", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    text = json.dumps(data)
    for row in ("VirtualWorker", "loopback", "send+get", "training", "request"):
        assert row in text, row


@pytest.mark.slow
def test_plans_benchmark_runs_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "plans.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "plans.py"), "--quick", "--no-write", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    names = " ".join(r["name"] for r in rows)
    for row in ("per-op", "pipelined", "plan", "VirtualWorker", "local torch", "plan repeat"):
        assert row in names, row
    assert all("DIFFERS" not in r["note"] for r in rows)  # the plan trains as local does


@pytest.mark.slow
def test_device_benchmark_runs_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "device.py"), "--quick", "--no-write", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    names = [r["name"] for r in json.loads(out.read_text())["rows"]]
    assert [n.split()[0] for n in names] == ["MLP", "LeNet-5", "device"]


@pytest.mark.slow
def test_fl_simulation_benchmark_runs_quick_mode() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fl_simulation.py"), "--quick", "--no-write"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "batched cohort" in proc.stdout and "speed-up" in proc.stdout


@pytest.mark.slow
def test_fl_benchmark_runs_quick_mode_without_flower(tmp_path: Path) -> None:
    out = tmp_path / "fl.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fl.py"), "--quick", "--no-write", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert "not measured" in data["flower"]
    names = " ".join(r["name"] for r in data["rows"])
    for row in ("simulation round", "start-up", "framework overhead", "peak RSS",
                "secure aggregation", "deployed"):  # fmt: skip
        assert row in names, row
    assert all(r["flower"] is None for r in data["rows"])  # nothing invented for Flower
    (deployed,) = [r for r in data["rows"] if "deployed" in r["name"]]
    assert deployed["veil"] is not None and deployed["veil"] > 0  # three node servers ran


@pytest.mark.slow
def test_keras_benchmark_runs_quick_mode(tmp_path: Path) -> None:
    if importlib.util.find_spec("keras") is None:  # found, not imported: it runs in the child
        pytest.skip("Keras is not installed: pip install 'veil[keras]'")
    out = tmp_path / "keras.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "keras.py"), "--quick", "--no-write", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    names = " ".join(r["name"] for r in rows)
    for row in ("local", "loopback node", "private data", "VirtualWorker", "upload"):
        assert row in names, row
    assert all("DIFFER" not in r["note"] for r in rows)  # remote fit trains as local does
