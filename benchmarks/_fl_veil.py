"""The workloads of benchmarks/fl.py in veil, each run in a fresh process by benchmarks/fl.py.

``python _fl_veil.py '<json config>'`` prints one line ``VEIL_RESULT {json}``. Modes mirror
``_flower_bench.py``: ``sim`` (``veil.fl.simulate``, batched cohort, in process), ``ray`` (the
same on a local Ray cluster, ``backend="ray"``), ``secagg`` (one SecAgg+ session per round,
every message encoded and decoded as it would cross the wire), ``deployed`` (a
``veil.fl.Federation`` over three node servers, see ``_fl_deployed_veil.py``). A fresh process per run gives
each its own RSS high-water mark.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _fl_common import BATCH_SIZE, LOCAL_EPOCHS, LR, TreePeak, accuracy, client_data, model  # noqa: E402

from veil.fl import FedAvg, simulate  # noqa: E402
from veil.fl.secagg import SecAggClient, SecAggConfig, SecAggServer  # noqa: E402
from veil.fl.secagg.messages import (  # noqa: E402
    KeysBroadcast,
    SharesDelivery,
    UnmaskRequest,
    decode,
    encode,
)


def run_sim(cfg: dict[str, Any], backend: str = "inprocess") -> dict[str, Any]:
    """``rounds`` FedAvg rounds over all ``clients``; per-round times, start-up, peak RSS."""
    n, rounds = int(cfg["clients"]), int(cfg["rounds"])
    data = client_data(n)
    net = model()
    marks: list[float] = []
    extra: dict[str, Any] = {}
    if backend == "ray":
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=int(cfg.get("cpus", 2)), include_dashboard=False, log_to_driver=False)
        extra["ray_init_s"] = time.perf_counter() - t0

    def mark(m: torch.nn.Module) -> dict[str, float]:
        marks.append(time.perf_counter())
        return {}

    with TreePeak() as peak:
        t0 = time.perf_counter()
        hist = simulate(net, data, strategy=FedAvg(min_fit_clients=n), rounds=rounds,
                        local_epochs=LOCAL_EPOCHS, batch_size=BATCH_SIZE, lr=LR, evaluate=mark,
                        backend=backend)  # fmt: skip
        total = time.perf_counter() - t0
    per_round = [h["seconds"] for h in hist]
    steady = statistics.median(per_round[1:]) if rounds > 1 else per_round[0]
    train = [h["train_seconds"] for h in hist]
    return {
        "round_s": steady,
        "rounds_s": per_round,
        "train_s": statistics.median(train[1:] or train),
        # the first round's extra cost; 0 when it was no slower than a steady one (noise)
        "startup_s": max(0.0, marks[0] - t0 - steady),
        "total_s": total,
        "accuracy": accuracy(net),
        "peak_self_mib": peak.self_mib,
        "peak_tree_mib": peak.tree_mib,
        "processes": peak.processes,
        **extra,
    }


def secagg_session(n: int, length: int, k: int, t: int, tag: str,
                   drop_after_share: int = 0, drop_after_mask: int = 0) -> float:  # fmt: skip
    """Seconds for one whole session (all clients and the server, messages through the codec):
    fresh keys, shares, masked inputs, unmasking; optionally some clients drop out."""
    cfg = SecAggConfig(session=tag, vector_length=length, threshold=t, neighbours=k)
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-1, 1, length).astype(np.float32) for _ in range(n)]
    t0 = time.perf_counter()
    server = SecAggServer(config=cfg)
    clients = [SecAggClient(i, cfg) for i in range(n)]
    for c in clients:
        server.receive(decode(encode(c.advertise())))
    keys = encode(server.keys())
    for c in clients:
        server.receive(decode(encode(c.share_keys(decode(keys, KeysBroadcast)))))  # type: ignore[arg-type]
    boxes = server.deliveries()
    alive = clients[drop_after_share:]
    for c in alive:
        box = decode(encode(boxes[c.client_id]), SharesDelivery)
        server.receive(decode(encode(c.masked_input(box, xs[c.client_id]))))  # type: ignore[arg-type]
    request = encode(server.unmask_request())
    for c in alive[drop_after_mask:]:
        server.receive(decode(encode(c.unmask(decode(request, UnmaskRequest)))))  # type: ignore[arg-type]
    result = server.result()
    took = time.perf_counter() - t0
    want = np.sum([xs[c.client_id] for c in alive], axis=0, dtype=np.float64)
    if np.abs(result.total.numpy() - want).max() > 1e-4:
        raise RuntimeError("secure aggregation returned a wrong sum")
    return took


def run_secagg(cfg: dict[str, Any]) -> dict[str, Any]:
    """``rounds`` sessions (the first a warm-up); the median seconds, with and without drops."""
    n, length, rounds = int(cfg["clients"]), int(cfg["length"]), int(cfg["rounds"])
    k, t = int(cfg["degree"]), int(cfg["threshold"])
    times = [secagg_session(n, length, k, t, f"bench-{n}-{r}") for r in range(rounds)]
    drops = int(cfg.get("drops", 0))
    out = {"round_s": statistics.median(times[1:] or times), "rounds_s": times}
    if drops:
        dropped = [
            secagg_session(n, length, k, t, f"drop-{n}-{r}", drops - drops // 2, drops // 2)
            for r in range(rounds)
        ]
        out["dropout_round_s"] = statistics.median(dropped[1:] or dropped)
    return out


def main() -> int:
    cfg: dict[str, Any] = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    mode = cfg["mode"]
    if mode == "sim":
        out = run_sim(cfg)
    elif mode == "ray":
        out = run_sim(cfg, backend="ray")
    elif mode == "secagg":
        out = run_secagg(cfg)
    elif mode == "deployed":
        from _fl_deployed_veil import deployed_round

        out = deployed_round(int(cfg["rounds"]), int(cfg.get("nodes", 3)))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    out["torch"] = torch.__version__
    print("VEIL_RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
