"""Keras training on a node on the wire: the ``keras`` capability's messages.

``remote.fit(x, y, epochs=3)`` (see :mod:`veil.keras`) sends one :class:`KerasRun` per
epoch: object ids and options, no code (the loss, optimizer and metrics are the model's own
compile config, checked against the allowlist when the model arrived). The node answers
:class:`KerasMetrics`: the metrics' names (public: they follow from the compile config and
the shapes), and either their values, when nothing private went into them, or one pointer
per metric to a private scalar on the node, which the scientist may ``request`` like any
private result.

Example:
    >>> import msgspec
    >>> run = KerasRun("fit", model=1, x=2, y=3, batch_size=32)
    >>> msgspec.msgpack.decode(msgspec.msgpack.encode(run), type=KerasRun) == run
    True
"""

from __future__ import annotations

from typing import Literal

import msgspec

from veil.serde.messages import ObjectInfo

__all__ = ["KerasMetrics", "KerasRun"]

_OPTS = {"frozen": True, "forbid_unknown_fields": True, "omit_defaults": True}


class KerasRun(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """One epoch of training (``"fit"``) or one evaluation (``"evaluate"``) of the Keras
    model ``model`` on ``x`` and ``y`` (object ids on the node, as pointers name them).

    ``validation_x`` / ``validation_y``: ids of validation data for ``"fit"`` (0: none).
    """

    kind: Literal["fit", "evaluate"]
    model: int
    x: int
    y: int
    batch_size: int
    shuffle: bool = False
    validation_x: int = 0
    validation_y: int = 0
    validation_batch_size: int = 0


class KerasMetrics(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """The metrics of a :class:`KerasRun`, named as Keras's ``History`` names them.

    ``values``: the metrics in the clear, when no input was private; else empty, and
    ``pointers`` holds one private scalar per name.
    """

    names: list[str]
    values: list[float] = []
    pointers: list[ObjectInfo] = []
