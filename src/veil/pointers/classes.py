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
