#!/usr/bin/env python
"""How much ``import veil`` costs over ``import torch``: fresh interpreters, alternated.

Issue 11's target: ``python -c "import veil"`` within 0.3 s of ``python -c "import torch"``
(veil imports torch; MPC, HE, DP and scipy load on first use). Prints medians over rounds
and the difference, and appends them to ``RESULTS.md``.

Usage::

    python benchmarks/import_time.py               # 15 rounds
    python benchmarks/import_time.py --rounds 3 --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_S = 0.3


def once(stmt: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", stmt], check=True)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {"import torch": [], "import veil": []}
    once("import veil")  # warm the file cache for both
    for i in range(args.rounds):
        order = list(times) if i % 2 == 0 else list(reversed(times))
        for stmt in order:
            times[stmt].append(once(stmt))
    torch_s, veil_s = (statistics.median(v) for v in times.values())
    diff = veil_s - torch_s
    verdict = "ok" if diff <= TARGET_S else "over target"
    table = (
        "| command | median (s) |\n|---|---|\n"
        f"| python -c 'import torch' | {torch_s:.3f} |\n"
        f"| python -c 'import veil' | {veil_s:.3f} |\n"
        f"| difference (target ≤ {TARGET_S} s) | {diff:.3f} ({verdict}) |\n"
    )
    print(table)
    if not args.no_write:
        when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        with args.results.open("a") as f:
            f.write(f"\n## import time ({when}, {platform.machine()}, {os.cpu_count()} cores, "
                    f"{args.rounds} rounds)\n\n{table}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
