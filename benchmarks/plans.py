#!/usr/bin/env python
"""Benchmarks of plans: a computation run op by op, pipelined, and as one plan message.

Two sets of rows, each measured in one run against baselines measured in the same run
(interleaved with them, so drift hits all alike), reported as medians:

A. A 50-op chain (matmul, mul, add, tanh, sub, ten times over) on a 16x16 float32 tensor,
   ending with one ``.get()``: per op on a client with ``pipeline=False`` (50 round trips),
   the same code on a pipelining client (the ops ride with the ``get``), and as a plan
   (``plan(ptr).get()``: one message for the 50 ops, one for the ``get``). On a node
   server over loopback (in its own process; targets: plan >= 10x faster than per op, and no slower than
   pipelined), and on a VirtualWorker (in process) for reference; plain torch too.
B. 100 SGD steps (momentum 0.9) of a 20-64-10 MLP on one batch of 64 (fixed seed),
   loss fetched at the end: local torch (the baseline), eager on a loopback node
   (``RemoteOptimizer``, pipelining on), and as a plan run with ``repeat=100`` (one
   message). Target: the plan <= 1.2x local. The plan's final loss is checked against
   local's (within 1e-5).

Usage::

    python benchmarks/plans.py                    # full run (~1 min on 2 cores), appends to RESULTS.md
    python benchmarks/plans.py --quick --no-write # smoke test, a few seconds
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812
from remote_ops import (  # noqa: E402
    OWNER,
    OWNER_PW,
    append_results,
    console,
    interleaved,
    machine,
    med,
    node_subprocess,
)
from rich.table import Table  # noqa: E402
from torch import nn  # noqa: E402

import veil  # noqa: E402
from veil.serde.messages import GetObject  # noqa: E402
from veil.serde.tensors import tensor_from_data  # noqa: E402

CHAIN_ROUNDS = 10  # x (matmul, mul, add, tanh, sub) = 50 ops
SIDE = 16
IN, HIDDEN, OUT, BATCH = 20, 64, 10, 64
LR, MOMENTUM = 0.1, 0.9
LOSS_TOL = 1e-5


@dataclass(frozen=True)
class Config:
    chain_batch: int  # back-to-back runs of the chain per timing sample
    chain_rounds: int  # timing samples per variant
    steps: int  # training steps per loop (row set B)
    train_reps: int  # timed loops per variant (after one warm-up loop)

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(1, 3, 20, 1)
        return cls(4, 60, 100, 21)


@dataclass
class Row:
    name: str
    value: float  # median, ms
    ratio: float | None  # the compared figure (see `versus`), None for a plain figure
    versus: str  # what the ratio is: "per-op / plan", "vs local", ...
    target: str  # "≥ 10×", "≤ 1.2×", or "" (reference row)
    ok: bool | None  # None: no target
    note: str = ""


# ----------------------------------------------------------------------------- row set A
def chain(x: Any) -> Any:
    """50 small ops; tanh keeps the values bounded. The same code runs on tensors,
    pointers, and (traced) in the plan."""
    for _ in range(CHAIN_ROUNDS):
        y = x @ x
        y = y * 0.01
        y = y + x
        y = torch.tanh(y)
        x = y - 0.1
    return x


def rows_chain(cfg: Config, url: str) -> list[Row]:
    x = torch.randn(SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    expected = chain(x)
    plan = veil.plan(chain).build(x)
    assert plan.spec is not None and len(plan.spec.ops) == 5 * CHAIN_ROUNDS
    per_op = veil.connect(url, email=OWNER, password=OWNER_PW, pipeline=False)
    piped = veil.connect(url, email=OWNER, password=OWNER_PW, pipeline=True)
    vw = veil.VirtualWorker("bench-plans-vw")  # VirtualWorkers do not pipeline by default
    vw_piped = veil.VirtualWorker(node=vw.node)  # a second client of the same in-process node
    vw_piped.pipeline = True  # the switch network clients turn on (veil.pointers.remote)
    try:
        xs = {w: x.send(w) for w in (per_op, piped, vw, vw_piped)}
        plan.send(piped, vw_piped)
        fns: dict[str, Callable[[], Any]] = {
            "torch": lambda: chain(x),
            "node per-op": lambda: chain(xs[per_op]).get(),
            "node pipelined": lambda: chain(xs[piped]).get(),
            "node plan": lambda: plan(xs[piped]).get(),
            "vw per-op": lambda: chain(xs[vw]).get(),
            "vw pipelined": lambda: chain(xs[vw_piped]).get(),
            "vw plan": lambda: plan(xs[vw_piped]).get(),
        }
        wrong = [k for k, fn in fns.items() if not torch.allclose(fn(), expected, atol=1e-5)]
        if wrong:
            raise RuntimeError(f"the chain gave a different result for {wrong}")
        t = interleaved(fns, batch=cfg.chain_batch, rounds=cfg.chain_rounds, warmup=3)
    finally:
        for w in (per_op, piped):
            w.close()
    ms = {k: med(v) * 1e3 for k, v in t.items()}
    rows = [Row("50-op chain, plain torch", ms["torch"], None, "", "", None,
                f"{SIDE}x{SIDE} float32; {CHAIN_ROUNDS} x (matmul, mul, add, tanh, sub); "
                "reference for the rows below")]  # fmt: skip
    for where, label in (("node", "loopback node"), ("vw", "VirtualWorker")):
        plan_ms = ms[f"{where} plan"]
        targets = {"per-op": ("≥ 10×", 10.0), "pipelined": ("≥ 1×", 1.0)} if where == "node" else {}
        rows.append(Row(f"50-op chain, {label}: plan", plan_ms, None, "", "", None,
                        "plan(ptr).get(): the 50 ops in one message, then the get"))  # fmt: skip
        for way, how in (("per-op", "pipeline=False: 50 round trips + get"),
                         ("pipelined", "pipeline=True: the 50 ops ride with the get")):  # fmt: skip
            v = ms[f"{where} {way}"]
            ratio = v / plan_ms
            target, want = targets.get(way, ("", 0.0))
            ok = round(ratio, 2) >= want if target else None
            rows.append(Row(f"50-op chain, {label}: {way}", v, ratio, f"{way} / plan", target, ok,
                            how))  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- row set B
def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))


def _sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, IN, generator=gen), torch.randint(0, OUT, (BATCH,), generator=gen)


def train(model: Any, opt: Any, x: Any, y: Any, steps: int) -> Any:
    """The loop, the same for local and eager remote; returns the last loss (a tensor or
    a pointer), read once at the end."""
    loss = None
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return loss


def _train_plan() -> tuple[veil.Plan, nn.Module]:
    model = _mlp()
    opt = _sgd(model.parameters())

    @veil.plan
    def train_step(x: Any, y: Any) -> Any:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return train_step, model


def rows_training(cfg: Config, url: str) -> list[Row]:
    x, y = _data()
    client = veil.connect(url, email=OWNER, password=OWNER_PW, pipeline=True)
    vw = veil.VirtualWorker("bench-plans-train")
    plan, plan_model = _train_plan()
    plan.build(x, y)
    init = {k: v.clone() for k, v in plan_model.state_dict().items()}
    times: dict[str, list[float]] = {"local": [], "eager": [], "plan": [], "vw plan": [],
                                     "private plan": []}  # fmt: skip
    # the same loop on a dataset's private data, under an approved plan request: every op
    # through the node's privacy rules (the path federated learning takes)
    owner = veil.VirtualWorker("bench-plans-private")
    owner.datasets.create("train", private={"x": x, "y": y},
                          mock={"x": torch.zeros_like(x), "y": torch.zeros_like(y)})  # fmt: skip
    owner.create_user("ds@bench.local", "bench-password-1")
    sci = owner.login("ds@bench.local", "bench-password-1")
    plan.send(sci)
    req = plan.request(sci, dataset="train", reason="benchmark", runs=10**6,
                       inputs={"x": "x", "y": "y"})  # fmt: skip
    owner.requests.approve(req.id)
    losses: dict[str, float] = {}
    steps = cfg.steps
    try:
        xs = {w: (x.send(w), y.send(w)) for w in (client, vw)}
        xs[sci] = (sci.datasets["train"]["x"].private, sci.datasets["train"]["y"].private)

        def local() -> float:
            model = _mlp()
            opt = _sgd(model.parameters())
            t0 = time.perf_counter()
            loss = float(train(model, opt, x, y, steps).item())
            times["local"].append(time.perf_counter() - t0)
            return loss

        def eager() -> float:
            model = _mlp().send(client)
            opt = veil.RemoteOptimizer(torch.optim.SGD, model.parameters(), lr=LR,
                                       momentum=MOMENTUM)  # fmt: skip
            client.flush()  # the model and optimizer are on the node before the clock starts
            t0 = time.perf_counter()
            loss = float(train(model, opt, *xs[client], steps).get())
            times["eager"].append(time.perf_counter() - t0)
            return loss

        def planned(worker: Any, key: str) -> float:
            plan_model.load_state_dict(init)
            plan.send(worker)  # a fresh copy of the model and a fresh optimizer on the node
            worker.flush()
            t0 = time.perf_counter()
            out = plan.run(*xs[worker], repeat=steps)
            if worker is sci:  # private: its owner reads it (the scientist may not)
                loss = float(tensor_from_data(owner.call(GetObject(out.id)).value))
            else:
                loss = float(out.get())
            times[key].append(time.perf_counter() - t0)
            return loss

        # The loops take turns, so that all of them see the same machine.
        for rep in range(cfg.train_reps + 1):  # the first round is a warm-up
            gc.collect()
            losses = {
                "local": local(),
                "eager": eager(),
                "plan": planned(client, "plan"),
                "vw plan": planned(vw, "vw plan"),
                "private plan": planned(sci, "private plan"),
            }
            if rep == 0:
                for v in times.values():
                    v.clear()
    finally:
        client.close()
    diff = {k: abs(v - losses["local"]) for k, v in losses.items()}
    same = {k: d <= LOSS_TOL for k, d in diff.items()}
    loc = med(times["local"]) * 1e3

    def check(key: str) -> str:
        verdict = "same as local" if same[key] else "DIFFERS from local"
        return f"final loss {losses[key]:.6f}, {verdict} (|Δ| = {diff[key]:.1e})"

    what = f"{IN}-{HIDDEN}-{OUT} MLP, {steps} SGD steps (momentum {MOMENTUM}) of batch {BATCH}"
    rows = [Row(f"training, {steps} steps: local torch", loc, None, "", "", None,
                f"{what}; final loss {losses['local']:.6f}; baseline")]  # fmt: skip
    for key, label, target, note in (
        ("eager", "eager, loopback node", "",
         "RemoteOptimizer, pipelining on (ops ride with the flushes and the final get)"),
        ("plan", "plan repeat, loopback node", "≤ 1.2×",
         f"plan.run(x, y, repeat={steps}).get(): one message for the loop, one for the get"),
        ("vw plan", "plan repeat, VirtualWorker", "", "the same plan in process (reference)"),
        ("private plan", "plan repeat on private data, VirtualWorker", "",
         "an approved plan on a dataset's private data: each op through the privacy rules"),
    ):  # fmt: skip
        v = med(times[key]) * 1e3
        ratio = v / loc
        ok = (round(ratio, 2) <= 1.2 and same[key]) if target else None
        rows.append(Row(f"training, {steps} steps: {label}", v, ratio, "vs local", target, ok,
                        f"{note}; {v / steps * 1e3:.0f} µs/step; {check(key)}"))  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- report
def _cells(r: Row) -> list[str]:
    ratio = "—" if r.ratio is None else f"{r.ratio:.2f}× ({r.versus})"
    result = "" if r.ok is None else ("PASS" if r.ok else "MISS")
    return [r.name, f"{r.value:,.2f} ms", ratio, r.target or "—", result, r.note]


HEADERS = ["benchmark", "median", "ratio", "target", "", "notes"]


def print_table(rows: list[Row], title: str) -> None:
    table = Table(title=title)
    table.add_column("#", justify="right")
    for h in HEADERS[:-1]:
        table.add_column(h, justify="right" if h in ("median", "ratio") else "left")
    for i, r in enumerate(rows, 1):
        c = _cells(r)[:-1]
        if r.ok is not None:
            c[4] = "[green]PASS[/green]" if r.ok else "[bold red]MISS[/bold red]"
        table.add_row(str(i), *c)
    console.print(table)
    for i, r in enumerate(rows, 1):
        if r.note:
            console.print(f"  {i}. {r.note}", highlight=False)


def markdown(rows: list[Row], info: dict[str, str], mode: str, elapsed: float) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## plans — {now} ({mode})", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += [f"- **run time**: {elapsed:.0f} s", ""]
    lines.append("| " + " | ".join(h or "result" for h in HEADERS) + " |")
    lines.append("|" + "---|" * len(HEADERS))
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def run(cfg: Config) -> list[Row]:
    """Both row sets against one node server in a process of its own.

    Not ``serve_in_thread``: with the node in this process, its event loop, the client and
    the websockets reader thread share one GIL, and on this shared 2-core box a round trip
    then took 1 ms or 10-80 ms at random (a GIL holder descheduled by the OS stalls the
    others), so medians measured the scheduler; in a subprocess the same calls were steady.
    """
    rows: list[Row] = []
    with node_subprocess() as (url, _pid):
        for label, step in (("A 50-op chain", lambda: rows.extend(rows_chain(cfg, url))),
                            ("B training", lambda: rows.extend(rows_training(cfg, url)))):  # fmt: skip
            t0 = time.perf_counter()
            step()
            console.log(f"{label}: {time.perf_counter() - t0:.1f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, 20 steps")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md",
                        help="markdown file to append to (default: benchmarks/RESULTS.md)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1, as in remote_ops.py)")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    cfg = Config.make(args.quick)
    mode = "quick" if args.quick else "full"
    info = machine()  # before the run, so the load average says what else was running
    t0 = time.perf_counter()
    rows = run(cfg)
    elapsed = time.perf_counter() - t0
    print_table(rows, f"veil plans ({mode}, {info['cpu']}, {info['cores']} cores)")
    if args.json:
        args.json.write_text(json.dumps({"mode": mode, "machine": info,
                                         "rows": [asdict(r) for r in rows]}, indent=2))  # fmt: skip
    if not args.no_write:
        append_results(args.results, markdown(rows, info, mode, elapsed))
        console.print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
