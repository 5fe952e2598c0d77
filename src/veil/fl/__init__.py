"""veil.fl: federated learning. So far its strategies (FedAvg, FedProx, FedOpt, robust
aggregation: what a server does with the clients' updates each round), the non-IID
partitioners used in experiments, and an in-process simulation of many clients trained as
one batched cohort (:func:`simulate`), secure aggregation (:mod:`veil.fl.secagg`), and
:class:`Federation`, which trains over node servers, VirtualWorkers or simulated clients with
each node's owner approving once how updates may leave (:mod:`veil.fl.node`).
"""

from __future__ import annotations

from veil.fl.datasets import BaseDataset, FederatedDataLoader, FederatedDataset, federated_avg
from veil.fl.federation import CentralDP, Federation, LocalDP
from veil.fl.history import History
from veil.fl.members import review
from veil.fl.partition import dirichlet_partition, iid_partition, label_partition
from veil.fl.simulation import simulate
from veil.fl.strategies import (
    DPFedAvg,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedOpt,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    FitIns,
    FitRes,
    Krum,
    Strategy,
)

__all__ = [
    "BaseDataset",
    "CentralDP",
    "Federation",
    "History",
    "DPFedAvg",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "FederatedDataLoader",
    "FederatedDataset",
    "FitIns",
    "FitRes",
    "Krum",
    "LocalDP",
    "Strategy",
    "dirichlet_partition",
    "federated_avg",
    "iid_partition",
    "label_partition",
    "review",
    "simulate",
]
