#!/usr/bin/env python
"""Benchmarks of remote ops: veil next to the same work done locally or over a bare transport.

Every row is measured in one run against a baseline measured in the same run (interleaved
with it, so drift hits both), and reported as medians:

1. ``x + 1`` on 4 elements on a VirtualWorker vs plain torch: overhead in µs per op.
2. the same op on a node server over loopback vs a bare WebSocket echo of the same size,
   built on the same stack (FastAPI/Starlette endpoint under uvicorn, websockets client).
3. send + get of a 100 MiB float32 tensor over loopback vs a raw TCP socket round trip of
   the same bytes; plus the peak extra RSS on each side (node server in a subprocess).
4. an MLP training loop on a VirtualWorker and on a loopback node vs the same loop locally.
5. a request -> approve -> get cycle on a loopback node.

Usage::

    python benchmarks/remote_ops.py            # full run (~2-3 min on 2 cores), appends to RESULTS.md
    python benchmarks/remote_ops.py --quick --no-write   # smoke test, a few seconds
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import inspect
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
try:
    import veil
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))
    import veil

import torch
import torch.nn.functional as F  # noqa: N812
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from rich.console import Console
from rich.table import Table
from torch import nn
from websockets.sync.client import connect as ws_connect

from veil.node import Node
from veil.node.server.runner import bind, serve_in_thread
from veil.serde import codec

OWNER, OWNER_PW = "owner@bench.local", "bench-owner-pw"
SCIENTIST, SCIENTIST_PW = "ds@bench.local", "bench-ds-pw-1"
MIB = 1024**2
# websockets >= 17 wants connect() used as a context manager unless legacy=True is passed.
WS_EXTRA: dict[str, Any] = (
    {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {}
)
console = Console(width=None if sys.stdout.isatty() else 120)


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class Config:
    op_batch: int  # back-to-back ops per timing sample (rows 1, 2)
    op_rounds: int  # timing samples per side
    big_bytes: int  # tensor size for row 3
    big_reps: int
    mem_reps: int
    epochs: int
    batches_per_epoch: int
    train_reps: int
    cycles: int  # request -> approve -> get cycles

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(20, 5, 8 * MIB, 2, 1, 2, 2, 1, 10)
        return cls(200, 60, 100 * MIB, 9, 3, 20, 4, 7, 300)


@dataclass
class Row:
    name: str
    value: float  # veil's median (or overhead / peak), in `unit`
    baseline: float | None  # the baseline's median in `unit`, None when there is none
    metric: float  # what is compared with the target (overhead, ratio or the value itself)
    metric_unit: str  # "µs", "×", "ms"
    target: float
    unit: str
    note: str = ""

    @property
    def ok(self) -> bool:
        """Compared at the precision the table shows (1.004× of a tensor is one copy)."""
        return round(self.metric, 2 if self.metric_unit == "×" else 1) <= self.target


# ----------------------------------------------------------------------------- timing
def interleaved(fns: dict[str, Callable[[], Any]], *, batch: int, rounds: int,
                warmup: int) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per call of each function: ``rounds`` samples of ``batch`` back-to-back calls,
    the functions taking turns sample by sample (so slow drift affects them all alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    gc.collect()
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(batch):
                fn()
            out[name].append((time.perf_counter() - t0) / batch)
    return out


def med(samples: list[float]) -> float:
    return statistics.median(samples)


# ----------------------------------------------------------------------------- servers
@contextlib.contextmanager
def uvicorn_in_thread(app: Any, *, ws_max_size: int) -> Iterator[int]:
    """Serve an ASGI app on a free 127.0.0.1 port in a thread (as veil's runner does)."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws_max_size=ws_max_size,
                            ws_ping_interval=None, timeout_graceful_shutdown=2)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("echo server did not start")
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def echo_app() -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_bytes(await websocket.receive_bytes())
        except WebSocketDisconnect:
            return

    return app


@contextlib.contextmanager
def tcp_echo(nbytes: int) -> Iterator[int]:
    """A raw TCP server thread: receives ``nbytes`` into a preallocated buffer, sends them back."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:  # closed before a client came
            return
        buf = bytearray(nbytes)
        view = memoryview(buf)
        with conn, contextlib.suppress(OSError):
            while True:
                filled = 0
                while filled < nbytes:
                    n = conn.recv_into(view[filled:])
                    if n == 0:
                        return
                    filled += n
                conn.sendall(view)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes a pending accept()
        listener.close()
        thread.join(timeout=10)


_NODE_CHILD = """
import sys
from veil.node import Node
from veil.node.server.runner import bind, serve
node = Node("mem", owner_email=sys.argv[1], owner_password=sys.argv[2])
sock = bind("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
serve(node, sock=sock, log_level="warning")
"""


@contextlib.contextmanager
def node_subprocess() -> Iterator[tuple[str, int]]:
    """A node server in its own process (so its memory can be told apart); yields (url, pid)."""
    env = dict(os.environ)
    src = str(Path(veil.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(
        [sys.executable, "-c", _NODE_CHILD, OWNER, OWNER_PW], stdout=subprocess.PIPE, env=env,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"node subprocess did not start (exit code {proc.poll()})")
        yield f"http://127.0.0.1:{line}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- memory
def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class PeakRSS:
    """Peak RSS above the starting RSS of some processes, over a block of code.

    Uses the kernel's high-water mark (``VmHWM``, reset through ``/proc/PID/clear_refs``),
    which is exact; falls back to sampling ``VmRSS`` every 0.5 ms in a thread.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.base: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.after: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        _malloc_trim()
        try:
            for pid in self.pids:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            self.hwm = True
        except OSError:
            self.hwm = False
        self.base = {p: _status_kb(p, "VmRSS") for p in self.pids}
        if not self.hwm:
            self.peak = dict(self.base)
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            for p in self.pids:
                self.peak[p] = max(self.peak[p], _status_kb(p, "VmRSS"))
            time.sleep(0.0005)

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.peak = {p: _status_kb(p, "VmHWM") for p in self.pids}
        self.after = {p: _status_kb(p, "VmRSS") for p in self.pids}

    def extra(self, pid: int) -> float:
        """Peak extra bytes of ``pid``."""
        return (self.peak[pid] - self.base[pid]) * 1024.0

    def kept(self, pid: int) -> float:
        """Extra bytes still resident at the end."""
        return (self.after[pid] - self.base[pid]) * 1024.0


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ----------------------------------------------------------------------------- rows
def frame_sizes(worker: Any, fn: Callable[[], Any]) -> tuple[int, int]:
    """Sizes (bytes) of the request and reply frames one call of ``fn`` puts on the wire."""
    sizes: list[tuple[int, int]] = []
    attr = "_roundtrip_parts" if worker._scatter else "_roundtrip"
    orig = getattr(worker, attr)

    def record(frame: Any, expect_bytes: int = 0) -> Any:
        reply = orig(frame, expect_bytes)
        size = sum(len(p) for p in frame) if worker._scatter else len(frame)
        sizes.append((size, len(reply)))
        return reply

    setattr(worker, attr, record)
    try:
        fn()
        fn()  # the second call carries the first result's release, as in steady state
    finally:
        delattr(worker, attr)
    return sizes[-1]


def row_virtual_op(cfg: Config) -> Row:
    worker = veil.VirtualWorker("bench-vw")
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    px = x.send(worker)
    t = interleaved(
        {"veil": lambda: px + 1, "torch": lambda: x + 1},
        batch=cfg.op_batch, rounds=cfg.op_rounds, warmup=200,
    )  # fmt: skip
    v, b = med(t["veil"]) * 1e6, med(t["torch"]) * 1e6
    # This VM's speed moves second to second (torch's own x + 1 from 4 to 9 µs): a sample
    # pair (veil, torch) is taken within milliseconds, so its ratio is steady; scaled to the
    # fastest torch sample it says what the overhead is with the machine at full speed.
    ratio = med([x / y for x, y in zip(t["veil"], t["torch"], strict=True)])
    full = (ratio - 1) * min(t["torch"]) * 1e6
    return Row("x + 1, VirtualWorker vs torch", v, b, v - b, "µs", 30.0, "µs",
               f"4-element float32 tensor; metric = overhead per op (veil − torch), medians; "
               f"veil/torch per sample pair {ratio:.2f}×, i.e. +{full:.1f} µs at the run's "
               f"fastest torch x + 1 ({min(t['torch']) * 1e6:.1f} µs)")  # fmt: skip


def row_loopback_op(cfg: Config, url: str) -> Row:
    # One op's latency: a client that sends each op at once (a pipelining client would
    # only queue ``px + 1`` here; the training rows measure what pipelining buys).
    client = veil.connect(url, email=OWNER, password=OWNER_PW, pipeline=False)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    px = x.send(client)
    req, rep = frame_sizes(client, lambda: px + 1)
    msg = bytes(1 + req)  # veil adds a 1-byte framing prefix (veil.node.framing)
    with uvicorn_in_thread(echo_app(), ws_max_size=codec.CHUNK_BYTES + 64) as port:
        ws = ws_connect(f"ws://127.0.0.1:{port}/ws", compression=None, ping_interval=None,
                        max_size=codec.CHUNK_BYTES + 64, close_timeout=1, **WS_EXTRA)  # fmt: skip

        def echo() -> None:
            ws.send(msg)
            ws.recv(timeout=60)

        try:
            t = interleaved(
                {"veil": lambda: px + 1, "echo": echo},
                batch=max(1, cfg.op_batch // 4), rounds=cfg.op_rounds, warmup=100,
            )  # fmt: skip
        finally:
            ws.close()
            client.close()
    v, b = med(t["veil"]) * 1e6, med(t["echo"]) * 1e6
    return Row("x + 1, loopback node vs WS echo", v, b, v / b, "×", 2.0, "µs",
               f"echo of {len(msg)} B; veil frames: request {1 + req} B, reply {1 + rep} B")  # fmt: skip


def row_big_transfer(cfg: Config, client: Any) -> Row:
    n = cfg.big_bytes
    t = torch.randn(n // 4)
    raw = memoryview(t.numpy()).cast("B")
    back = bytearray(n)
    back_view = memoryview(back)
    send_s: list[float] = []
    get_s: list[float] = []
    veil_s: list[float] = []
    tcp_s: list[float] = []
    with tcp_echo(n) as port, socket.create_connection(("127.0.0.1", port)) as sock:

        def tcp() -> None:
            sock.sendall(raw)
            filled = 0
            while filled < n:
                got = sock.recv_into(back_view[filled:])
                if got == 0:
                    raise ConnectionError("TCP echo closed")
                filled += got

        def via_veil() -> None:
            t0 = time.perf_counter()
            ptr = t.send(client)
            t1 = time.perf_counter()
            out = ptr.get()
            t2 = time.perf_counter()
            send_s.append(t1 - t0)
            get_s.append(t2 - t1)
            veil_s.append(t2 - t0)
            del ptr, out

        for fn in (tcp, via_veil):  # warm-up
            fn()
        for samples in (send_s, get_s, veil_s):
            samples.clear()
        client.flush()
        for _ in range(cfg.big_reps):
            gc.collect()
            t0 = time.perf_counter()
            tcp()
            tcp_s.append(time.perf_counter() - t0)
            gc.collect()
            via_veil()
            client.flush()  # drop the node's copy outside the timed part
    assert bytes(back_view[:64]) == bytes(raw[:64])
    v, b = med(veil_s) * 1e3, med(tcp_s) * 1e3
    gb_s = 2 * n / 1024**3 / (v / 1e3)
    return Row(f"send+get {n // MIB} MiB, loopback vs TCP", v, b, v / b, "×", 2.0, "ms",
               f"send {med(send_s) * 1e3:.0f} ms + get {med(get_s) * 1e3:.0f} ms "
               f"({gb_s:.2f} GiB/s); TCP: sendall + recv_into of the same bytes, both ways")  # fmt: skip


def rows_memory(cfg: Config) -> list[Row]:
    """Peak extra RSS during send and get, client (this process) and node (a subprocess)."""
    if not Path("/proc/self/status").exists():
        return []
    n = cfg.big_bytes
    me = os.getpid()
    res: dict[str, list[float]] = {k: [] for k in ("sc", "ss", "sk", "gc", "gs")}
    with node_subprocess() as (url, pid):
        client = veil.connect(url, email=OWNER, password=OWNER_PW)
        try:
            torch.ones(4).send(client).get()  # open the WebSocket
            t = torch.randn(n // 4)
            for _ in range(cfg.mem_reps):
                gc.collect()
                with PeakRSS([me, pid]) as send:
                    ptr = t.send(client)
                with PeakRSS([me, pid]) as get:
                    out = ptr.get()
                del out, ptr
                client.flush()
                res["sc"].append(send.extra(me) / n)
                res["ss"].append(send.extra(pid) / n)
                res["sk"].append(send.kept(pid) / n)
                res["gc"].append(get.extra(me) / n)
                res["gs"].append(get.extra(pid) / n)
        finally:
            client.close()
    m = {k: med(v) for k, v in res.items()}
    size = n / MIB
    how = "VmHWM" if send.hwm else "sampled VmRSS"
    return [
        Row(f"send {n // MIB} MiB: client peak extra RSS", m["sc"] * size, size, m["sc"], "×", 1.0, "MiB",
            f"baseline = tensor size; {how}"),
        Row(f"send {n // MIB} MiB: node peak extra RSS", m["ss"] * size, size, m["ss"], "×", 1.0, "MiB",
            f"includes the stored tensor (1×); still resident after: {m['sk']:.2f}×"),
        Row(f"get {n // MIB} MiB: client peak extra RSS", m["gc"] * size, size, m["gc"], "×", 1.0, "MiB",
            "includes the fetched tensor (1×)"),
        Row(f"get {n // MIB} MiB: node peak extra RSS", m["gs"] * size, size, m["gs"], "×", 1.0, "MiB",
            "the reply's encoding, on top of the stored tensor"),
    ]  # fmt: skip


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def _batches(cfg: Config) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(64, 784, generator=gen), torch.randint(0, 10, (64,), generator=gen))
        for _ in range(cfg.batches_per_epoch)
    ]


def train(model: Any, opt: Any, batches: list[tuple[Any, Any]], epochs: int) -> float:
    """The loop, the same for local and remote: one loss fetch per epoch, like a log line."""
    last = 0.0
    for _ in range(epochs):
        for xb, yb in batches:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
        last = float(loss.item())
    return last


def rows_training(cfg: Config, client: Any) -> list[Row]:
    data = _batches(cfg)
    vw = veil.VirtualWorker("bench-train")
    times: dict[str, list[float]] = {"local": [], "vw": [], "node": []}
    losses: dict[str, float] = {}

    def setup(where: Any) -> tuple[Any, Any, list[tuple[Any, Any]]]:
        if where is None:
            model = _mlp()
            return model, torch.optim.SGD(model.parameters(), lr=0.05), data
        model = _mlp().send(where)
        opt = veil.RemoteOptimizer(torch.optim.SGD, model.parameters(), lr=0.05)
        return model, opt, [(x.send(where), y.send(where)) for x, y in data]

    # The three loops advance side by side, an epoch at a time, so that all of them see the
    # same machine: this VM's speed moves from second to second, and a loop run after another
    # one met a different machine (the VirtualWorker ratio read 1.5x that way, 1.1x this way).
    for rep in range(cfg.train_reps + 1):  # the first round is a warm-up
        runs = {key: setup(where) for key, where in (("local", None), ("vw", vw), ("node", client))}
        total = dict.fromkeys(runs, 0.0)
        gc.collect()
        for _ in range(cfg.epochs):
            for key, (model, opt, batches) in runs.items():
                t0 = time.perf_counter()
                losses[key] = train(model, opt, batches, 1)
                total[key] += time.perf_counter() - t0
        if rep:
            for key in runs:
                times[key].append(total[key])
        del runs
    steps = cfg.epochs * cfg.batches_per_epoch
    same = all(abs(losses[k] - losses["local"]) < 1e-4 for k in ("vw", "node"))
    check = "same final loss as local" if same else f"LOSSES DIFFER {losses}"
    loc = med(times["local"]) * 1e3
    out = []
    for key, label in (("vw", "VirtualWorker"), ("node", "loopback node")):
        v = med(times[key]) * 1e3
        out.append(Row(f"MLP training, {label} vs local", v, loc, v / loc, "×", 2.0,
                       "ms", f"784-128-10, {steps} SGD steps of batch 64, {v / steps:.2f} ms/step; {check}; loops interleaved epoch by epoch"))  # fmt: skip
    return out


def row_request_cycle(cfg: Config, url: str) -> Row:
    owner = veil.connect(url, email=OWNER, password=OWNER_PW)
    sci = veil.connect(url, email=SCIENTIST, password=SCIENTIST_PW)
    try:
        gen = torch.Generator().manual_seed(2)
        owner.datasets.create("bench-ages", private=torch.rand(1000, 8, generator=gen),
                              mock=torch.rand(1000, 8, generator=gen))  # fmt: skip
        data = sci.datasets["bench-ages"].private

        def cycle() -> None:
            mean = data.mean()
            req = mean.request("benchmark")
            owner.requests.approve(req.id)
            mean.get()

        t = interleaved({"cycle": cycle}, batch=1, rounds=cfg.cycles, warmup=5)
    finally:
        sci.close()
        owner.close()
    v = med(t["cycle"]) * 1e3
    return Row("request→approve→get, loopback", v, None, v, "ms", 20.0, "ms",
               "mean on a dataset, request, owner approves, get: 4 round trips, 2 clients")  # fmt: skip


# ----------------------------------------------------------------------------- report
def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    cores = str(os.cpu_count())
    if hasattr(os, "sched_getaffinity"):
        cores += f" ({len(os.sched_getaffinity(0))} usable)"
    commit = "?"
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE,
                                capture_output=True, text=True, timeout=5).stdout.strip() or "?"  # fmt: skip
    import websockets

    load = "?"
    with contextlib.suppress(OSError):
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": cores,
        "ram": ram,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "veil": f"{veil.__version__} ({commit})",
        "uvicorn / websockets": f"{uvicorn.__version__} / {websockets.__version__}",
        "load average 1/5/15 min": load,
    }


def _fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "—"
    if unit in ("×",):
        return f"{x:.2f}×"
    return f"{x:,.1f} {unit}" if abs(x) < 100 else f"{x:,.0f} {unit}"


def cells(r: Row) -> list[str]:
    target = f"≤ {r.target:g} {r.metric_unit}" if r.metric_unit != "×" else f"≤ {r.target:g}×"
    return [
        r.name,
        _fmt(r.value, r.unit),
        _fmt(r.baseline, r.unit),
        _fmt(r.metric, r.metric_unit),
        target,
        "PASS" if r.ok else "MISS",
        r.note,
    ]


HEADERS = ["benchmark", "veil (median)", "baseline (median)", "overhead / ratio", "target",
           "", "notes"]  # fmt: skip


def print_table(rows: list[Row], title: str) -> None:
    """The table without the notes column (so it fits a terminal), notes listed below it."""
    table = Table(title=title)
    table.add_column("#", justify="right")
    for h in HEADERS[:-1]:
        table.add_column(h, justify="left" if h in ("benchmark", "target", "") else "right")
    for i, r in enumerate(rows, 1):
        c = cells(r)[:-1]
        c[5] = "[green]PASS[/green]" if r.ok else "[bold red]MISS[/bold red]"
        table.add_row(str(i), *c)
    console.print(table)
    for i, r in enumerate(rows, 1):
        if r.note:
            console.print(f"  {i}. {r.note}", highlight=False)


def markdown(rows: list[Row], info: dict[str, str], mode: str, elapsed: float,
             name: str = "remote_ops") -> str:  # fmt: skip
    """A RESULTS.md section: heading, machine (with its load average), run time, the table."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {name} — {now} ({mode})", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += [f"- **run time**: {elapsed:.0f} s", ""]
    lines.append("| " + " | ".join(h or "result" for h in HEADERS) + " |")
    lines.append("|" + "---|" * len(HEADERS))
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |")
    return "\n".join(lines) + "\n"


def append_results(path: Path, section: str) -> None:
    if not path.exists():
        path.write_text(
            "# Benchmark results\n\nEach section is appended by a run of a script in this folder "
            "(see README.md); newest last.\n"
        )
    with path.open("a") as f:
        f.write("\n" + section)


# ----------------------------------------------------------------------------- main
def run(cfg: Config) -> list[Row]:
    rows: list[Row] = []
    node = Node("bench", owner_email=OWNER, owner_password=OWNER_PW)
    node.create_user(SCIENTIST, SCIENTIST_PW)
    with serve_in_thread(node) as url:
        client = veil.connect(url, email=OWNER, password=OWNER_PW)
        try:
            steps = [
                ("1 op on a VirtualWorker", lambda: rows.append(row_virtual_op(cfg))),
                ("2 op over loopback", lambda: rows.append(row_loopback_op(cfg, url))),
                ("3 big transfer", lambda: rows.append(row_big_transfer(cfg, client))),
                ("3 memory", lambda: rows.extend(rows_memory(cfg))),
                ("4 training", lambda: rows.extend(rows_training(cfg, client))),
                ("5 request cycle", lambda: rows.append(row_request_cycle(cfg, url))),
            ]
            for label, step in steps:
                t0 = time.perf_counter()
                step()
                console.log(f"{label}: {time.perf_counter() - t0:.1f} s")
        finally:
            client.close()
    node.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md",
                        help="markdown file to append to (default: benchmarks/RESULTS.md)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads here and in the node server it starts "
                             "(default 1: the node stands for a machine of its own, and on a "
                             "small box two processes' OpenMP pools fight over the cores)")  # fmt: skip
    args = parser.parse_args(argv)
    # The same compute for the local baseline and the node: on this 2-core box, with 2 threads
    # each, local training alone varied 10x while other work ran (OpenMP barriers spin).
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    cfg = Config.make(args.quick)
    mode = "quick" if args.quick else "full"
    info = machine()  # before the run, so the load average says what else was running
    t0 = time.perf_counter()
    rows = run(cfg)
    elapsed = time.perf_counter() - t0
    emit(rows, f"veil remote ops ({mode}, {info['cpu']}, {info['cores']} cores)", args, info,
         mode, elapsed)  # fmt: skip
    return 0


def emit(rows: list[Row], title: str, args: argparse.Namespace, info: dict[str, str], mode: str,
         elapsed: float, name: str = "remote_ops") -> None:  # fmt: skip
    """Print the table, write ``--json`` if asked, append to RESULTS.md unless ``--no-write``
    (a section headed ``name``)."""
    print_table(rows, title)
    if args.json:
        args.json.write_text(json.dumps(
            {"mode": mode, "machine": info, "rows": [asdict(r) | {"ok": r.ok} for r in rows]},
            indent=2,
        ))  # fmt: skip
    if not args.no_write:
        append_results(args.results, markdown(rows, info, mode, elapsed, name))
        console.print(f"appended to {args.results}")


if __name__ == "__main__":
    sys.exit(main())
