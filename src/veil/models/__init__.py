"""Model hosting: a node's owner publishes models, devices fetch them and predict locally.

The node side is a capability (:mod:`veil.models.node`, on every node); this package's
functions are the Python client, on any ``Worker``. Devices without torch use
:func:`veil.device.fetch` over REST. Command line: ``veil models publish|list|show``.

Example:
    >>> import torch, veil
    >>> node = veil.VirtualWorker("lab")
    >>> _ = veil.models.publish(node, "mlp", torch.nn.Linear(3, 1), torch.zeros(1, 3), version=1)
    >>> [(m.name, m.version) for m in veil.models.list(node)]
    [('mlp', '1')]
"""

from __future__ import annotations

from veil.models.client import download, fetch, publish
from veil.models.client import list_models as list

__all__ = ["download", "fetch", "list", "publish"]
