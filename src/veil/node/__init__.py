"""Nodes: the data owner's side (Node, stores, server) and handles on them (workers, clients)."""

from __future__ import annotations

from veil.node.node import Node
from veil.node.users import Session
from veil.node.worker import Dataset, VirtualWorker, Worker

__all__ = ["Dataset", "Node", "Session", "VirtualWorker", "Worker"]
