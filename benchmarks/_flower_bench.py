"""The workloads of benchmarks/fl.py in Flower 1.42, run by Flower's side venv.

Called by ``benchmarks/fl.py`` as ``python _flower_bench.py '<json config>'``; prints one line
``FLOWER_RESULT {json}`` with its figures (seconds, MiB). Modes:

* ``sim``: ``flwr.simulation.run_simulation`` (Flower 1.42's simulation engine; its one
  backend is Ray) of a Message-API ``ServerApp`` with ``flwr.serverapp.strategy.FedAvg`` over
  ``clients`` SuperNodes whose ``ClientApp`` trains the digits MLP with ``_fl_common.local_sgd``.
  A round is timed between consecutive calls of the strategy's ``evaluate_fn`` (called at the
  start and after every round; it does nothing else until the last round).
* ``secagg``: the same engine, a legacy ``FedAvg`` under ``DefaultWorkflow(fit_workflow=
  SecAggPlusWorkflow(num_shares, reconstruction_threshold))``, ``ClientApp(mods=
  [secaggplus_mod])`` whose ``NumPyClient.fit`` returns one ``length``-float vector; a round is
  timed from ``configure_fit`` to the end of ``aggregate_fit``.
* ``deployed``: the ``sim`` apps behind ``flower-superlink --insecure`` and two
  ``flower-supernode --insecure`` processes on 127.0.0.1 (see ``_flower_deployed.py``).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _fl_common import (  # noqa: E402
    TreePeak,
    accuracy,
    client_data,
    local_sgd,
    model,
    pure_training_seconds,
)

#: The run's configuration, from the command line (main) or set by the deployed app module.
CFG: dict[str, Any] = {}
BACKEND: dict[str, Any] = {"init_args": {"num_cpus": 2, "include_dashboard": False},
           "client_resources": {"num_cpus": 1, "num_gpus": 0.0}}  # fmt: skip


def _quiet() -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger("flwr").setLevel(logging.WARNING)


def sim_apps(n: int, marks: list[float], final: dict[str, Any]) -> tuple[Any, Any, int]:
    """The Message-API ClientApp and ServerApp of the ``sim`` mode (also used deployed).

    ``marks`` gets the time at the start and at the end of every round; ``final`` the
    accuracy of the last global model and, by round, the summed seconds the clients spent in
    ``local_sgd`` (each client times its own training and reports it as a metric)."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

    rounds = int(CFG["rounds"])
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        pid = int(context.node_config["partition-id"])
        x, y = client_data(int(context.node_config["num-partitions"]))[pid]
        net = model()
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        t0 = time.perf_counter()
        loss = local_sgd(net, x, y, seed=int(msg.content["config"]["server-round"]) * 100_003 + pid)
        took = time.perf_counter() - t0
        metrics = MetricRecord({"train_loss": loss, "train-s": took, "num-examples": len(y)})
        return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()),
                                   "metrics": metrics}), reply_to=msg)  # fmt: skip

    server_app = ServerApp()
    final["train_s"] = []

    def metrics_fn(records: list[RecordDict], key: str) -> MetricRecord:
        final["train_s"].append(sum(float(next(iter(r.metric_records.values()))["train-s"])
                                    for r in records))  # fmt: skip
        return aggregate_metricrecords(records, key)

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n,
                          min_available_nodes=n, train_metrics_aggr_fn=metrics_fn)  # fmt: skip

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            marks.append(time.perf_counter())
            if server_round == rounds:
                net = model()
                net.load_state_dict(arrays.to_torch_state_dict())
                final["accuracy"] = accuracy(net)
            return None

        strategy.start(grid=grid, initial_arrays=ArrayRecord(model().state_dict()),
                       num_rounds=rounds, evaluate_fn=evaluate)  # fmt: skip

    return client_app, server_app, rounds


def run_sim() -> dict[str, Any]:
    from flwr.simulation import run_simulation

    n = int(CFG["clients"])
    marks: list[float] = []
    final: dict[str, Any] = {}
    client_app, server_app, rounds = sim_apps(n, marks, final)
    with TreePeak() as peak:
        t0 = time.perf_counter()
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n,
                       backend_config=BACKEND)  # fmt: skip
        total = time.perf_counter() - t0
    if len(marks) != rounds + 1:
        raise RuntimeError(f"Flower ran {len(marks) - 1} of {rounds} rounds; see its log above")
    per_round = [b - a for a, b in zip(marks, marks[1:])]
    steady = statistics.median(per_round[1:]) if rounds > 1 else per_round[0]
    out = {
        "round_s": steady,
        "rounds_s": per_round,
        # the one-off cost: from run_simulation() to the end of round 1, less a steady round
        "startup_s": marks[1] - t0 - steady,
        "total_s": total,
        "accuracy": final.get("accuracy"),
        # the clients' own training, summed over the round's clients (they run 2 at a time)
        "train_s": statistics.median(final["train_s"][1:] or final["train_s"]),
        "peak_self_mib": peak.self_mib,
        "peak_tree_mib": peak.tree_mib,
        "processes": peak.processes,
    }
    if CFG.get("pure_training"):
        out["loop_s"] = pure_training_seconds(n)
    return out


def run_secagg() -> dict[str, Any]:
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    n, length, rounds = int(CFG["clients"]), int(CFG["length"]), int(CFG["rounds"])
    starts: list[float] = []
    ends: list[float] = []

    class Vector(NumPyClient):  # type: ignore[misc]
        def __init__(self, pid: int) -> None:
            self.x = np.random.default_rng(pid).uniform(-1, 1, length).astype(np.float32)

        def fit(self, parameters: Any, config: Any) -> tuple[list[np.ndarray], int, dict]:
            return [self.x], 1, {}

    def client_fn(context: Context) -> Any:
        return Vector(int(context.node_config["partition-id"])).to_client()

    class Timed(FedAvg):  # type: ignore[misc]
        def configure_fit(self, *a: Any, **k: Any) -> Any:
            starts.append(time.perf_counter())
            return super().configure_fit(*a, **k)

        def aggregate_fit(self, *a: Any, **k: Any) -> Any:
            out = super().aggregate_fit(*a, **k)
            ends.append(time.perf_counter())
            return out

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = Timed(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n,
                         min_available_clients=n,
                         initial_parameters=ndarrays_to_parameters([np.zeros(length, np.float32)]))  # fmt: skip
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds),
                               strategy=strategy)  # fmt: skip
        flow = SecAggPlusWorkflow(num_shares=int(CFG["num_shares"]),
                                  reconstruction_threshold=int(CFG["threshold"]))  # fmt: skip
        DefaultWorkflow(fit_workflow=flow)(grid, legacy)

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
    t0 = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n,
                   backend_config=BACKEND)  # fmt: skip
    if len(ends) != rounds:
        raise RuntimeError(f"Flower's SecAgg+ finished {len(ends)} of {rounds} rounds")
    per_round = [b - a for a, b in zip(starts, ends)]
    return {"round_s": statistics.median(per_round[1:] if rounds > 1 else per_round),
            "rounds_s": per_round, "total_s": time.perf_counter() - t0}  # fmt: skip


def main() -> int:
    CFG.update(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"mode": "sim"})
    BACKEND["init_args"]["num_cpus"] = int(CFG.get("cpus", 2))
    torch.set_num_threads(1)
    _quiet()
    mode = CFG.get("mode", "sim")
    if mode == "sim":
        out = run_sim()
    elif mode == "secagg":
        out = run_secagg()
    elif mode == "deployed":
        from _flower_deployed import run_deployed

        out = run_deployed(CFG)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    import flwr

    out.update(flwr=flwr.__version__, torch=torch.__version__)
    print("FLOWER_RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
