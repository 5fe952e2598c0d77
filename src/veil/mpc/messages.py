"""The payloads of MPC protocol rounds as typed msgspec Structs, validated when a node op
decodes its arguments (:func:`veil.mpc.node.typed.typed`): a missing or mistyped field is an
:class:`~veil.errors.InvalidRequest` naming its place (``items.0.gid``), before the op runs.

On the wire each item is a dict with these fields (the driver sends plain dicts, as before);
the node converts it. Shares and public values are tensors; a share of a step's own finish
is ``["out", k]``.

Example:
    >>> import msgspec, torch
    >>> msgspec.convert({"gid": 3, "opened": [torch.zeros(2, dtype=torch.int64)]}, FinishItem)
    FinishItem(gid=3, opened=[tensor([0, 0])], extra=[], rho=None)
    >>> msgspec.convert({"gid": 0, "opened": []}, FinishItem)
    Traceback (most recent call last):
    ...
    msgspec.ValidationError: Expected `int` >= 1 - at `$.gid`
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import torch

#: A group id the dealer dealt (group 0 is the session's MAC key).
GroupId = Annotated[int, msgspec.Meta(ge=1)]
#: A group to deal: the name of its kind and its params (shapes and options).
Group = tuple[str, dict[str, Any]]


class OpenItem(msgspec.Struct, gc=False):
    """One group to open (``mpc.open``, and the opening half of ``mpc.step``): the operands
    are computed from ``inputs`` (this party's shares) and masked with the group's slots."""

    gid: GroupId
    kind: str
    params: dict[str, Any]
    inputs: list[Any]  # share tensors, or ["out", k] in a step
    delta: torch.Tensor | None = None  # the dealer's delta, to the last party only


class FinishItem(msgspec.Struct, gc=False):
    """One opened group to finish (``mpc.finish``, and the finishing half of ``mpc.step``):
    the combined public openings, the public ``extra`` values some kinds take, and in
    malicious mode the MAC check coefficients ``rho``."""

    gid: GroupId
    opened: list[torch.Tensor]
    extra: list[torch.Tensor] = []
    rho: list[torch.Tensor] | None = None


__all__ = ["FinishItem", "Group", "GroupId", "OpenItem"]
