#!/usr/bin/env python
"""Benchmarks of veil.mpc: secret-shared workloads next to plain torch float32 (and CrypTen).

Each row runs one workload under MPC (2 or 3 parties plus a dealer, as VirtualWorkers in
this process or as node servers in their own processes over loopback) and the same
workload in plain torch float32, interleaved in one run, and reports medians, their ratio,
and the bytes and rounds each party sent next to the theoretical minimum of the protocol
(a Beaver product of n elements: 16n bytes and one round; a matmul (m x k) @ (k x n):
8(mk + kn) bytes and one round). Product rows also show their compute + communication lower
bound, derived from the fastest exact Z_2^64 product measured in the same run (see
:func:`add_bounds`). CrypTen 0.4.1 runs the same workloads (2 and 3 processes, its default
"trusted first party" mode) in a side venv that must run veil's torch version: the script
refuses (exits non-zero) otherwise; benchmarks/README.md has the recipe.

Usage::

    python benchmarks/mpc.py                      # full run (a few minutes), appends to RESULTS.md
    python benchmarks/mpc.py --quick --no-write   # smoke test, seconds
    python benchmarks/mpc.py --crypten ''          # without CrypTen
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import torch  # noqa: E402
from remote_ops import (
    OWNER,
    OWNER_PW,
    append_results,
    console,
    interleaved,
    machine,
    med,
    node_subprocess,
)  # noqa: E402
from rich.table import Table  # noqa: E402
from torch import nn  # noqa: E402

import veil  # noqa: E402
from veil.mpc import ring  # noqa: E402

#: Rows sampled ``Config.fast_rounds`` times (after ``Config.warmup`` more calls), by name
#: prefix, for veil and CrypTen alike (CrypTen's processes must all make the same calls); the
#: rest (LeNet, the training step) ``Config.rounds`` times.
FAST_ROWS = ("mul", "matmul", "relu", "MLP 784-128-10 inference")
#: Seconds: a malicious row (no CrypTen to match) whose first call takes longer is sampled
#: ``Config.rounds`` times only.
SLOW_S = 0.3


@dataclass(frozen=True)
class Config:
    #: Samples of a slow row: LeNet, training, malicious rows whose first call is over ``SLOW_S``.
    rounds: int
    #: Samples of a fast row, taken after ``warmup`` more calls: 5 samples right after the
    #: first call made the medians of fast rows swing 1.6x between runs (the dealer's
    #: background preparation had not reached its steady state yet).
    fast_rounds: int
    warmup: int
    mul_n: int
    matmul: tuple[int, ...]
    relu_n: int
    batches: tuple[int, ...]
    loopback: bool
    malicious: bool
    #: Run the model rows (MLP, LeNet, training) in every deployment, or only 2-party in-process.
    all_models: bool

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(1, 1, 0, 1000, (16,), 100, (1, 2), True, True, False)
        return cls(5, 25, 2, 100_000, (256, 512), 10_000, (1, 64), True, True, True)


@dataclass
class Row:
    name: str
    parties: int
    deploy: str
    security: str
    veil_ms: float
    torch_ms: float
    bytes_per_party: int
    rounds: int
    min_bytes: int | None = None
    min_rounds: int | None = None
    crypten_ms: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.veil_ms / self.torch_ms if self.torch_ms else float("nan")


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def lenet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84),
        nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip


@contextlib.contextmanager
def deployment(kind: str, n: int) -> Iterator[tuple[list[Any], Any]]:
    names = ["alice", "bob", "dave"][:n]
    if kind == "in-process":
        yield [veil.VirtualWorker(x) for x in names], veil.VirtualWorker("carol")
        return
    with contextlib.ExitStack() as stack:
        workers = []
        for _ in range(n + 1):
            url, _pid = stack.enter_context(node_subprocess())
            w = veil.connect(url, email=OWNER, password=OWNER_PW)
            stack.callback(w.close)
            workers.append(w)
        for party in workers[:n]:  # each party's owner approves the dealer (a remote node)
            veil.mpc.dealers(party).add("dealer", workers[n])
        yield workers[:n], workers[n]


def measure(cfg: Config, label: str, fn: Callable[[], Any], base: Callable[[], Any],
            fast: bool | None) -> tuple[float, float, int, int, float]:  # fmt: skip
    """(veil ms, torch ms, bytes party 0 sent, rounds, first-call ms) of ``fn``.

    The first call (also the warm-up) finds no dealer randomness prepared; later calls, as
    in a user's loop, find the groups the dealer prepared in the background while the
    previous call ran (``MPCSession(prefetch=1)``): their medians include everything the
    user waits for, the dealer's work competing for the same cores included. A ``fast`` row
    is sampled ``cfg.fast_rounds`` times after ``cfg.warmup`` more calls, the others
    ``cfg.rounds`` times (CrypTen's rows by the same rule, see ``FAST_ROWS``); ``None``:
    fast if the first call took under ``SLOW_S``."""
    veil.mpc.reset_stats()
    t0 = time.perf_counter()
    fn()
    cold = time.perf_counter() - t0
    party = veil.mpc.stats().get(label, {"bytes": 0, "rounds": 0})
    if fast is None:
        fast = cold < SLOW_S
    times = interleaved({"veil": fn, "torch": base}, batch=1,
                        rounds=cfg.fast_rounds if fast else cfg.rounds,
                        warmup=cfg.warmup if fast else 0)  # fmt: skip
    return (med(times["veil"]) * 1e3, med(times["torch"]) * 1e3, party["bytes"],
            party["rounds"], cold * 1e3)  # fmt: skip


def rows_for(cfg: Config, kind: str, n: int, security: str) -> list[Row]:
    out: list[Row] = []
    torch.manual_seed(0)
    with deployment(kind, n) as (parties, provider):
        sess = veil.mpc.MPCSession(parties, provider, security=security)  # type: ignore[arg-type]

        def share(t: torch.Tensor) -> Any:
            return t.share(session=sess)

        def add(name: str, fn: Callable[[], Any], base: Callable[[], Any],
                mins: tuple[int | None, int | None] = (None, None)) -> None:  # fmt: skip
            t0 = time.perf_counter()
            fast: bool | None = name.startswith(FAST_ROWS)
            if fast and security == "malicious":  # no CrypTen row to match: by its first call
                fast = None
            v, b, nbytes, rounds, cold = measure(cfg, sess.labels[0], fn, base, fast)
            out.append(Row(name, n, kind, security, v, b, nbytes, rounds, *mins,
                           extra={"first_call_ms": cold}))  # fmt: skip
            console.log(
                f"{name}, {n} parties, {kind}, {security}: {v:.1f} ms ({time.perf_counter() - t0:.1f} s)"
            )

        x, y = torch.randn(cfg.mul_n), torch.randn(cfg.mul_n)
        sx, sy = share(x), share(y)
        add(f"mul {cfg.mul_n:.0e}", lambda: sx * sy, lambda: x * y, (16 * cfg.mul_n, 1))
        for m in cfg.matmul:
            a, b = torch.randn(m, m), torch.randn(m, m)
            sa, sb = share(a), share(b)
            add(
                f"matmul {m}", lambda sa=sa, sb=sb: sa @ sb, lambda a=a, b=b: a @ b, (16 * m * m, 1)
            )
        r = torch.randn(cfg.relu_n)
        sr = share(r)
        add(f"relu {cfg.relu_n:.0e}", lambda: sr.relu(), lambda: r.relu())
        if security == "malicious" or not (cfg.all_models or (kind == "in-process" and n == 2)):
            return out
        model = mlp()
        smodel = veil.mpc.encrypt_model(model, parties, provider, session=sess)
        net = lenet().eval()
        snet = veil.mpc.encrypt_model(net, parties, provider, session=sess)
        with torch.no_grad():
            for bs in cfg.batches:
                xm = torch.randn(bs, 784)
                sxm = share(xm)
                add(
                    f"MLP 784-128-10 inference, batch {bs}",
                    lambda sxm=sxm: smodel(sxm),
                    lambda xm=xm: model(xm),
                )
            for bs in cfg.batches:
                xi = torch.randn(bs, 1, 28, 28)
                sxi = share(xi)
                add(
                    f"LeNet inference, batch {bs}", lambda sxi=sxi: snet(sxi), lambda xi=xi: net(xi)
                )
        bs = cfg.batches[-1]
        xt, yt = torch.randn(bs, 784), torch.randint(0, 10, (bs,))
        sxt, syt = share(xt), share(torch.nn.functional.one_hot(yt, 10).float())
        opt = veil.mpc.nn.SGD(smodel, lr=0.1)
        popt = torch.optim.SGD(model.parameters(), lr=0.1)

        def step() -> None:
            out_ = smodel(sxt)
            smodel.backward(veil.mpc.nn.cross_entropy_grad(out_, syt))
            opt.step()

        def plain_step() -> None:
            popt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt), yt).backward()
            popt.step()

        add(f"MLP training step, batch {bs}", step, plain_step)
    return out


def fastest_product(op: str, size: int, rounds: int) -> tuple[float, dict[str, float]]:
    """Seconds of the fastest exact Z_2^64 product of this machine for a row's operands,
    and every candidate's median (ms): for ``matmul``, an m x m product by torch's native
    int64 kernel or by float64 BLAS on 22-bit limbs (:func:`veil.mpc.ring.matmul_limbs`);
    for ``mul``, torch's int64 elementwise product (no faster exact one exists)."""
    if op == "mul":
        x = torch.randint(-(2**62), 2**62, (size,))
        cands = {"int64 mul": lambda: x * x}
    else:
        a = torch.randint(-(2**62), 2**62, (size, size))
        cands = {"int64 matmul": lambda: ring.matmul(a, a),
                 "float64 limbs": lambda: ring.matmul_limbs(a, a)}  # fmt: skip
    t = interleaved(cands, batch=1, rounds=rounds, warmup=1)
    meds = {k: med(v) * 1e3 for k, v in t.items()}
    return min(meds.values()) / 1e3, meds


def products_together(size: int, n: int, rounds: int, limbs: bool) -> float:
    """Median seconds of the ``2 n + 1`` exact m x m products of one Beaver matmul run the way
    veil runs them: n threads (the parties) doing two each and one (the dealer) doing one,
    all at once, with nothing else (no randomness, no messages, no truncation), each product
    by the fastest kernel (``limbs``: float64 limbs, else torch's int64 matmul). No product
    is split across cores, so on c cores some core does at least ceil((2n + 1) / c) of them:
    with 2 parties on 2 cores, 3 product-times, where the core-count formula says 2.5."""
    a = torch.randint(-(2**62), 2**62, (size, size))
    b = torch.randint(-(2**62), 2**62, (size, size))
    product = ring.matmul_limbs if limbs else ring.matmul
    jobs = [2] * n + [1]
    with ThreadPoolExecutor(len(jobs)) as pool:

        def work(k: int) -> None:
            for _ in range(k):
                product(a, b)

        def together() -> None:
            for f in [pool.submit(work, k) for k in jobs]:
                f.result()

        return med(interleaved({"t": together}, batch=1, rounds=rounds, warmup=1)["t"])


def copy_seconds(nbytes: int, rounds: int) -> float:
    """Median seconds to copy ``nbytes`` once in memory (what moving a message costs at least)."""
    buf = torch.empty(max(nbytes, 1), dtype=torch.uint8)
    return med(interleaved({"copy": buf.clone}, batch=1, rounds=rounds, warmup=1)["copy"])


def add_bounds(rows: list[Row], cfg: Config) -> None:
    """The compute + communication lower bound of every product row (mul and matmul), from
    the fastest exact product measured here, now. A Beaver product costs each party two
    exact products of the row's size (``e * b_i + a_i * f``; party 0 folds ``e * f`` into its
    first one) and the dealer one (``c = a * b``): with the parties running in parallel, at
    least ``2 t``; in one process, all ``2 n + 1`` share this machine's cores, so at least
    ``(2 n + 1) t / cores``; for a matmul, also the time those products take when run
    together the way veil runs them, one product per thread (:func:`products_together`,
    measured; no product split across cores, so some core does ceil((2 n + 1) / cores) of
    them). Moving the bytes each party sends costs at least one memory copy of them.
    bound = max(2 t, (2 n + 1) t / cores, together) + copy; the targets and notes also give
    the ratio to the formula alone, max(2 t, (2 n + 1) t / cores) + copy."""
    cores = os.cpu_count() or 1
    cache: dict[tuple[str, int], tuple[float, dict[str, float]]] = {}
    together: dict[tuple[tuple[str, int], int], float] = {}
    for r in rows:
        op, _, size = r.name.partition(" ")
        if op not in ("mul", "matmul"):
            continue
        key = (op, int(float(size)))
        if key not in cache:
            cache[key] = fastest_product(op, key[1], max(3, cfg.rounds))
        t, cands = cache[key]
        formula = 2 * t if r.deploy == "loopback" else max(2 * t, (2 * r.parties + 1) * t / cores)
        par = formula
        if op == "matmul":  # products are not split across cores: as veil runs them
            if (key, r.parties) not in together:
                limbs = min(cands, key=cands.__getitem__) == "float64 limbs"
                together[key, r.parties] = products_together(key[1], r.parties,
                                                             max(5, cfg.rounds), limbs)  # fmt: skip
            par = max(par, together[key, r.parties])
            r.extra["together_ms"] = together[key, r.parties] * 1e3
        copy = copy_seconds(r.bytes_per_party, max(3, cfg.rounds))
        r.extra["formula_bound_ms"] = (formula + copy) * 1e3
        r.extra["bound_ms"] = (par + copy) * 1e3
        r.extra["copy_ms"] = copy * 1e3
        r.extra.update({f"{k} ms": v for k, v in cands.items()})


def crypten_version_check(python: str) -> str:
    """The torch version of CrypTen's interpreter; exits (status 2) unless it is veil's."""
    if not Path(python).exists():
        raise SystemExit(
            f"--crypten {python}: no such interpreter. Build the side venv as benchmarks/README.md "
            "says, or pass --crypten '' to leave CrypTen out"
        )
    code = "import torch, importlib.metadata as m; print(torch.__version__, m.version('crypten'))"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(
            f"--crypten {python} cannot import torch and crypten: {proc.stderr[-500:]}"
        )
    their_torch, their_crypten = proc.stdout.split()
    if their_torch != torch.__version__:
        raise SystemExit(
            f"--crypten {python} runs torch {their_torch}, veil runs torch {torch.__version__}: "
            "a side by side needs one torch (int64 kernels differ between versions). Rebuild the "
            "side venv on veil's torch pin as benchmarks/README.md says"
        )
    return f"crypten {their_crypten} on torch {their_torch}"


def crypten_samples(python: str, cfg: Config, world: int) -> dict[str, list[float]]:
    """Run benchmarks/_crypten_bench.py with CrypTen's interpreter: every sample (ms) by row
    name. A failure ends the benchmark (status 2): no figure is left silently empty."""
    cmd = [
        python,
        str(HERE / "_crypten_bench.py"),
        json.dumps({**asdict(cfg), "world_size": world, "fast_rows": list(FAST_ROWS)}),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SystemExit(f"CrypTen ({world} parties) did not finish: {exc}") from exc
    if proc.returncode != 0:
        raise SystemExit(f"CrypTen ({world} parties) failed: {proc.stderr.strip()[-1500:]}")
    out: dict[str, list[float]] = json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    return out


def table(rows: list[Row], title: str) -> None:
    t = Table(title=title)
    for h in ("workload", "n", "deploy", "security", "veil ms", "torch ms", "ratio", "B/party",
              "min B", "rounds", "min", "CrypTen ms", "veil/CT", "1st ms", "/bound"):  # fmt: skip
        t.add_column(h, justify="left" if h in ("workload", "deploy", "security") else "right")
    for r in rows:
        ct = f"{r.crypten_ms:.1f}" if r.crypten_ms else "—"
        vc = f"{r.veil_ms / r.crypten_ms:.2f}×" if r.crypten_ms else "—"
        t.add_row(r.name, str(r.parties), r.deploy, r.security, f"{r.veil_ms:.1f}", f"{r.torch_ms:.3f}",
                  f"{r.ratio:,.0f}×", f"{r.bytes_per_party:,}", f"{r.min_bytes:,}" if r.min_bytes else "—",
                  str(r.rounds), str(r.min_rounds or "—"), ct, vc,
                  f"{r.extra['first_call_ms']:.1f}" if "first_call_ms" in r.extra else "—",
                  f"{r.veil_ms / r.extra['bound_ms']:.2f}×" if "bound_ms" in r.extra else "—")  # fmt: skip
    console.print(t)


def targets(rows: list[Row]) -> list[str]:
    """The issue's targets, each with its figures and met / missed."""
    out = []
    ct = [r for r in rows if r.security == "semi-honest" and r.crypten_ms]
    if ct:
        worst = max(ct, key=lambda r: r.veil_ms / (r.crypten_ms or 1))
        over = [r for r in ct if r.veil_ms / (r.crypten_ms or 1) > 0.5]
        out.append(f"semi-honest ≤ 0.5× CrypTen on every row: {len(ct) - len(over)}/{len(ct)} rows "
                   f"(worst: {worst.name}, {worst.parties} parties {worst.deploy}, "
                   f"{worst.veil_ms / (worst.crypten_ms or 1):.2f}×) — "
                   f"{'met' if not over else 'missed'}")  # fmt: skip
    for r in rows:
        if r.name.startswith("matmul") and r.parties == 2 and r.deploy == "in-process" \
                and r.security == "semi-honest" and "bound_ms" in r.extra:  # fmt: skip
            q = r.veil_ms / r.extra["bound_ms"]
            fq = r.veil_ms / r.extra["formula_bound_ms"]
            out.append(f"{r.name} (2 parties, in-process) ≤ 1.5× its bound "
                       f"{r.extra['bound_ms']:.1f} ms: {q:.2f}× — {'met' if q <= 1.5 else 'missed'}"
                       f" (against the core-count formula alone, "
                       f"{r.extra['formula_bound_ms']:.1f} ms: {fq:.2f}× — "
                       f"{'met' if fq <= 1.5 else 'missed'})")  # fmt: skip
    semi = {r.name: r for r in rows if r.parties == 2 and r.deploy == "in-process"
            and r.security == "semi-honest"}  # fmt: skip
    for r in rows:
        if r.security == "malicious" and r.name in semi:
            q = r.veil_ms / semi[r.name].veil_ms
            out.append(f"malicious {r.name} ≤ 5× semi-honest: {r.veil_ms:,.1f} / "
                       f"{semi[r.name].veil_ms:,.1f} ms = {q:.1f}× — {'met' if q <= 5 else 'missed'}")  # fmt: skip
    return out


def markdown(rows: list[Row], info: dict[str, str], mode: str, elapsed: float, ct_note: str) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## mpc — {now} ({mode})", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += [f"- **run time**: {elapsed:.0f} s", f"- **CrypTen**: {ct_note}", ""]  # fmt: skip
    head = ["workload", "parties", "deployment", "security", "veil (median)", "torch f32 (median)",
            "ratio", "bytes/party", "min bytes", "rounds", "min rounds", "CrypTen (median)",
            "veil / CrypTen", "bound", "veil / bound", "notes"]  # fmt: skip
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        note = (
            f"first call {r.extra['first_call_ms']:,.1f} ms" if "first_call_ms" in r.extra else ""
        )
        if "bound_ms" in r.extra:
            cands = ", ".join(f"{k.removesuffix(' ms')} {v:.2f} ms" for k, v in r.extra.items()
                              if k.endswith(" ms"))  # fmt: skip
            note += f"; one product: {cands}; copy of the bytes sent {r.extra['copy_ms']:.2f} ms"
            if "together_ms" in r.extra:
                note += (f"; the {2 * r.parties + 1} products run together (parties and dealer "
                         f"in threads) {r.extra['together_ms']:.2f} ms")  # fmt: skip
            fb = r.extra["formula_bound_ms"]
            note += f"; core-count formula alone {fb:.1f} ms ({r.veil_ms / fb:.2f}×)"
        bound = r.extra.get("bound_ms")
        cells = [r.name, str(r.parties), r.deploy, r.security, f"{r.veil_ms:,.1f} ms", f"{r.torch_ms:.3f} ms",
                 f"{r.ratio:,.0f}×", f"{r.bytes_per_party:,}", f"{r.min_bytes:,}" if r.min_bytes else "—",
                 str(r.rounds), str(r.min_rounds or "—"),
                 f"{r.crypten_ms:,.1f} ms" if r.crypten_ms else "—",
                 f"{r.veil_ms / r.crypten_ms:.2f}×" if r.crypten_ms else "—",
                 f"{bound:,.1f} ms" if bound else "—", f"{r.veil_ms / bound:.2f}×" if bound else "—",
                 note]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Targets:", ""] + [f"- {t}" for t in targets(rows)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("--crypten", default="/tmp/crypten-venv/bin/python",
                        help="python of the CrypTen side venv on veil's torch ('' to leave it out)")  # fmt: skip
    parser.add_argument("--no-loopback", action="store_true", help="in-process rows only")
    args = parser.parse_args(argv)
    cfg = Config.make(args.quick)
    # One intra-op thread everywhere (this process and the node servers it starts): each
    # party stands for a machine of its own, and OpenMP spinning on a shared 2-core box
    # made loopback products 50x slower.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    mode = "quick" if args.quick else "full"
    info = machine()
    ct_note = "not run (--crypten '')"
    ct: dict[int, dict[str, list[float]]] = {2: {}, 3: {}}

    def run_crypten() -> None:  # half of CrypTen's samples before veil's rows, half after
        for world, got in ct.items():
            for name, samples in crypten_samples(args.crypten, cfg, world).items():
                got.setdefault(name, []).extend(samples)

    if args.crypten:
        ct_note = crypten_version_check(args.crypten)  # exits unless it is veil's torch
        run_crypten()
    t0 = time.perf_counter()
    rows: list[Row] = []
    for n in (2, 3):
        rows += rows_for(cfg, "in-process", n, "semi-honest")
    if cfg.malicious:
        rows += rows_for(cfg, "in-process", 2, "malicious")
    if cfg.loopback and not args.no_loopback:
        for n in (2, 3) if cfg.all_models else (2,):  # quick: one loopback deployment
            rows += rows_for(cfg, "loopback", n, "semi-honest")
    add_bounds(rows, cfg)
    if args.crypten:
        run_crypten()
        ct_note += (", 2 and 3 processes (gloo), default trusted-first-party provider; half of "
                    "its samples taken before veil's rows, half after")  # fmt: skip
        for r in rows:
            if r.security == "semi-honest" and ct[r.parties].get(r.name):
                r.crypten_ms = med(ct[r.parties][r.name])
    elapsed = time.perf_counter() - t0
    table(rows, f"veil.mpc ({mode}, {info['cpu']}, {info['cores']} cores)")
    console.print(f"CrypTen: {ct_note}")
    for line in targets(rows):
        console.print(line)
    if args.json:
        args.json.write_text(json.dumps({"mode": mode, "machine": info, "crypten": ct_note,
                                         "rows": [asdict(r) for r in rows]}, indent=2))  # fmt: skip
    if not args.no_write:
        append_results(args.results, markdown(rows, info, mode, elapsed, ct_note))
        console.print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
