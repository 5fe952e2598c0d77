"""PointerModule and RemoteOptimizer: models and optimizers that live on a node."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from veil.errors import InvalidRequest, UnsupportedError
from veil.ops.modules import OPTIMIZER_NAMES
from veil.pointers import classes
from veil.pointers.handle import ReleasedOnDrop
from veil.pointers.tensor import PointerTensor
from veil.serde.keras_models import is_keras_model, keras_from_wire, keras_to_wire
from veil.serde.messages import (
    GetObject,
    KerasModelData,
    ModuleSpec,
    ObjectInfo,
    RequestAccess,
    RequestInfo,
    SendObject,
    Value,
)
from veil.serde.modules import (
    meta_module,
    module_to_spec,
    spec_structure,
    spec_to_module,
    unsupported_modules,
)

if TYPE_CHECKING:
    from veil.pointers.remote import Remote

SendMode = Literal["auto", "module", "params"]


class PointerModule(ReleasedOnDrop):
    """A model on a node. Call it on pointers; train it with :class:`RemoteOptimizer`.

    Two forms, chosen by :meth:`send` (``mode="auto"``):

    * ``"module"``: every submodule is an allowlisted ``torch.nn`` class, so the node
      rebuilds the model and a forward pass is one round trip.
    * ``"params"``: a model with its own ``forward`` (a custom class). Parameters and
      buffers go to the node as tensors; the forward runs here, each torch call in it
      running on the node through the pointers. No code crosses the wire either way.

    Example:
        >>> import torch, veil
        >>> alice = veil.VirtualWorker("alice")
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
        >>> remote = alice.send(model)  # model.send(alice) would move the model itself
        >>> out = remote(torch.ones(1, 3).send(alice))
        >>> torch.allclose(out.get(), model(torch.ones(1, 3)))
        True
    """

    def __init__(
        self,
        location: Remote,
        *,
        info: ObjectInfo | None = None,
        shell: nn.Module | None = None,
        owned: bool = True,
    ) -> None:
        self.location = location
        self.id: int | None = info.id if info is not None else None
        self.private = bool(info and info.private)
        self._names: list[str] = list(info.names) if info is not None else []
        self._shell = shell
        self._owned = owned and info is not None
        self._params: list[PointerTensor] | None = None
        self.training = True
        #: The model on the meta device (no data): lets a pipelining client predict outputs.
        self._meta: nn.Module | None = None
        #: Its architecture without data (:func:`veil.serde.modules.spec_structure`): models
        #: of one architecture share predictions.
        self._meta_key: bytes = b""

    @property
    def _remote_ref(self) -> bool:
        return self.id is not None

    @classmethod
    def _from_info(cls, location: Remote, info: ObjectInfo) -> PointerModule:
        return cls(location, info=info)

    @classmethod
    def send(cls, module: nn.Module, location: Remote, *, mode: SendMode = "auto") -> PointerModule:
        """Send ``module`` to ``location`` (see the class docstring for the modes)."""
        if mode not in ("auto", "module", "params"):
            raise ValueError(f"mode must be 'auto', 'module' or 'params', got {mode!r}")
        if is_keras_model(module):  # Keras's own config, checked by the node's allowlist
            if mode == "params":
                raise UnsupportedError(
                    "a Keras model travels as its config and weights; send it with the default mode"
                )
            reply = location.call(SendObject(keras_to_wire(module)))
            assert isinstance(reply, ObjectInfo)
            return cls(location, info=reply)
        if mode == "auto":
            mode = "params" if unsupported_modules(module) else "module"
        if mode == "module":
            spec = module_to_spec(module)
            reply = location.call(SendObject(spec))
            assert isinstance(reply, ObjectInfo)
            ptr = cls(location, info=reply)
            ptr.training = module.training
            if location.pipeline:
                ptr._meta = meta_module(spec)
                ptr._meta_key = spec_structure(spec)
            return ptr
        memo: dict[int, Any] = {}
        for tensor in list(module.parameters()) + list(module.buffers()):
            if id(tensor) not in memo:
                memo[id(tensor)] = location.send(tensor)  # type: ignore[attr-defined]
        shell = copy.deepcopy(module, memo)
        ptr = cls(location, shell=shell)
        ptr.training = module.training
        return ptr

    def __repr__(self) -> str:
        kind = "module" if self._shell is None else f"params of {type(self._shell).__name__}"
        n = len(self._names) if self._shell is None else len(list(self._shell.parameters()))
        priv = ", private" if self.private else ""
        ident = f"id={self.id}, " if self.id is not None else ""
        return f"PointerModule(node={self.location.name!r}, {ident}{kind}, {n} parameters{priv})"

    # -- use -----------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._shell is not None:
            return self._shell(*args, **kwargs)
        return self.location.run_op("Module.__call__", self, *args, **kwargs)

    forward = __call__

    def parameters(self) -> list[PointerTensor]:
        """Pointers to the model's parameters, in ``named_parameters`` order."""
        if self._shell is not None:
            return list(self._shell.parameters())  # type: ignore[arg-type]
        if self._params is None:
            self._params = self.location.run_op("Module.parameters", self)
        return list(self._params)

    def named_parameters(self) -> list[tuple[str, PointerTensor]]:
        if self._shell is not None:
            return list(self._shell.named_parameters())  # type: ignore[arg-type]
        return list(zip(self._names, self.parameters(), strict=True))

    def train(self, mode: bool = True) -> PointerModule:
        if self._shell is not None:
            self._shell.train(mode)
        else:
            self.location.run_op("Module.train", self, bool(mode))
            if self._meta is not None:
                self._meta.train(mode)
        self.training = bool(mode)
        return self

    def _eval_mode(self) -> PointerModule:
        return self.train(False)

    eval = _eval_mode  #: ``model.eval()``, as on ``nn.Module``

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self._shell is not None:
            raise UnsupportedError(
                "a model sent with mode='params' has no remote module object; "
                "use RemoteOptimizer.zero_grad() on its parameters"
            )
        self.location.run_op("Module.zero_grad", self, bool(set_to_none))

    # -- Keras models (veil.keras.remote) -------------------------------------------------
    def fit(self, *args: Any, **kwargs: Any) -> Any:
        """Train a Keras model on its node, one message per epoch (:func:`veil.keras.remote.fit`)."""
        return _keras("fit")(self, *args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluate a Keras model on its node (:func:`veil.keras.remote.evaluate`)."""
        return _keras("evaluate")(self, *args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        """A Keras model's predictions on its node, as a pointer (:func:`veil.keras.remote.predict`)."""
        return _keras("predict")(self, *args, **kwargs)

    # -- moving ------------------------------------------------------------------------
    def get(self) -> nn.Module:
        """Fetch the model (subject to the node's permission rules, like any object)."""
        if self._shell is None:
            reply = self.location.call(GetObject(self._require_id()))
            assert isinstance(reply, Value)
            if isinstance(reply.value, KerasModelData):  # checked here too: nodes may lie
                return keras_from_wire(reply.value)  # type: ignore[no-any-return]
            assert isinstance(reply.value, ModuleSpec)
            return spec_to_module(reply.value)
        memo: dict[int, Any] = {}
        for _name, p in self._shell.named_parameters():
            memo[id(p)] = nn.Parameter(p.get(), requires_grad=p.requires_grad)  # type: ignore[attr-defined]
        for _name, b in self._shell.named_buffers():
            memo[id(b)] = b.get()  # type: ignore[attr-defined]
        return copy.deepcopy(self._shell, memo)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.get().state_dict()

    def copy(self) -> PointerModule:
        return PointerModule.send(self.get(), self.location)

    def move(self, destination: Any) -> PointerModule:
        ptr = PointerModule.send(self.get(), destination)
        self.delete()
        return ptr

    def delete(self) -> None:
        if self._owned and self.id is not None:
            self._owned = False
            self.location._release(self.id)

    def request(self, reason: str) -> RequestInfo:
        """Ask the node's owner for permission to ``get()`` this model."""
        reply = self.location.call(RequestAccess(self._require_id(), reason))
        assert isinstance(reply, RequestInfo)
        return reply

    def _require_id(self) -> int:
        if self.id is None:
            raise InvalidRequest(
                "this model was sent with mode='params'; request its parameters one by one"
            )
        return self.id


def _keras(name: str) -> Any:
    if classes.keras is None:
        raise UnsupportedError(
            f"{name}() runs Keras models on their node: import veil.keras first "
            "(pip install 'veil[keras]'); train a torch model with RemoteOptimizer"
        )
    return classes.keras[name]


def _pointer_of(p: Any) -> Any:
    """A parameter of a model sent in place stands for its pointer (veil.pointers.inplace)."""
    if isinstance(p, dict):
        return {**p, "params": [_pointer_of(q) for q in p["params"]]}
    sent = getattr(p, "_veil_pointer", None)
    return p if sent is None else sent


class RemoteOptimizer(ReleasedOnDrop):
    """A torch optimizer built on the node over remote parameters.

    Example:
        >>> import torch, veil
        >>> alice = veil.VirtualWorker("alice")
        >>> model = alice.send(torch.nn.Linear(2, 1))
        >>> opt = veil.RemoteOptimizer(torch.optim.SGD, model.parameters(), lr=0.1)
        >>> loss = model(torch.ones(4, 2).send(alice)).pow(2).mean()
        >>> loss.backward(); opt.step(); opt.zero_grad()
    """

    def __init__(
        self,
        optimizer_cls: type[torch.optim.Optimizer] | str,
        params: Any,
        **options: Any,
    ) -> None:
        name = (
            optimizer_cls if isinstance(optimizer_cls, str) else OPTIMIZER_NAMES.get(optimizer_cls)
        )
        if name is None:
            raise UnsupportedError(
                f"{optimizer_cls} is not an allowlisted optimizer; use one of "
                f"{sorted(OPTIMIZER_NAMES.values())}"
            )
        params = [_pointer_of(p) for p in params]
        if not params:
            raise ValueError("RemoteOptimizer got an empty parameter list")
        first = params[0]["params"][0] if isinstance(params[0], dict) else params[0]
        if not isinstance(first, PointerTensor):
            raise TypeError("RemoteOptimizer optimizes PointerTensors; send the model first")
        self.location: Remote = first.location
        self.name = name
        made = self.location.run_op(f"optim.{name}", params, **options)
        made._owned = False  # this handle owns the optimizer
        self.id: int = made.id
        self._owned = True

    _remote_ref = True

    @classmethod
    def _from_info(cls, location: Remote, info: ObjectInfo) -> RemoteOptimizer:
        """A handle on an optimizer the node holds (``worker.pointer(id)`` after a reconnect
        or a restart of the node: optimizers are durable like every object)."""
        handle = cls.__new__(cls)
        handle.location, handle.name, handle.id, handle._owned = (
            location,
            "optimizer",
            info.id,
            True,
        )
        return handle

    def step(self) -> None:
        self.location.run_op("Optimizer.step", self)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.location.run_op("Optimizer.zero_grad", self, bool(set_to_none))

    def __repr__(self) -> str:
        return f"RemoteOptimizer({self.name}, node={self.location.name!r}, id={self.id})"


classes.module, classes.optimizer = PointerModule, RemoteOptimizer
