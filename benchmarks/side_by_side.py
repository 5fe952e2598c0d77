#!/usr/bin/env python
"""Rows of ``remote_ops.py`` for this checkout and another commit, side by side in one run.

Each round runs the chosen rows once for every tree, in a fresh process per tree (its own
``src/`` and ``benchmarks/remote_ops.py`` first on the path), alternating the order round by
round, so both trees see the same machine. The table gives the median over rounds of each
row's value and target metric per tree, and their ratio; the figures are appended to
``RESULTS.md``.

Usage::

    python benchmarks/side_by_side.py --ref c50c89c              # row 1, 5 rounds
    python benchmarks/side_by_side.py --ref HEAD~3 --rows 1 2 4 --rounds 3
    python benchmarks/side_by_side.py --ref c50c89c --quick --no-write   # smoke test
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

#: Row number -> the remote_ops call producing it (and whether it needs a loopback node).
ROWS = {
    1: "[remote_ops.row_virtual_op(cfg)]",
    2: "_with_node(lambda url: [remote_ops.row_loopback_op(cfg, url)])",
    3: "_big()",
    4: "_training()",
}

_CHILD = r"""
import json, sys, dataclasses, torch
sys.path[:0] = [{src!r}, {bench!r}]
import remote_ops
torch.set_num_threads(1)
cfg = remote_ops.Config.make({quick!r})

def _with_node(fn):
    from veil.node import Node
    from veil.node.server.runner import serve_in_thread
    node = Node("bench", owner_email=remote_ops.OWNER, owner_password=remote_ops.OWNER_PW)
    with serve_in_thread(node) as url:
        return fn(url)

def _training():
    import veil
    def run(url):
        client = veil.connect(url, email=remote_ops.OWNER, password=remote_ops.OWNER_PW)
        try:
            return remote_ops.rows_training(cfg, client)
        finally:
            client.close()
    return _with_node(run)

def _big():
    import veil
    def run(url):
        client = veil.connect(url, email=remote_ops.OWNER, password=remote_ops.OWNER_PW)
        try:
            return [remote_ops.row_big_transfer(cfg, client)]
        finally:
            client.close()
    return _with_node(run)

rows = {call}
print("ROWS " + json.dumps([dataclasses.asdict(r) for r in rows]))
"""


def _tree(ref: str, where: Path) -> Path:
    path = where / ref.replace("/", "_")
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), ref],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


def _run(tree: Path, rows: list[int], quick: bool) -> list[dict[str, object]]:
    call = " + ".join(ROWS[r] for r in rows)
    code = _CHILD.format(src=str(tree / "src"), bench=str(tree / "benchmarks"), quick=quick,
                         call=call)  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=1800, check=False)  # fmt: skip
    line = next((x for x in out.stdout.splitlines() if x.startswith("ROWS ")), None)
    if line is None:
        raise RuntimeError(f"benchmark in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[5:])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", required=True, help="the commit to compare with (git ref)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1], choices=sorted(ROWS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="veil-sbs-") as tmp:
        other = _tree(args.ref, Path(tmp))
        trees = {"this checkout": ROOT, args.ref: other}
        results: dict[str, list[list[dict[str, object]]]] = {k: [] for k in trees}
        try:
            for i in range(args.rounds):
                order = list(trees) if i % 2 == 0 else list(reversed(trees))
                for name in order:
                    results[name].append(_run(trees[name], args.rows, args.quick))
                    print(f"round {i + 1}/{args.rounds}: {name} done", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)],
                           capture_output=True, check=False)  # fmt: skip

    lines = [
        f"| row | {args.ref}: value | this: value | this / {args.ref} | {args.ref}: metric "
        f"| this: metric | target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = [r["name"] for r in results["this checkout"][0]]
    for j, name in enumerate(names):

        def med(tree: str, key: str, j: int = j) -> float:
            return statistics.median(float(rnd[j][key]) for rnd in results[tree])  # type: ignore[arg-type]

        unit = results["this checkout"][0][j]["unit"]
        munit = results["this checkout"][0][j]["metric_unit"]
        target = results["this checkout"][0][j]["target"]
        old_v, new_v = med(args.ref, "value"), med("this checkout", "value")
        old_m, new_m = med(args.ref, "metric"), med("this checkout", "metric")
        lines.append(
            f"| {name} | {old_v:.1f} {unit} | {new_v:.1f} {unit} | {new_v / old_v:.2f}× "
            f"| {old_m:.2f} {munit} | {new_m:.2f} {munit} | ≤ {target} {munit} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        mode = "quick" if args.quick else "full"
        head = (
            f"\n## side_by_side.py vs {args.ref}, {stamp} ({mode}, {args.rounds} rounds, "
            f"medians over rounds; {platform.machine()}, {os.cpu_count()} cores)\n\n"
        )
        with (HERE / "RESULTS.md").open("a") as f:
            f.write(head + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
