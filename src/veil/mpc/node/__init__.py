"""The node's side of MPC: its key and per-node state, the ops a node runs (setup, dealing,
protocol rounds, inputs, local steps on shares, dealer approvals), each with typed
arguments, and their registration in the op allowlist."""

from __future__ import annotations
