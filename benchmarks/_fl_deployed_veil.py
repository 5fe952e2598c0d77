"""The "deployed on loopback" row of benchmarks/fl.py for veil: a Federation over node servers.

Three ``veil node serve`` processes on 127.0.0.1 (SQLite, one torch thread each) hold a third
of the digits each as a private dataset; the scientist enrols them (each owner approves the
training plan once) and trains the MLP of ``_fl_common`` with FedAvg under secure
aggregation: per round one ``fl.fit`` message per node and the four SecAgg+ steps. Returns the
median seconds per round after a warm-up round, and the final accuracy.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from _fl_common import BATCH_SIZE, LOCAL_EPOCHS, LR, accuracy, client_data, model

import veil
from veil.demo import spawn_node, start_node
from veil.fl import FedAvg, Federation

OWNER_PW, SCI, SCI_PW = "bench-owner-pw-1", "sci@bench.org", "bench-scientist-pw"


def deployed_round(rounds: int = 4, nodes: int = 3) -> dict[str, Any]:
    """Median seconds per round (after the first) of a secure-aggregation Federation over
    ``nodes`` node servers on loopback."""
    data = client_data(nodes)
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the node processes: one intra-op thread each
    procs: list[Any] = []
    workers: list[Any] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            creds = [(f"owner@h{i}.org", OWNER_PW) for i in range(nodes)]
            procs = [spawn_node(Path(tmp), f"h{i}", c) for i, c in enumerate(creds)]
            owners, scientists = [], []
            for i, (c, proc) in enumerate(zip(creds, procs)):
                _, url = start_node(Path(tmp), f"h{i}", c, proc)
                owner = veil.connect(url, email=c[0], password=c[1])
                x, y = data[i]
                owner.datasets.create("digits", private={"x": x, "y": y},
                                      mock={"x": torch.rand_like(x), "y": torch.zeros_like(y)})  # fmt: skip
                owner.create_user(SCI, SCI_PW, role="data_scientist")
                owners.append(owner)
                scientists.append(veil.connect(url, email=SCI, password=SCI_PW))
            workers = owners + scientists
            net = model()
            fed = Federation(scientists, net, strategy=FedAvg(), rounds=rounds,
                             local_epochs=LOCAL_EPOCHS, batch_size=BATCH_SIZE, lr=LR,
                             dataset="digits", secure_aggregation=True, progress=False)  # fmt: skip
            for owner, req in zip(owners, fed.request()):
                owner.requests.approve(req.id)
            hist = fed.fit()
            secs = hist.series("seconds")
            return {"round_s": statistics.median(secs[1:] or secs), "accuracy": accuracy(net),
                    "rounds": len(hist), "bytes": hist.last["bytes"]}  # fmt: skip
    finally:
        for w in workers:
            w.close()
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
            if p.stdout is not None:
                p.stdout.close()
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads


if __name__ == "__main__":
    print(deployed_round())
