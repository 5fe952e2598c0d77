"""The workloads of benchmarks/mpc.py in CrypTen 0.4.1 (2 processes, gloo), run by its venv.

Called by ``benchmarks/mpc.py`` with the config as JSON (``world_size``: 2 or 3 parties);
prints one JSON line: ``{"torch": version, "crypten": version, "rows": {name: [ms, ...]}}``,
every timed sample by row name, so the caller can merge runs and take medians. CrypTen 0.4.1 imports ``torch.onnx._internal.registration``, which torch
2.13 no longer has; only its ONNX model converter uses it, and these workloads build
``crypten.nn`` models directly, so a stub module stands in for it.
"""

from __future__ import annotations

import json
import sys
import time
import types
from importlib.metadata import version as _version
from typing import Any

_stub = types.ModuleType("torch.onnx._internal.registration")
_stub.registry = None  # type: ignore[attr-defined]
sys.modules["torch.onnx._internal.registration"] = _stub

import crypten  # noqa: E402
import crypten.mpc as mpc  # noqa: E402
import torch  # noqa: E402

CFG: dict[str, Any] = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}


def _mlp() -> Any:
    cnn = crypten.nn
    return cnn.Sequential(cnn.Linear(784, 128), cnn.ReLU(), cnn.Linear(128, 10))


def _lenet() -> Any:
    cnn = crypten.nn
    return cnn.Sequential(
        cnn.Conv2d(1, 6, 5), cnn.ReLU(), cnn.MaxPool2d(2), cnn.Conv2d(6, 16, 5), cnn.ReLU(),
        cnn.MaxPool2d(2), cnn.Flatten(), cnn.Linear(256, 120), cnn.ReLU(), cnn.Linear(120, 84),
        cnn.ReLU(), cnn.Linear(84, 10),
    )  # fmt: skip


@mpc.run_multiprocess(world_size=int(CFG.get("world_size", 2)))
def run() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rounds = int(CFG.get("rounds", 3))
    out: dict[str, list[float]] = {}

    def timeit(name: str, fn: Any) -> None:
        # As veil's rows (benchmarks/mpc.py, FAST_ROWS and measure): the fast rows take
        # fast_rounds samples after warmup more calls. Chosen by the row's name, not by a
        # time: every process must make the same number of calls (each one is a collective)
        fast = name.startswith(tuple(CFG.get("fast_rows", ())))
        for _ in range(1 + (int(CFG.get("warmup", 0)) if fast else 0)):
            fn()
        ts = []
        for _ in range(int(CFG.get("fast_rounds", rounds)) if fast else rounds):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        out[name] = ts

    n = int(CFG.get("mul_n", 1000))
    x, y = crypten.cryptensor(torch.randn(n)), crypten.cryptensor(torch.randn(n))
    timeit(f"mul {n:.0e}", lambda: x * y)
    for m in CFG.get("matmul", [32]):
        a, b = crypten.cryptensor(torch.randn(m, m)), crypten.cryptensor(torch.randn(m, m))
        timeit(f"matmul {m}", lambda a=a, b=b: a.matmul(b))
    r = crypten.cryptensor(torch.randn(int(CFG.get("relu_n", 100))))
    timeit(f"relu {int(CFG.get('relu_n', 100)):.0e}", lambda: r.relu())
    mlp = _mlp().encrypt()
    mlp.eval()
    net = _lenet().encrypt()
    net.eval()
    batches = CFG.get("batches", [1, 4])
    for bs in batches:
        xm = crypten.cryptensor(torch.randn(bs, 784))
        timeit(f"MLP 784-128-10 inference, batch {bs}", lambda xm=xm: mlp(xm))
    for bs in batches:
        xi = crypten.cryptensor(torch.randn(bs, 1, 28, 28))
        timeit(f"LeNet inference, batch {bs}", lambda xi=xi: net(xi))
    bs = batches[-1]
    mlp.train()
    xt = crypten.cryptensor(torch.randn(bs, 784))
    yt = crypten.cryptensor(torch.nn.functional.one_hot(torch.randint(0, 10, (bs,)), 10).float())
    loss_fn = crypten.nn.CrossEntropyLoss()

    def step() -> None:
        loss = loss_fn(mlp(xt), yt)
        mlp.zero_grad()
        loss.backward()
        mlp.update_parameters(0.1)

    timeit(f"MLP training step, batch {bs}", step)
    if crypten.comm.get().get_rank() == 0:
        info = {"torch": torch.__version__, "crypten": _version("crypten"), "rows": out}
        print(json.dumps(info), flush=True)


if __name__ == "__main__":
    run()
