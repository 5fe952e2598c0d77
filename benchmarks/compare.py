#!/usr/bin/env python
"""``make bench``, ``bench-mpc`` and ``bench-he`` for this checkout and another commit, side by side.

For a change that should not change speed (a refactoring): each round runs every chosen
benchmark script once per tree, in a fresh process whose ``src/`` comes first on the path
(the other tree is a ``git worktree`` of ``--ref``, made and removed here), alternating
which tree goes first round by round so that both see the same machine. The table gives,
per row, the median over rounds of veil's own time in each tree and their ratio (new /
old; above 1: slower now), and the same ratio for veil's time divided by the baseline the
script measured in the same run (plain torch, TenSEAL, a raw socket): on a shared machine
the baselines drift with the load, and this ratio cancels that drift. The figures are
appended to ``RESULTS.md``.

Usage::

    python benchmarks/compare.py --ref 930a604                       # all three, 2 rounds
    python benchmarks/compare.py --ref HEAD~1 --bench mpc --rounds 3
    python benchmarks/compare.py --ref HEAD --quick --no-write       # smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Benchmark name -> (script, extra arguments for a comparison run).
BENCHES = {
    "remote_ops": ("remote_ops.py", []),
    "mpc": ("mpc.py", ["--crypten", ""]),  # CrypTen is not what is compared
    "he": ("he.py", []),
}
#: The field of each row that holds veil's own figure (lower is better), and its baseline's.
_VALUE = ("veil_ms", "value")
_BASELINE = ("torch_ms", "baseline")


def _key(row: dict[str, object]) -> str:
    parts = [str(row["name"])]
    for f in ("parties", "deploy", "security"):
        if f in row:
            parts.append(str(row[f]))
    return " / ".join(parts)


def _value(row: dict[str, object]) -> float | None:
    for f in _VALUE:
        v = row.get(f)
        if isinstance(v, int | float):
            return float(v)
    return None


def _baseline(row: dict[str, object]) -> float | None:
    for f in _BASELINE:
        v = row.get(f)
        if isinstance(v, int | float) and v > 0:
            return float(v)
    return None


def run_once(
    tree: Path, bench: str, quick: bool, out: Path
) -> dict[str, tuple[float, float | None]]:
    """One run of one benchmark in ``tree``: row key -> (veil's figure, veil / baseline)."""
    script, extra = BENCHES[bench]
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    cmd = [sys.executable, str(tree / "benchmarks" / script), "--no-write", "--json", str(out),
           *extra, *(["--quick"] if quick else [])]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"{bench} in {tree} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    rows = json.loads(out.read_text())["rows"]
    out_rows = {}
    for r in rows:
        v, b = _value(r), _baseline(r)
        if v is not None:
            out_rows[_key(r)] = (v, v / b if b else None)
    return out_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", required=True, help="the commit to compare with (e.g. HEAD~1)")
    parser.add_argument("--bench", nargs="+", choices=sorted(BENCHES), default=sorted(BENCHES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the scripts' --quick sizes")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)

    sha = subprocess.run(["git", "rev-parse", "--short", args.ref], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="veil-compare-"))
    old = tmp / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), sha], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    got: dict[str, dict[str, dict[str, list[tuple[float, float | None]]]]] = {}
    try:
        for rnd in range(args.rounds):
            trees = [("new", ROOT), ("old", old)]
            if rnd % 2:
                trees.reverse()
            for bench in args.bench:
                for side, tree in trees:
                    print(f"round {rnd + 1}/{args.rounds}: {bench} ({side})", flush=True)
                    res = run_once(tree, bench, args.quick, tmp / f"{bench}-{side}-{rnd}.json")
                    for key, v in res.items():
                        got.setdefault(bench, {}).setdefault(key, {}).setdefault(side, []).append(v)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT,
                       capture_output=True)  # fmt: skip

    lines = [
        f"| benchmark | row | {sha} (old) | {head} (new) | new / old | new / old, each vs its "
        "same-run baseline |",
        "|---|---|---|---|---|---|",
    ]
    worst = 0.0
    for bench, rows in got.items():
        for key, sides in rows.items():
            if "old" not in sides or "new" not in sides:
                continue
            o = statistics.median(v for v, _ in sides["old"])
            n = statistics.median(v for v, _ in sides["new"])
            ratio = n / o if o else float("nan")
            on = [r for _, r in sides["old"] if r is not None]
            nn = [r for _, r in sides["new"] if r is not None]
            rel = statistics.median(nn) / statistics.median(on) if on and nn else None
            worst = max(worst, rel if rel is not None else ratio)
            shown = f"{rel:.2f}×" if rel is not None else "—"
            lines.append(f"| {bench} | {key} | {o:.4g} | {n:.4g} | {ratio:.2f}× | {shown} |")
    table = "\n".join(lines)
    print(table)
    print(f"slowest row (vs its baseline where it has one): {worst:.2f}× of {sha}")
    if not args.no_write:
        when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        with args.results.open("a") as f:
            f.write(
                f"\n## compare.py {sha} → {head} ({when}, {platform.machine()}, "
                f"{os.cpu_count()} cores, {args.rounds} rounds{', quick' if args.quick else ''})\n\n"
                f"Medians of veil's own figure per row (ms or µs, as each script reports it), and of that figure over the baseline measured in the same run.\n\n"
                f"{table}\n\nslowest row (vs its baseline where it has one): {worst:.2f}× of {sha}\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
