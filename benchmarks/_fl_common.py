"""What both sides of benchmarks/fl.py share: the data, the model, plain local SGD, peak memory.

Imported by ``benchmarks/fl.py`` (veil's interpreter) and by ``benchmarks/_flower_bench.py``
(Flower's side venv), so it needs only torch, numpy and scikit-learn, never veil or flwr.
The digits of ``sklearn.datasets.load_digits`` (1,797 images of 8x8 pixels, scaled to [0, 1])
are split IID over the clients by one seeded permutation; both sides build the same
64-32-10 MLP from ``torch.manual_seed(0)``, so they start from the same weights.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

#: Local training of every client in every benchmark: one epoch of minibatch SGD.
LOCAL_EPOCHS, BATCH_SIZE, LR = 1, 32, 0.05


@functools.lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: float32 images in [0, 1] (64 pixels) and int64 labels (cached)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y, dtype=torch.int64)


def partition(n_clients: int, n_examples: int = 1797, seed: int = 0) -> list[np.ndarray]:
    """The example indices of each client: one seeded permutation cut into equal parts."""
    order = np.random.default_rng(seed).permutation(n_examples)
    return [p for p in np.array_split(order, n_clients)]


@functools.lru_cache(maxsize=4)
def client_data(n_clients: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each client's ``(x, y)``, as ``partition`` cuts the digits (cached: a client process
    loads its data once, as Flower's examples do)."""
    x, y = digits()
    return [(x[torch.from_numpy(p)], y[torch.from_numpy(p)]) for p in partition(n_clients)]


def model() -> nn.Module:
    """The 64-32-10 MLP both sides train, with the same initial weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def accuracy(net: nn.Module) -> float:
    """The share of all digits ``net`` classifies correctly (a check that both sides learn)."""
    x, y = digits()
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def local_sgd(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int) -> float:
    """Plain torch local training: ``LOCAL_EPOCHS`` of shuffled minibatch SGD; the mean loss."""
    gen = torch.Generator().manual_seed(seed)
    total, steps = 0.0, 0
    for _ in range(LOCAL_EPOCHS):
        for idx in torch.randperm(len(y), generator=gen).split(BATCH_SIZE):
            net.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            with torch.no_grad():
                for p in net.parameters():
                    if p.grad is not None:
                        p.sub_(LR * p.grad)
            total, steps = total + float(loss.detach()), steps + 1
    return total / max(steps, 1)


def pure_training_seconds(n_clients: int, repeats: int = 3) -> float:
    """The median time to train ``n_clients`` one after another with ``local_sgd`` and nothing
    else (no framework): what a round of one-client-at-a-time training costs by itself."""
    data, net = client_data(n_clients), model()
    start = [p.detach().clone() for p in net.parameters()]
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        for c, (x, y) in enumerate(data):
            with torch.no_grad():
                for p, v in zip(net.parameters(), start):
                    p.copy_(v)
            local_sgd(net, x, y, seed=r * 100_003 + c)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreePeak:
    """The RSS high-water mark (``VmHWM``) of this process, and the sum of the high-water marks
    of every process it started (Ray's GCS, raylet, workers...), sampled every ``interval`` s.

    Summed high-water marks count shared pages (torch's libraries, Ray's object store) once
    per process and the peaks need not coincide: an upper bound of the tree's true peak.
    On systems without ``/proc`` both stay 0.

    Example:
        >>> with TreePeak() as peak:
        ...     _ = bytearray(10_000_000)
        >>> peak.self_mib > 0 or not Path("/proc/self/status").exists()
        True
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self._seen: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """Record the current high-water mark of every process in the tree."""
        if not Path("/proc/self/status").exists():
            return
        kids, todo = _children(), [os.getpid()]
        while todo:
            pid = todo.pop()
            self._seen[pid] = max(self._seen.get(pid, 0), _hwm_kb(pid))
            todo.extend(kids.get(pid, []))

    @property
    def self_mib(self) -> float:
        """This process's peak RSS, MiB."""
        return _hwm_kb(os.getpid()) / 1024 if self._seen else 0.0

    @property
    def tree_mib(self) -> float:
        """The summed peaks of this process and all its descendants seen, MiB."""
        return sum(self._seen.values()) / 1024

    @property
    def processes(self) -> int:
        """How many processes the tree held over the run."""
        return len(self._seen)


def report(**figures: Any) -> dict[str, Any]:
    """Figures as one JSON-ready dict (rounded floats)."""
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in figures.items()}
