"""The pointer classes, set by the modules that define them.

``remote`` wraps a node's replies in pointers and ``pipeline`` predicts results for them,
but the pointer classes are built on ``remote``; so instead of importing them back (an
import cycle), both read them here, where ``tensor`` and ``module`` put them when they are
defined (``import veil.pointers`` imports both first).
"""

from __future__ import annotations

from typing import Any

#: PointerTensor (veil.pointers.tensor).
tensor: Any = None
#: PointerModule and RemoteOptimizer (veil.pointers.module).
module: Any = None
optimizer: Any = None
#: Called with the node before a backward runs there (veil.pointers.inplace: the
#: ``zero_grad`` of torch optimizers over models sent in place).
before_backward: Any = None
#: RelayPointer (veil.pointers.relay): what ``ptr.send(other_worker)`` returns.
relay: Any = None
#: The client itself, PySyft's local worker (veil.pointers.relay.local_worker).
local_worker: Any = None
#: Moves data node to node (veil.transfer.move_direct, set when veil is imported): called as
#: ``move_direct(ptr, destination, requires_grad)``, it returns the new pointer, or None
#: where there is no direct way (the move then passes through the client).
move_direct: Any = None
#: ``fit``, ``evaluate`` and ``predict`` of Keras models on nodes, by name (veil.keras.remote sets
#: them when veil.keras is imported; PointerModule's methods of those names call them).
keras: Any = None
