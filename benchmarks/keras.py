#!/usr/bin/env python
"""Benchmark of Keras training on a node: ``remote.fit`` against Keras's fit run locally.

One workload, measured in one run against its baseline (the variants take turns, so drift
hits all alike), reported as medians: a 64-64-10 MLP on scikit-learn's digits (1,797
images of 8x8 pixels, all of them), compiled with SGD (learning rate 0.05, momentum 0.9),
sparse categorical cross-entropy and accuracy, trained for a few epochs of batch 32 with
``shuffle=False``:

* local: ``model.fit(x, y, ...)``, Keras 3 on its torch backend (the baseline);
* loopback node: ``remote.fit(x_ptr, y_ptr, ...)`` against a node server over loopback
  (``veil.node.server.serve_in_thread``): one message per epoch, each running one epoch of
  Keras's fit on the node, the metrics coming back in the clear. Target: <= 2x local;
* private data, loopback node: the same on a dataset's private data (each epoch through
  the node's privacy rules; the metrics stay on the node as private scalars);
* VirtualWorker: the same in process, for reference.

The model and the data are on the node before the clock starts (their upload is its own
row). Every remote run is checked against local: the same final weights (within 1e-5).

Usage::

    python benchmarks/keras.py                    # full run (~1 min on 2 cores), appends to RESULTS.md
    python benchmarks/keras.py --quick --no-write # smoke test, a few seconds
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# This file is called keras.py: take it off the path before Keras itself is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
import torch  # noqa: E402

import veil  # noqa: E402
import veil.keras  # noqa: E402 - Keras on its torch backend, and the nodes' keras ops
from veil.keras import keras  # noqa: E402

sys.path.insert(0, str(HERE))
from remote_ops import OWNER, OWNER_PW, append_results, console, machine, med  # noqa: E402
from rich.table import Table  # noqa: E402

from veil.node import Node  # noqa: E402
from veil.node.server import serve_in_thread  # noqa: E402
from veil.serde.keras_models import keras_from_wire  # noqa: E402
from veil.serde.messages import GetObject  # noqa: E402

HIDDEN, CLASSES, BATCH, LR, MOMENTUM = 64, 10, 32, 0.05, 0.9
WEIGHT_TOL = 1e-5
SCIENTIST, SCIENTIST_PW = "ds@bench.local", "bench-ds-pw-1"


@dataclass(frozen=True)
class Config:
    epochs: int  # epochs per fit call
    reps: int  # timed fits per variant (after one warm-up fit)

    @classmethod
    def make(cls, quick: bool) -> Config:
        return cls(1, 1) if quick else cls(5, 9)


@dataclass
class Row:
    name: str
    value: float  # median, ms
    ratio: float | None  # vs local, None for the baseline itself
    target: str  # "≤ 2×", or "" (reference row)
    ok: bool | None  # None: no target
    note: str = ""


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: float32 pixels in [0, 1] and int64 labels (bundled with sklearn)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def build() -> Any:
    """The MLP, compiled, with the same initial weights every time."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(HIDDEN, activation="relu"),
            keras.layers.Dense(CLASSES),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _max_diff(a: Any, b: Any) -> float:
    with torch.no_grad():
        return max(float((u.value - v.value).abs().max()) for u, v in zip(a.weights, b.weights))


def rows_training(cfg: Config, url: str) -> list[Row]:
    x, y = digits()
    epochs = cfg.epochs
    fit = {"epochs": epochs, "batch_size": BATCH, "shuffle": False, "verbose": 0}
    owner = veil.connect(url, email=OWNER, password=OWNER_PW)
    owner.datasets.create("digits", private={"x": x, "y": y},
                          mock={"x": torch.zeros_like(x), "y": torch.zeros_like(y)})  # fmt: skip
    client = veil.connect(url, email=SCIENTIST, password=SCIENTIST_PW)
    vw = veil.VirtualWorker("bench-vw")
    times: dict[str, list[float]] = {k: [] for k in ("local", "loopback", "private", "vw", "send")}
    diffs: dict[str, float] = {}
    histories: dict[str, Any] = {}
    try:
        data = {client: (x.send(client), y.send(client)), vw: (x.send(vw), y.send(vw))}
        ds = client.datasets["digits"]
        private = (ds["x"].private, ds["y"].private)
        local_model: Any = None

        def local() -> None:
            nonlocal local_model
            model = build()
            t0 = time.perf_counter()
            histories["local"] = model.fit(x, y, **fit)
            times["local"].append(time.perf_counter() - t0)
            local_model = model

        def remote(key: str, worker: Any, xy: tuple[Any, Any]) -> None:
            t_send = time.perf_counter()
            ptr = worker.send(build())
            worker.flush()
            if key == "loopback":  # the upload of the model (the data went once, before)
                times["send"].append(time.perf_counter() - t_send)
            t0 = time.perf_counter()
            histories[key] = ptr.fit(*xy, **fit)
            times[key].append(time.perf_counter() - t0)
            if key == "private":  # private: its node's owner reads it (the scientist may not)
                trained = keras_from_wire(owner.call(GetObject(ptr.id)).value)
            else:
                trained = ptr.get()
            diffs[key] = _max_diff(trained, local_model)
            ptr.delete()

        for rep in range(cfg.reps + 1):  # the first round is a warm-up
            gc.collect()
            local()
            remote("loopback", client, data[client])
            remote("private", client, private)
            remote("vw", vw, data[vw])
            if rep == 0:
                for v in times.values():
                    v.clear()
    finally:
        client.close()
        owner.close()
    loc = med(times["local"]) * 1e3
    last = histories["local"].history
    what = (f"64-{HIDDEN}-{CLASSES} MLP on 1,797 digits, {epochs} epoch(s) of batch {BATCH} "
            f"({-(-len(x) // BATCH)} steps each), SGD momentum {MOMENTUM}")  # fmt: skip
    rows = [Row(f"Keras fit, {epochs} epochs: local (torch backend)", loc, None, "", None,
                f"{what}; final loss {last['loss'][-1]:.4f}, accuracy "
                f"{last['accuracy'][-1]:.3f}; baseline")]  # fmt: skip

    def check(key: str) -> tuple[bool, str]:
        same = diffs[key] <= WEIGHT_TOL
        verdict = "same weights as local" if same else "weights DIFFER from local"
        return same, f"{verdict} (max |Δ| = {diffs[key]:.1e})"

    for key, label, target, note in (
        ("loopback", "loopback node", "≤ 2×",
         "remote.fit(x_ptr, y_ptr): one message per epoch, metrics in the clear"),
        ("private", "private data, loopback node", "",
         "a dataset's private x and y: each epoch through the privacy rules; the metrics "
         "come back as pointers to private scalars"),
        ("vw", "VirtualWorker", "", "the same in process (reference)"),
    ):  # fmt: skip
        v = med(times[key]) * 1e3
        ratio = v / loc
        same, verdict = check(key)
        ok = (round(ratio, 2) <= 2.0 and same) if target else None
        rows.append(Row(f"Keras fit, {epochs} epochs: {label}", v, ratio, target, ok,
                        f"{note}; {v / epochs:.1f} ms/epoch; {verdict}"))  # fmt: skip
    snd = med(times["send"]) * 1e3
    rows.append(Row("upload of the compiled model, loopback node", snd, None, "", None,
                    "worker.send(model): its config (with the compile config) and weights; "
                    "not part of the fit rows"))  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- report
def _cells(r: Row) -> list[str]:
    ratio = "—" if r.ratio is None else f"{r.ratio:.2f}× (vs local)"
    result = "" if r.ok is None else ("PASS" if r.ok else "MISS")
    return [r.name, f"{r.value:,.1f} ms", ratio, r.target or "—", result, r.note]


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
    lines = [f"## keras — {now} ({mode})", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += [f"- **run time**: {elapsed:.0f} s", ""]
    lines.append("| " + " | ".join(h or "result" for h in HEADERS) + " |")
    lines.append("|" + "---|" * len(HEADERS))
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def run(cfg: Config) -> list[Row]:
    """The rows against one node server in a thread of this process (``serve_in_thread``):
    a fit is a handful of messages, so the thread's share of the GIL costs little here."""
    node = Node("bench-keras", owner_email=OWNER, owner_password=OWNER_PW)
    node.create_user(SCIENTIST, SCIENTIST_PW)
    with serve_in_thread(node) as url:
        t0 = time.perf_counter()
        rows = rows_training(cfg, url)
        console.log(f"training rows: {time.perf_counter() - t0:.1f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one epoch, one repetition")
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
    info["keras"] = f"{keras.__version__} (backend {keras.backend.backend()})"
    t0 = time.perf_counter()
    rows = run(cfg)
    elapsed = time.perf_counter() - t0
    print_table(rows, f"veil Keras training ({mode}, {info['cpu']}, {info['cores']} cores)")
    if args.json:
        args.json.write_text(json.dumps({"mode": mode, "machine": info,
                                         "rows": [asdict(r) for r in rows]}, indent=2))  # fmt: skip
    if not args.no_write:
        append_results(args.results, markdown(rows, info, mode, elapsed))
        console.print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
