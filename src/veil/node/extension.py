"""OpContext: what an extension op (effect ``"node"``) may do on the node that runs it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import torch

from veil.errors import InvalidRequest
from veil.node.objects import ObjectRecord
from veil.node.users import Session
from veil.serde.messages import ObjectInfo, Results, Value
from veil.serde.tensors import tensor_to_data

if TYPE_CHECKING:
    from veil.node.node import Node

T = TypeVar("T")


class OpContext:
    """Handed to an extension op as its first argument.

    An extension op decides the privacy of what it stores and what it answers: it may
    answer a public :class:`Value` directly (e.g. a value masked with one-time randomness)
    or store results with :meth:`new`. Results derived from private inputs should be stored
    private; :meth:`new` does so by default.

    Attributes:
        node: the node running the op (its name, limits and capability states).
        session: the caller.
        inputs: the records behind the op's ``Ref`` arguments, in the order they were resolved.
    """

    __slots__ = ("node", "session", "inputs")

    def __init__(self, node: Node, session: Session, inputs: list[ObjectRecord]) -> None:
        self.node = node
        self.session = session
        self.inputs = inputs

    @property
    def private(self) -> bool:
        """Is any input private?"""
        return any(r.private for r in self.inputs)

    @property
    def sources(self) -> frozenset[str]:
        """Datasets the inputs derive from."""
        return frozenset().union(*(r.sources for r in self.inputs)) if self.inputs else frozenset()

    def check_elements(self, n: int) -> None:
        """Refuse to create more than the node's result size limit (8-byte elements)."""
        if n < 0 or n * 8 > self.node.max_result_bytes:
            raise InvalidRequest(
                f"{n} elements is over node {self.node.name!r}'s result limit "
                f"({self.node.max_result_bytes} bytes)"
            )

    def new(self, value: torch.Tensor, *, private: bool | None = None,
            label: str = "") -> ObjectInfo:  # fmt: skip
        """Store ``value`` for the caller; private if any input is, unless told otherwise.

        ``label`` marks what the capability made it as (e.g. ``"mpc.share:arith"``); its
        ops can then accept only objects with their label (:meth:`labelled`).
        """
        priv = self.private if private is None else private
        sources = self.sources if priv else frozenset()
        rec = self.node.store_value(self.session, value, private=priv, sources=sources, label=label)
        return self.node.info_of(rec)

    def audit(self, action: str, detail: str = "") -> None:
        """Write an entry to the node's audit log as the caller (committed with the op)."""
        self.node.write_audit(self.session, action, detail[:1000])

    def record_of(self, value: Any) -> ObjectRecord | None:
        """The record behind ``value`` if it came from one of this op's ``Ref`` arguments."""
        return next((r for r in self.inputs if r.value is value), None)

    def labelled(self, value: Any, prefix: str) -> bool:
        """Is ``value`` an object of this caller's that a capability stored with a label
        starting with ``prefix``?"""
        rec = self.record_of(value)
        return rec is not None and rec.label.startswith(prefix)

    @staticmethod
    def value(tensor: torch.Tensor) -> Value:
        """Answer ``tensor`` itself (public: the op vouches that it reveals nothing private)."""
        return Value(tensor_to_data(tensor))

    @staticmethod
    def results(items: list[Any]) -> Results:
        """Answer several stored objects (from :meth:`new`)."""
        return Results(items, "list")
