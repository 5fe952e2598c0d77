"""The allowlist: every operation a remote party may run on a node.

A node runs only ops named here; anything else is refused with
:class:`~veil.errors.OpNotAllowed`. Ops are looked up by their wire name
(``"torch.add"``, ``"Tensor.sum"``, ``"F.relu"``, ``"Module.__call__"``); nothing a peer
sends is ever imported or evaluated.

Example:
    >>> import torch, veil.ops
    >>> "F.conv2d" in veil.ops.default_registry()
    True
    >>> veil.ops.default_registry().name_of(torch.matmul)
    'torch.matmul'
"""

from __future__ import annotations

from functools import lru_cache

from veil.ops.facts import OpFacts, Predicted
from veil.ops.modules import MODULE_CLASSES, OPTIMIZER_CLASSES
from veil.ops.registry import Effect, OpRegistry, OpSpec
from veil.ops.torch_ops import ATTRIBUTES, register_torch_ops

__all__ = [
    "ATTRIBUTES",
    "MODULE_CLASSES",
    "OPTIMIZER_CLASSES",
    "Effect",
    "OpFacts",
    "OpRegistry",
    "OpSpec",
    "Predicted",
    "default_registry",
    "names",
]


@lru_cache(maxsize=1)
def default_registry() -> OpRegistry:
    """The allowlist every node uses unless built with its own registry."""
    from veil.ops.modules import register_module_ops

    reg = OpRegistry()
    register_torch_ops(reg)
    register_module_ops(reg)
    return reg


def names() -> list[str]:
    """Sorted wire names of every allowlisted op.

    Example:
        >>> "torch.matmul" in names() and "os.system" not in names()
        True
    """
    return list(default_registry())
