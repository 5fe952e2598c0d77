"""On-device prediction with numpy and onnxruntime only: no torch, nothing leaves the device.

This package imports nothing of veil that needs torch (``veil.errors`` only), so it works
in a device install without torch (``pip install --no-deps veil`` then ``pip install numpy
onnxruntime``; see docs/device.md). Models come from :func:`veil.export` or from a node
that hosts them (:func:`fetch`, ``veil models publish``).

Example:
    >>> import tempfile, torch, veil
    >>> from veil.device import Predictor
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Softmax(-1))
    >>> path = veil.export(model, tempfile.mkdtemp() + "/model.onnx", torch.zeros(1, 3))
    >>> Predictor(path).predict([[0.0, 0.0, 0.0]]).sum().round(5)
    np.float32(1.0)
"""

from __future__ import annotations

from veil.device.fetch import (
    MODEL_NAME,
    MODEL_VERSION,
    check_name,
    check_version,
    fetch,
    list_models,
    login,
)
from veil.device.predictor import Predictor, sha256_of

__all__ = [
    "MODEL_NAME",
    "MODEL_VERSION",
    "Predictor",
    "check_name",
    "check_version",
    "fetch",
    "list_models",
    "login",
    "sha256_of",
]
