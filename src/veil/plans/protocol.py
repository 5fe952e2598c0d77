"""Protocol: plans assigned to several nodes, run in order, results passed on as pointers.

Example:
    >>> import torch, veil
    >>> inc = veil.func2plan(args_shape=[(1,)])(lambda x: x + 1)
    >>> proto = veil.Protocol([("w1", inc), ("w2", inc)])
    >>> _ = proto.deploy(veil.VirtualWorker("alice"), veil.VirtualWorker("bob"))
    >>> out = proto.run(torch.tensor([1.0]))
    >>> out.location.name, out.get()
    ('bob', tensor([3.]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from veil.errors import UnsupportedError
from veil.plans.plan import Plan
from veil.pointers import PointerTensor

__all__ = ["Protocol"]


def _flat(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


class Protocol:
    """Plans on several nodes, run one after the other (PySyft's ``sy.Protocol``).

    ``steps`` pairs a worker (or a name standing for one, bound by :meth:`deploy` in order
    of first appearance) with a plan. :meth:`run` sends local inputs to the first step's
    node, runs each plan there in one message, and moves its results to the next step's
    node (a move fetches through this client, so it needs the same permission as
    ``get()``: a result derived from private data does not move without the owner's
    approval); it returns the last step's results as pointers.

    Split learning is a protocol whose steps exchange activations and gradients: see
    docs/plans.md for one model cut across two nodes.
    """

    def __init__(self, steps: Sequence[tuple[Any, Plan]]) -> None:
        if not steps:
            raise ValueError("a protocol needs at least one (worker, plan) step")
        for _, p in steps:
            if not isinstance(p, Plan):
                raise TypeError(f"protocol steps pair a worker with a Plan, got {type(p).__name__}")
        self.steps: list[tuple[Any, Plan]] = list(steps)
        self._bound: dict[str, Any] = {}

    def __repr__(self) -> str:
        shown = ", ".join(f"{getattr(w, 'name', w)}: {p.plan_name}" for w, p in self.steps)
        return f"<Protocol {shown}>"

    def _worker(self, w: Any) -> Any:
        if isinstance(w, str):
            if w not in self._bound:
                raise UnsupportedError(f"protocol worker {w!r} is not bound: call deploy(*workers)")
            return self._bound[w]
        return w

    def deploy(self, *workers: Any) -> Protocol:
        """Bind the steps' worker names to ``workers`` (in order of first appearance) and
        send each plan to its node."""
        names = list(dict.fromkeys(w for w, _ in self.steps if isinstance(w, str)))
        if len(workers) < len(names):
            raise ValueError(f"the protocol names {len(names)} workers {names}, got {len(workers)}")
        self._bound = dict(zip(names, workers))
        for w, p in self.steps:
            p.send(self._worker(w))
        return self

    def send(self, worker: Any) -> Protocol:
        """Put every plan on ``worker`` (the protocol then runs there on pointers to it)."""
        self._bound = {w: worker for w, _ in self.steps if isinstance(w, str)}
        self.steps = [(worker, p) for _, p in self.steps]
        for _, p in self.steps:
            p.send(worker)
        return self

    def run(self, *inputs: Any) -> Any:
        """Run the steps in order (see the class docstring); returns the last results."""
        values: list[Any] = list(inputs)
        out: Any = None
        for w, p in self.steps:
            worker = self._worker(w)
            moved = []
            for v in values:
                if isinstance(v, torch.Tensor):
                    v = v.send(worker)  # type: ignore[attr-defined]
                elif isinstance(v, PointerTensor) and v.location is not worker:
                    v = v.move(worker)
                moved.append(v)
            out = p.run(*moved)
            values = _flat(out)
        return out
