#!/usr/bin/env python
"""DP-SGD throughput and peak memory: veil next to Opacus (every mode that works) and non-private.

Three models on CPU, same data and settings (noise 1.0, clip 1.0, SGD, fixed-size batches):

1. MLP 784-512-256-10, batch 256
2. small CNN (two conv + two linear) on 1x28x28, batch 64
3. embedding + LSTM text classifier (vocab 1000, emb 64, hidden 64, 32 tokens), batch 64

For each model: samples/s (median over steps) and peak extra RSS of a training step of
non-private training, veil's DP-SGD and Opacus 1.6 in modes hooks, functorch, ew and ghost
(fast gradient clipping). The fastest Opacus mode that works is the baseline. When ``opacus``
is not importable, the script re-executes itself under a Python that has it
(``--opacus-python``, default ``/tmp/dpside/bin/python``), so all modes share one process.
Peak memory is measured mode by mode; throughput interleaved (one step of each mode per
round), so load from other jobs on the machine hits every mode alike.

Usage::

    python benchmarks/dp_sgd.py             # full run (a few minutes), appends to RESULTS.md
    python benchmarks/dp_sgd.py --quick --no-write   # smoke test, seconds
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import torch  # noqa: E402
from remote_ops import PeakRSS, append_results, machine  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 140)
MODELS = ["mlp", "cnn", "lstm"]
OPACUS_MODES = ["hooks", "functorch", "ew", "ghost"]
BATCH = {"mlp": 256, "cnn": 64, "lstm": 64}


class TextClassifier(nn.Module):
    def __init__(self, lstm: type[nn.Module] = nn.LSTM) -> None:
        super().__init__()
        self.emb = nn.Embedding(1000, 64)
        self.lstm = lstm(64, 64, batch_first=True)
        self.fc = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.emb(x))
        return self.fc(h[-1])


def build(name: str, lstm: type[nn.Module] = nn.LSTM) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                             nn.Linear(256, 10))  # fmt: skip
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10),
        )  # fmt: skip
    return TextClassifier(lstm)


def data(name: str, steps: int) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    n = BATCH[name] * steps
    if name == "lstm":
        return TensorDataset(
            torch.randint(0, 1000, (n, 32), generator=g), torch.randint(0, 2, (n,), generator=g)
        )
    shape = (n, 784) if name == "mlp" else (n, 1, 28, 28)
    return TensorDataset(torch.randn(*shape, generator=g), torch.randint(0, 10, (n,), generator=g))


Step = Callable[[torch.Tensor, torch.Tensor], None]


def local_stepper(name: str, mode: str, ds: TensorDataset) -> tuple[Step, list[Any]]:
    """Non-private or veil DP-SGD."""
    batches = list(DataLoader(ds, batch_size=BATCH[name]))
    model = build(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    if mode == "veil":
        import veil.dp as dp

        model, opt, _ = dp.make_private(module=model, optimizer=opt, data_loader=DataLoader(ds, batch_size=BATCH[name]),
                                        noise_multiplier=1.0, max_grad_norm=1.0)  # type: ignore[assignment]  # fmt: skip

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return step, batches


def opacus_stepper(name: str, mode: str, ds: TensorDataset) -> tuple[Step, list[Any]]:
    """One Opacus mode (DPLSTM for the LSTM, as Opacus requires)."""
    import warnings

    from opacus import PrivacyEngine
    from opacus.layers import DPLSTM

    warnings.simplefilter("ignore")
    model = build(name, DPLSTM)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    engine = PrivacyEngine(accountant="rdp")
    loader = DataLoader(ds, batch_size=BATCH[name])
    kwargs: dict[str, Any] = {"criterion": nn.CrossEntropyLoss()} if mode == "ghost" else {}
    out = engine.make_private(module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
                              max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode=mode, **kwargs)  # fmt: skip
    if mode == "ghost":
        pmodel, popt, crit, ploader = out
    else:
        pmodel, popt, ploader = out
        crit = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        popt.zero_grad()
        crit(pmodel(x), y).backward()
        popt.step()

    return step, list(ploader)


def bench_model(name: str, steps: int, warmup: int, with_opacus: bool) -> dict[str, Any]:
    """Every mode of one model: peak memory measured mode by mode, then throughput measured
    interleaved (one step of each mode per round), so load from other jobs hits all alike."""
    ds = data(name, max(steps, 4))
    makers: dict[str, Callable[[], tuple[Step, list[Any]]]] = {
        "non-private": lambda: local_stepper(name, "non-private", ds),
        "veil": lambda: local_stepper(name, "veil", ds),
    }
    if with_opacus:
        for mode in OPACUS_MODES:
            makers[mode] = lambda mode=mode: opacus_stepper(name, mode, ds)  # type: ignore[misc]
    out: dict[str, Any] = {}
    steppers: dict[str, tuple[Step, list[Any]]] = {}
    for mode, make in makers.items():
        try:
            step, batches = make()
            for x, y in batches[:warmup]:
                step(x, y)
            gc.collect()
            with PeakRSS([os.getpid()]) as mem:
                for x, y in batches[warmup : warmup + 2]:
                    step(x, y)
            out[mode] = {"peak_mib": mem.extra(os.getpid()) / 2**20, "times": []}
            steppers[mode] = (step, batches)
        except Exception as exc:  # noqa: BLE001 - a mode that fails is reported, not fatal
            out[mode] = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
    for r in range(steps):
        for mode, (step, batches) in steppers.items():
            x, y = batches[r % len(batches)]
            t0 = time.perf_counter()
            step(x, y)
            out[mode]["times"].append(time.perf_counter() - t0)
    for mode in steppers:
        med = statistics.median(out[mode].pop("times"))
        out[mode].update(samples_per_s=BATCH[name] / med, step_ms=med * 1e3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a few steps of each (smoke test)")
    p.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument(
        "--opacus-python",
        default=os.environ.get("DP_BENCH_OPACUS_PYTHON", "/tmp/dpside/bin/python"),
    )
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--no-opacus", action="store_true", help="skip the Opacus rows")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    models = [m for m in args.models.split(",") if m]
    steps = args.steps or (3 if args.quick else 60)  # 20 left CNN ratios +-0.1 apart
    warmup = args.warmup or (1 if args.quick else 5)
    skip_opacus = args.quick or args.no_opacus  # quick: seconds, veil and non-private only
    with_opacus = importlib.util.find_spec("opacus") is not None and not skip_opacus
    if not with_opacus and not skip_opacus and Path(args.opacus_python).exists():
        # run the whole benchmark under a Python that has Opacus, so both sides share a process
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), str(HERE)]))
        argv2 = [args.opacus_python, __file__, *(argv if argv is not None else sys.argv[1:])]
        return subprocess.run(argv2, env=env, check=False).returncode
    t0 = time.time()
    results: dict[str, Any] = {}
    for name in models:
        for mode, r in bench_model(name, steps, warmup, with_opacus).items():
            results[f"{name}/{mode}"] = r
        gc.collect()
    op: dict[str, Any] = {}
    if with_opacus:
        import opacus

        op["version"] = opacus.__version__
    else:
        op["error"] = "not run (opacus is not importable here; see --opacus-python)"
    rows = []
    for name in models:
        base = results[f"{name}/non-private"]
        ours = results[f"{name}/veil"]
        modes = {m: results.get(f"{name}/{m}") for m in OPACUS_MODES}
        ok = {m: r for m, r in modes.items() if r and "error" not in r}
        best = max(ok, key=lambda m: ok[m]["samples_per_s"]) if ok else None
        rows.append({
            "model": name, "batch": BATCH[name], "non_private": base, "veil": ours, "opacus": modes,
            "opacus_best": best,
            "veil_vs_opacus_best": ours["samples_per_s"] / ok[best]["samples_per_s"] if best else None,
            "veil_vs_non_private": ours["samples_per_s"] / base["samples_per_s"],
        })  # fmt: skip
    elapsed = time.time() - t0
    table = Table(title="DP-SGD on CPU: samples/s (median step) and peak extra RSS")
    for h in [
        "model",
        "non-private",
        "veil",
        "opacus best",
        "veil / opacus best",
        "veil / non-private",
        "opacus modes",
    ]:
        table.add_column(h)
    for r in rows:
        mode_txt = ", ".join(
            f"{m}: {v['samples_per_s']:.0f}/s {v['peak_mib']:.0f} MiB"
            if v and "error" not in v
            else f"{m}: {'not run' if v is None else 'failed'}"
            for m, v in r["opacus"].items()
        ) or op.get("error", "")
        best = r["opacus_best"]
        bv = r["opacus"][best] if best else None
        table.add_row(
            f"{r['model']} (b={r['batch']})",
            f"{r['non_private']['samples_per_s']:.0f}/s, {r['non_private']['peak_mib']:.0f} MiB",
            f"{r['veil']['samples_per_s']:.0f}/s, {r['veil']['peak_mib']:.0f} MiB",
            f"{best}: {bv['samples_per_s']:.0f}/s, {bv['peak_mib']:.0f} MiB" if bv else "—",
            f"{r['veil_vs_opacus_best']:.2f}×" if r["veil_vs_opacus_best"] else "—",
            f"{r['veil_vs_non_private']:.2f}×",
            mode_txt,
        )  # fmt: skip
    console.print(table)
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "opacus": op.get("version", op.get("error"))}, indent=1)
        )
    if not args.no_write:
        info = machine()
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [f"## dp_sgd — {now} ({'quick' if args.quick else 'full'})", ""]
        lines += [f"- **{k}**: {v}" for k, v in info.items()]
        lines += [f"- **opacus**: {op.get('version', op.get('error'))}", f"- **steps**: {steps} (+{warmup} warmup)",
                  f"- **run time**: {elapsed:.0f} s", ""]  # fmt: skip
        lines.append("| model | non-private | veil | Opacus best | veil / Opacus best (target ≥ 1.3×) | "
                     "veil / non-private | Opacus modes |")  # fmt: skip
        lines.append("|---|---|---|---|---|---|---|")
        for r in rows:
            best = r["opacus_best"]
            bv = r["opacus"][best] if best else None
            modes_txt = "; ".join(
                f"{m} {v['samples_per_s']:.0f}/s {v['peak_mib']:.0f} MiB" if v and "error" not in v
                else (f"{m} not run" if v is None else f"{m} failed ({v['error'][:60]})")
                for m, v in r["opacus"].items()
            )  # fmt: skip
            lines.append(
                f"| {r['model']} (batch {r['batch']}) "
                f"| {r['non_private']['samples_per_s']:.0f}/s, {r['non_private']['peak_mib']:.0f} MiB "
                f"| {r['veil']['samples_per_s']:.0f}/s, {r['veil']['peak_mib']:.0f} MiB "
                f"| {(best + ': ' + format(bv['samples_per_s'], '.0f') + '/s') if bv else '—'} "
                f"| {format(r['veil_vs_opacus_best'], '.2f') + '×' if r['veil_vs_opacus_best'] else '—'} "
                f"| {r['veil_vs_non_private']:.2f}× | {modes_txt} |"
            )  # fmt: skip
        append_results(args.results, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
