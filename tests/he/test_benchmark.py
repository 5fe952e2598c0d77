"""benchmarks/he.py keeps running in quick mode (figures are reported, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("tenseal", reason="CKKS needs TenSEAL: pip install 'veil[he]'")
pytest.importorskip(
    "phe", reason="the Paillier baseline is python-paillier: pip install 'veil[bench]'"
)


@pytest.mark.slow
def test_he_benchmark_runs_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "he.py"), "--quick", "--no-write", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    names = [r["name"] for r in json.loads(out.read_text())["rows"]]
    assert any("matvec" in n for n in names) and any("Paillier" in n for n in names)
    assert sum(n.startswith("CKKS") for n in names) == 6
