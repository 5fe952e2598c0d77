"""Federated strategies: an ABC with a template round, FedAvg, FedProx, FedOpt and robust aggregation."""

from __future__ import annotations

from veil.fl.strategies.base import EvaluateRes, FitIns, FitRes, Parameters, Strategy, weighted_mean
from veil.fl.strategies.dp import DPFedAvg
from veil.fl.strategies.fedavg import FedAvg, FedProx, proximal_term
from veil.fl.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from veil.fl.strategies.robust import FedMedian, FedTrimmedAvg, Krum

__all__ = [
    "DPFedAvg",
    "EvaluateRes",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "FitIns",
    "FitRes",
    "Krum",
    "Parameters",
    "Strategy",
    "proximal_term",
    "weighted_mean",
]
