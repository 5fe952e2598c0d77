"""veil: compute on data you do not own and cannot see.

Example:
    >>> import torch, veil
    >>> alice = veil.VirtualWorker("alice")
    >>> x = torch.tensor([1.0, 2, 3, 4]).send(alice)
    >>> (x * 2).sum().get()
    tensor(20.)
"""

from __future__ import annotations

import importlib
from typing import Any

try:  # all of veil but veil.device needs torch; a device install has none (docs/device.md)
    import torch as _torch  # noqa: F401
except ImportError:
    from veil.version import __version__

    def __getattr__(name: str) -> Any:
        if name == "device":
            return importlib.import_module("veil.device")
        if name.startswith("__"):
            raise AttributeError(f"module 'veil' has no attribute {name!r}")
        raise ImportError(
            f"veil.{name} needs torch, which is not installed here: without it only "
            "veil.device works (predicting with ONNX models). For the rest: pip install "
            "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && pip install veil"
        )

    __all__ = ["__version__", "device"]
else:
    from veil import errors, ops
    from veil.errors import (
        BudgetExceeded,
        ObjectNotFound,
        OpNotAllowed,
        PermissionDenied,
        VeilError,
    )
    from veil.node import Dataset, Node, VirtualWorker, Worker
    from veil.pointers import (
        PointerModule,
        PointerTensor,
        RemoteOptimizer,
        TorchHook,
        install,
        local_worker,
    )
    from veil.version import WIRE_VERSION, __version__

    install()
    from veil import transfer as transfer  # ptr.move node to node (registers itself)

    # The capabilities every node has (veil.node.capability), imported when the first node
    # starts; ``veil.dp``, ``veil.he`` and ``veil.mpc`` (and scipy) load on first use, so that
    # ``import veil`` stays light.
    from veil.node import capability as _capability  # noqa: E402

    _capability.declare("dp", "veil.dp.node")
    _capability.declare("he", "veil.he")
    _capability.declare("mpc", "veil.mpc")
    _capability.declare("plans", "veil.plans.node")
    _capability.declare("models", "veil.models.node")
    _capability.declare("fl", "veil.fl.node")
    _capability.declare("transfer", "veil.transfer.node")
    # Keras (a heavy optional package) loads when a node is first asked to train a model
    _capability.declare("keras", "veil.keras.training", on_demand=True)
    _LAZY = ("device", "dp", "fl", "he", "models", "mpc", "plans")
    #: Names at the top of the package that live in a lazily imported part.
    _LAZY_NAMES = {
        "Plan": "plans", "Protocol": "plans", "func2plan": "plans", "plan": "plans",
        "BaseDataset": "fl", "FederatedDataset": "fl", "FederatedDataLoader": "fl",
        "create_sandbox": "sandbox", "PrivateGridNetwork": "sandbox",
    }  # fmt: skip
    # ``veil.export(...)`` is a function of the module of the same name, bound here once and for
    # all: were it lazy, the first ``import veil.export`` would put the module in its place.
    # (The module imports nothing heavy: torch.onnx and executorch load when it is called.)
    from veil.export import export  # noqa: E402

    def __getattr__(name: str) -> Any:
        if name in _LAZY:
            return importlib.import_module(f"veil.{name}")
        if name in _LAZY_NAMES:
            return getattr(importlib.import_module(f"veil.{_LAZY_NAMES[name]}"), name)
        raise AttributeError(f"module 'veil' has no attribute {name!r}")

    def _lazy_entry_point(owner: type, attr: str, module: str) -> None:
        """Put ``owner.attr`` in place now; it imports ``module`` (which installs the real
        method over it) on first use and calls what that installed."""

        def entry(self: Any, *args: Any, **kwargs: Any) -> Any:
            importlib.import_module(module)
            real = owner.__dict__.get(attr)
            if real is None or getattr(real, "_veil_lazy", False):
                raise AttributeError(f"{module} did not install {owner.__name__}.{attr}")
            return real(self, *args, **kwargs)

        entry._veil_lazy = True  # type: ignore[attr-defined]
        entry.__name__ = entry.__qualname__ = attr
        entry.__doc__ = f"``{owner.__name__}.{attr}`` of ``{module}`` (imported on first use)."
        if attr not in owner.__dict__:
            setattr(owner, attr, entry)

    def _lazy_entry_points() -> None:
        import torch

        for owner, attr, module in (
            (torch.Tensor, "share", "veil.mpc"),
            (torch.Tensor, "fix_precision", "veil.mpc"),
            (PointerTensor, "share", "veil.mpc"),
            (PointerTensor, "fix_precision", "veil.mpc"),
            (PointerTensor, "encrypt", "veil.mpc"),
            (torch.nn.Module, "share", "veil.mpc"),
            (torch.nn.Module, "fix_precision", "veil.mpc"),
            (torch.optim.Optimizer, "fix_precision", "veil.mpc"),
            (torch.Tensor, "encrypt", "veil.he"),
        ):
            _lazy_entry_point(owner, attr, module)

    _lazy_entry_points()

    def connect(url: str, *, email: str, password: str, timeout: float = 60.0,
                pipeline: bool = True) -> Worker:  # fmt: skip
        """Log in to a node server and return a client for it.

        ``pipeline``: queue ops whose result can be predicted and send them with the next
        call that needs an answer (fewer round trips; a refused queued op raises from that
        call, naming the line that issued it). ``pipeline=False`` sends each op at once.

        Example (needs a running node, so not run as a doctest)::

            hospital = veil.connect("http://127.0.0.1:8765", email="ds@lab.org", password="...")
            hospital.datasets["ct-scans"].private.mean(0)
        """
        from veil.node.client import NodeClient

        return NodeClient(url, email=email, password=password, timeout=timeout, pipeline=pipeline)

    __all__ = [
        "BaseDataset",
        "BudgetExceeded",
        "Dataset",
        "FederatedDataLoader",
        "FederatedDataset",
        "Node",
        "ObjectNotFound",
        "OpNotAllowed",
        "PermissionDenied",
        "Plan",
        "PointerModule",
        "PointerTensor",
        "PrivateGridNetwork",
        "Protocol",
        "RemoteOptimizer",
        "TorchHook",
        "VeilError",
        "VirtualWorker",
        "WIRE_VERSION",
        "Worker",
        "__version__",
        "connect",
        "create_sandbox",
        "device",
        "dp",
        "errors",
        "export",
        "fl",
        "func2plan",
        "he",
        "local_worker",
        "models",
        "mpc",
        "ops",
        "plan",
        "plans",
    ]
