#!/usr/bin/env python
"""Federated simulation: one round of many in-process clients, per-client Python loop vs batched cohort.

``veil.fl.simulation.simulate`` trains the clients of a round either one after the other
(``batched=False``) or as one ``vmap`` over their stacked parameters (``batched=True``); both
compute the same parameters (tests/fl/test_simulation.py). This measures a round of FedAvg
at 100 and 1,000 clients (a 64-32-10 MLP, 20 examples each, one local epoch of batch 10),
reports medians over rounds, the speed-up, and the round's framework overhead outside the
clients' training.

Usage::

    python benchmarks/fl_simulation.py               # ~1 min, appends to RESULTS.md
    python benchmarks/fl_simulation.py --quick --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from remote_ops import append_results, console, machine, med  # noqa: E402
from rich.table import Table  # noqa: E402
from torch import nn  # noqa: E402

from veil.fl import FedAvg  # noqa: E402
from veil.fl.simulation import simulate  # noqa: E402

RESULTS = Path(__file__).parent / "RESULTS.md"


def _clients(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(n)
    return [(torch.rand(20, 64, generator=gen), torch.randint(0, 10, (20,), generator=gen))
            for _ in range(n)]  # fmt: skip


def _round_seconds(n: int, batched: bool, rounds: int) -> float:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    hist = simulate(model, _clients(n), strategy=FedAvg(min_fit_clients=n), rounds=rounds + 1,
                    batch_size=10, lr=0.05, batched=batched)  # fmt: skip
    return med([h["seconds"] for h in hist[1:]])  # the first round warms up


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer clients and rounds (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes, rounds = ((20, 100), 2) if args.quick else ((100, 1000), 5)
    t0 = time.perf_counter()
    rows = []
    for n in sizes:
        loop = _round_seconds(n, False, rounds)
        batched = _round_seconds(n, True, rounds)
        rows.append((n, loop, batched))
    elapsed = time.perf_counter() - t0
    table = Table(
        title=f"federated simulation, one FedAvg round ({'quick' if args.quick else 'full'})"
    )
    for h in ("clients", "per-client loop", "batched cohort", "speed-up"):
        table.add_column(h, justify="right")
    for n, loop, batched in rows:
        table.add_row(f"{n:,}", f"{loop * 1e3:,.1f} ms", f"{batched * 1e3:,.1f} ms",
                      f"{loop / batched:.1f}x")  # fmt: skip
    console.print(table)
    if not args.no_write:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [f"## federated simulation — {now} ({'quick' if args.quick else 'full'})", ""]
        lines += [f"- **{k}**: {v}" for k, v in machine().items()]
        lines += [f"- **run time**: {elapsed:.0f} s", "",
                  "64-32-10 MLP, 20 examples per client, 1 local epoch of batch 10, FedAvg over "
                  "all clients; medians over rounds after a warm-up round.", "",
                  "| clients | per-client loop | batched cohort | speed-up |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {n:,} | {lo * 1e3:,.1f} ms | {b * 1e3:,.1f} ms | {lo / b:.1f}× |"
                  for n, lo, b in rows]  # fmt: skip
        append_results(RESULTS, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
