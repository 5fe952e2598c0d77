"""The op registry: what a remote party may run on a node, and what each op does to privacy."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from veil.errors import OpNotAllowed
from veil.ops.facts import OpFacts

#: What an op does besides returning a value, so the node can keep the privacy rules:
#: ``none``: pure; ``inplace``: mutates its first argument; ``backward``: fills ``.grad``
#: of the autograd graph's leaves; ``step``: an optimizer updates its parameters;
#: ``module_call``: a module's forward (may update buffers such as BatchNorm stats);
#: ``node``: an extension op (``veil.mpc``) called as ``fn(ctx, *args, **kwargs)`` with a
#: :class:`veil.node.extension.OpContext`; it builds its own reply and privacy flags.
Effect = Literal["none", "inplace", "backward", "step", "module_call", "node"]


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One allowlisted operation.

    Attributes:
        name: the stable wire name, e.g. ``"torch.add"``, ``"Tensor.add_"``, ``"F.relu"``.
        fn: the callable the node runs.
        effect: side effects the node must account for (see :data:`Effect`).
        facts: what the op writes, reveals and costs (:class:`~veil.ops.facts.OpFacts`);
            every allowlisted op declares them (``None`` is refused by a test).
    """

    name: str
    fn: Callable[..., Any]
    effect: Effect = "none"
    facts: OpFacts | None = None


#: The facts of an op registered without a declaration: the most careful reading (sizes
#: checked on meta tensors, no DP rule, never pipelined). ``tests/ops`` refuses them.
UNDECLARED = OpFacts(size="meta", pipeline="never")


class OpRegistry:
    """A name -> :class:`OpSpec` table that refuses duplicates.

    Example:
        >>> import torch
        >>> reg = OpRegistry()
        >>> reg.register(OpSpec("torch.add", torch.add, facts=OpFacts(size="product")))
        >>> reg.get("torch.add").fn(torch.tensor(1), 2)
        tensor(3)
        >>> reg.get("os.system")
        Traceback (most recent call last):
        ...
        veil.errors.OpNotAllowed: op 'os.system' is not on this node's allowlist; ...
    """

    def __init__(self) -> None:
        self._by_name: dict[str, OpSpec] = {}
        self._by_fn: dict[Any, str] = {}

    def register(self, spec: OpSpec) -> None:
        if spec.facts is None:
            spec = OpSpec(spec.name, spec.fn, spec.effect, UNDECLARED)
        if spec.name in self._by_name:
            raise ValueError(f"op {spec.name!r} is already registered")
        self._by_name[spec.name] = spec
        try:
            self._by_fn.setdefault(spec.fn, spec.name)
        except TypeError:  # unhashable callables are only reachable by name
            pass

    def unregister(self, name: str) -> None:
        """Remove an op (a capability being uninstalled); unknown names are ignored."""
        spec = self._by_name.pop(name, None)
        if spec is not None:
            try:
                if self._by_fn.get(spec.fn) == name:
                    del self._by_fn[spec.fn]
            except TypeError:
                pass

    @property
    def specs(self) -> Mapping[str, OpSpec]:
        """The live name -> spec table (read-only view for lookups on hot paths)."""
        return self._by_name

    def get(self, name: str) -> OpSpec:
        spec = self._by_name.get(name)
        if spec is None:
            shown = name if len(name) <= 80 else name[:77] + "..."
            raise OpNotAllowed(
                f"op {shown!r} is not on this node's allowlist; see veil.ops.names() for "
                "what a node runs, or compute it locally on data you may .get()"
            )
        return spec

    def name_of(self, fn: Any) -> str | None:
        """The wire name of a torch callable, or None if it is not allowlisted."""
        try:
            return self._by_fn.get(fn)
        except TypeError:
            return None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._by_name))

    def __len__(self) -> int:
        return len(self._by_name)
