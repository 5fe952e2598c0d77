#!/usr/bin/env python
"""Federated learning: veil.fl against Flower 1.42, same model, data and rounds, in the same run.

Rows: a simulation round at 10, 100 and 1,000 clients (``veil.fl.simulate``, batched cohort,
vs Flower's simulation engine, ``flwr.simulation.run_simulation`` on Ray), the start-up, the
framework overhead per round at 100 clients, peak RSS at 1,000 clients, secure aggregation of
a 1e4-float vector at 10 and 50 clients (``veil.fl.secagg`` vs Flower's ``SecAggPlusWorkflow``
+ ``secaggplus_mod``, the same degree and threshold), optionally veil's Ray backend at 1,000
clients, and deployed rounds on loopback (Flower: a SuperLink and two SuperNodes; veil: three
node servers, once ``veil.fl.Federation`` exists). Every workload runs in a fresh process
(``_fl_veil.py``, or ``_flower_bench.py`` under Flower's interpreter), veil's and Flower's
taking turns, so each has its own RSS high-water mark. The MLP (64-32-10), the digits and
their IID split, 1 local epoch of batch 32 are in ``_fl_common.py``, shared by both sides.

Usage::

    python benchmarks/fl.py --flower /work/flower-venv/bin/python   # 5-12 min, appends to RESULTS.md
    python benchmarks/fl.py                        # veil's figures only (~1 min; Flower not measured)
    python benchmarks/fl.py --quick --no-write     # smoke test, veil only, ~30 s
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from remote_ops import append_results, console, machine  # noqa: E402
from rich.table import Table  # noqa: E402

from veil.fl.secagg import suggested_degree  # noqa: E402

RESULTS = HERE / "RESULTS.md"


@dataclass
class Row:
    name: str
    veil: float | None  # seconds (or MiB when unit == "MiB")
    flower: float | None
    unit: str = "s"
    target: str = ""
    ok: bool | None = None  # None: no target, or it could not be checked
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """Flower / veil: how many times faster (or smaller) veil is."""
        return self.flower / self.veil if self.veil and self.flower and self.veil > 0 else None


# ----------------------------------------------------------------------------- running
def run_side(python: str, script: str, cfg: dict[str, Any], tag: str,
             timeout: float = 600) -> dict[str, Any]:  # fmt: skip
    """Run one workload in a fresh process; its ``TAG {json}`` line, or a RuntimeError with
    the end of its output."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent / "src"),
                                                       os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", RAY_DEDUP_LOGS="0")  # fmt: skip
    proc = subprocess.run([python, str(HERE / script), json.dumps(cfg)], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1 :])
    tail = (proc.stdout + proc.stderr)[-3000:]
    raise RuntimeError(f"{script} {cfg} exited {proc.returncode} without a result:\n{tail}")


def veil_side(cfg: dict[str, Any], python: str = sys.executable) -> dict[str, Any]:
    return run_side(python, "_fl_veil.py", cfg, "VEIL_RESULT")


def flower_versions(python: str) -> tuple[str, str]:
    """(torch, flwr) versions of Flower's interpreter."""
    code = "import torch, flwr; print(torch.__version__, flwr.__version__)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)  # fmt: skip
    if out.returncode:
        raise SystemExit(f"--flower {python} cannot import torch and flwr:\n{out.stderr[-2000:]}")
    torch_v, flwr_v = out.stdout.split()
    return torch_v, flwr_v


def ray_python(arg: str | None) -> str | None:
    """The interpreter for veil's Ray row: --ray, else this one if it has Ray, else None."""
    if arg:
        return arg
    code = "import ray"
    ok = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode
    return sys.executable if ok == 0 else None


# ------------------------------------------------------------ deployed veil (for the lead)
def deployed_veil_round(quick: bool) -> float | None:
    """veil deployed: three node servers on 127.0.0.1 (``veil node serve`` processes, SQLite),
    a third of the digits on each as a private dataset, a ``veil.fl.Federation`` with secure
    aggregation whose training plan each owner approved once; the median seconds per round
    after a warm-up round (``_fl_deployed_veil.py``)."""
    console.log("deployed on loopback: veil (3 node servers, secure aggregation)")
    try:
        res = veil_side({"mode": "deployed", "rounds": 2 if quick else 5, "nodes": 3})
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        console.print(f"deployed veil failed: {str(exc)[-500:]}")
        return None
    return float(res["round_s"])


# ----------------------------------------------------------------------------- rows
def simulation_rows(sizes: list[int], rounds: dict[int, int], flower: str | None,
                    ray_py: str | None) -> list[Row]:  # fmt: skip
    rows: list[Row] = []
    got: dict[tuple[str, int], dict[str, Any]] = {}
    for n in sizes:
        cfg = {"mode": "sim", "clients": n, "rounds": rounds[n]}
        console.log(f"simulation, {n} clients: veil")
        got["veil", n] = veil_side(cfg)
        if flower:
            console.log(f"simulation, {n} clients: Flower")
            got["flower", n] = run_side(flower, "_flower_bench.py", cfg, "FLOWER_RESULT")
    for n in sizes:
        v, f = got["veil", n], got.get(("flower", n))
        note = f"{rounds[n]} rounds, median after the first; accuracy after them: veil " + (
            f"{v['accuracy']:.2f}" + (f", Flower {f['accuracy']:.2f}" if f else "")
        )
        rows.append(Row(f"simulation round, {n:,} clients", v["round_s"],
                        f["round_s"] if f else None, note=note))  # fmt: skip
        if n == max(sizes):
            rows[-1].target = "≥ 10× faster"
            rows[-1].ok = rows[-1].ratio >= 10 if rows[-1].ratio else None
    mid = 100 if 100 in sizes else sizes[-1]
    v, f = got["veil", mid], got.get(("flower", mid))
    rows.append(Row(f"start-up, {mid} clients", v["startup_s"], f["startup_s"] if f else None,
                    note="call to the end of round 1, less one steady round (Flower: Ray, "
                         "actors, the apps; veil: the first cohort step; 0 when round 1 was no "
                         "slower than the others)"))  # fmt: skip
    fo = f["round_s"] - f["train_s"] if f else None
    over = v["round_s"] - v["train_s"]
    rows.append(Row(f"framework overhead per round, {mid} clients", over, fo, target="≤ 0.1 s",
                    ok=over <= 0.1,
                    note=f"round minus the clients' training, timed around it in the round: veil "
                         f"{v['train_s'] * 1e3:.1f} ms (the batched cohort)"
                         + (f", Flower {f['train_s'] * 1e3:.1f} ms (each client's local_sgd, "
                            "summed; 2 run at a time, so this flatters Flower)" if f else "")))  # fmt: skip
    big = max(sizes)
    v, f = got["veil", big], got.get(("flower", big))
    rows.append(Row(f"peak RSS, {big:,} clients", v["peak_self_mib"],
                    f["peak_tree_mib"] if f else None, unit="MiB",
                    note="VmHWM; veil: its one process; Flower: the sum over its "
                         f"{f['processes'] if f else '?'} processes (driver "
                         f"{f['peak_self_mib'] if f else 0:.0f} MiB + Ray's GCS, raylet, "
                         "workers; shared pages counted per process)"))  # fmt: skip
    if ray_py:
        console.log(f"simulation, {big} clients: veil on Ray")
        r = veil_side({"mode": "ray", "clients": big, "rounds": rounds[big]}, ray_py)
        rows.append(Row(f"simulation round on Ray, {big:,} clients", r["round_s"],
                        f["round_s"] if f else None,
                        note=f"veil backend='ray' (2-CPU local cluster, 2 tasks a round; "
                             f"ray.init {r['ray_init_s']:.1f} s, round 1 "
                             f"{r['rounds_s'][0]:.1f} s); Flower's engine is on Ray too"))  # fmt: skip
    else:
        console.print("veil on Ray: not measured (Ray not importable here; pass --ray PYTHON)")
    return rows


def secagg_rows(sizes: list[int], length: int, rounds: dict[int, int],
                flower: str | None) -> list[Row]:  # fmt: skip
    rows = []
    for n in sizes:
        k = suggested_degree(n)
        t = k // 2 + 1
        console.log(f"secure aggregation, {n} clients: veil")
        v = veil_side({"mode": "secagg", "clients": n, "length": length, "rounds": rounds[n],
                       "degree": k, "threshold": t, "drops": 3})  # fmt: skip
        f = None
        if flower:
            console.log(f"secure aggregation, {n} clients: Flower")
            f = run_side(flower, "_flower_bench.py", {"mode": "secagg", "clients": n,
                         "length": length, "rounds": rounds[n], "num_shares": k + 1,
                         "threshold": t}, "FLOWER_RESULT")  # fmt: skip
        big = n == max(sizes)
        rows.append(Row(f"secure aggregation, {n} clients × {length:,} floats", v["round_s"],
                        f["round_s"] if f else None, target="≤ 1 s" if big else "",
                        ok=v["round_s"] <= 1.0 if big else None,
                        note=f"{rounds[n]} rounds, median after the first; {k} neighbours, "
                             f"threshold {t} (Flower: num_shares {k + 1}, its own share "
                             f"included, reconstruction_threshold {t}); veil with 3 of the {n} "
                             f"dropping out: {v['dropout_round_s']:.2f} s"))  # fmt: skip
    return rows


def deployed_rows(quick: bool, flower: str | None) -> list[Row]:
    v = deployed_veil_round(quick)
    f = None
    note = "Flower not measured"
    if flower and not quick:
        console.log("deployed on loopback: Flower (SuperLink + 2 SuperNodes)")
        try:
            res = run_side(flower, "_flower_bench.py", {"mode": "deployed", "rounds": 3},
                           "FLOWER_RESULT", timeout=300)  # fmt: skip
            f, note = res["round_s"], res.get("note", "")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            note = f"Flower deployed failed: {str(exc)[-300:]}"
    note += "; veil: 3 node servers, one fl.fit and 4 SecAgg+ messages per node per round"
    if v is None:
        note += "; veil: failed (see above)"
    return [Row("deployed on loopback, per round", v, f, target="≤ 1 s",
                ok=v <= 1.0 if v is not None else None, note=note)]  # fmt: skip


# ----------------------------------------------------------------------------- report
def fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "—"
    if unit == "MiB":
        return f"{x:,.0f} MiB"
    return f"{x * 1e3:,.1f} ms" if x < 1 else f"{x:,.2f} s"


def cells(r: Row) -> list[str]:
    ratio = f"{r.ratio:.1f}×" if r.ratio else "—"
    result = "" if r.ok is None else ("PASS" if r.ok else "MISS")
    return [r.name, fmt(r.veil, r.unit), fmt(r.flower, r.unit), ratio, r.target, result, r.note]


HEADERS = ["benchmark", "veil", "Flower 1.42", "Flower / veil", "target", "result", "notes"]


def report(rows: list[Row], title: str, flower_note: str) -> None:
    table = Table(title=title)
    for h in HEADERS[:-1]:
        table.add_column(h, justify="left" if h in ("benchmark", "target") else "right")
    for r in rows:
        table.add_row(*cells(r)[:-1])
    console.print(table)
    for i, r in enumerate(rows, 1):
        console.print(f"  {i}. {r.name}: {r.note}", highlight=False)
    console.print(flower_note, highlight=False)


def markdown(rows: list[Row], info: dict[str, str], mode: str, elapsed: float,
             flower_note: str) -> str:  # fmt: skip
    import datetime as dt

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## federated learning vs Flower — {now} ({mode})", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += [f"- **Flower**: {flower_note}", f"- **run time**: {elapsed:.0f} s", "",
              "Digits MLP 64-32-10, IID split, FedAvg over all clients, 1 local epoch of batch "
              "32, lr 0.05; every workload in a fresh process; medians over rounds after the "
              "first.", ""]  # fmt: skip
    lines.append("| " + " | ".join(HEADERS) + " |")
    lines.append("|" + "---|" * len(HEADERS))
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flower", help="python of a venv with flwr[simulation]==1.42.0 and veil's "
                                     "torch (benchmarks/README.md); without it, veil only")  # fmt: skip
    ap.add_argument("--ray", help="python with Ray and veil for the Ray row (default: this one "
                                  "if it imports ray)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    flower_note = "not measured (no --flower PYTHON given)"
    if args.flower:
        torch_v, flwr_v = flower_versions(args.flower)
        if torch_v != torch.__version__:
            raise SystemExit(f"Flower's interpreter {args.flower} has torch {torch_v}, veil's has "
                             f"{torch.__version__}: install torch=={torch.__version__} there "
                             "(benchmarks/README.md) so both sides train with the same torch")  # fmt: skip
        flower_note = f"flwr {flwr_v}, torch {torch_v} ({args.flower}); simulation on Ray (2 CPUs)"
    mode = "quick" if args.quick else "full"
    info = machine()
    t0 = time.perf_counter()
    if args.quick:
        sizes, rounds, sa_sizes, sa_len, sa_rounds = [10, 100], {10: 3, 100: 3}, [10], 1000, {10: 2}
    else:
        # Flower takes minutes for a 1,000-client round and its first SecAgg+ round at 50
        # clients: fewer rounds there keep the whole run near ten minutes on 2 busy cores.
        sizes, rounds = [10, 100, 1000], {10: 5, 100: 5, 1000: 3}
        sa_sizes, sa_len, sa_rounds = [10, 50], 10_000, {10: 3, 50: 2}
    rows = simulation_rows(sizes, rounds, args.flower, ray_python(args.ray))
    rows += secagg_rows(sa_sizes, sa_len, sa_rounds, args.flower)
    rows += deployed_rows(args.quick, args.flower)
    elapsed = time.perf_counter() - t0
    report(rows, f"veil.fl vs Flower ({mode}, {info['cores']} cores)", flower_note)
    if args.json:
        args.json.write_text(json.dumps({"mode": mode, "machine": info, "flower": flower_note,
                                         "rows": [asdict(r) for r in rows]}, indent=2))  # fmt: skip
    if not args.no_write:
        append_results(args.results, markdown(rows, info, mode, elapsed, flower_note))
        console.print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
