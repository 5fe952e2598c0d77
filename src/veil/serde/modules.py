"""``nn.Module`` trees of allowlisted classes <-> :class:`ModuleSpec` (no pickle, no code)."""

from __future__ import annotations

import inspect
from typing import Any

import msgspec
import torch
from torch import nn

from veil.errors import InvalidRequest, OpNotAllowed, SerdeError, UnsupportedError
from veil.ops.modules import MODULE_CLASSES, MODULE_NAMES
from veil.serde.messages import ModuleSpec, TensorData
from veil.serde.tensors import dtype_name, tensor_from_data, tensor_to_data
from veil.serde.values import from_arg, to_arg

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_SKIP_PARAMS = {"self", "device", "dtype", "_weight", "_freeze"}
MAX_MODULE_DEPTH = 32


def unsupported_modules(module: nn.Module) -> list[str]:
    """Names of submodules whose class a node would not build from a description.

    Example:
        >>> unsupported_modules(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
        []
    """
    bad: list[str] = []

    def walk(prefix: str, m: nn.Module) -> None:
        if type(m) not in MODULE_NAMES:
            bad.append(f"{prefix or '<root>'} ({type(m).__name__})")
            return
        if isinstance(m, _CONTAINERS):
            for name, child in m.named_children():
                walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", module)
    return bad


def _config(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, _CONTAINERS):
        return {}
    config: dict[str, Any] = {}
    sig = inspect.signature(type(module).__init__)
    if isinstance(module, nn.RNNBase):  # LSTM/GRU/RNN take *args; their base names them
        params = dict(inspect.signature(nn.RNNBase.__init__).parameters)
        params.pop("mode")
        if not isinstance(module, nn.LSTM):
            params.pop("proj_size")
        if isinstance(module, nn.RNN):
            config["nonlinearity"] = module.nonlinearity
        sig = sig.replace(parameters=list(params.values()))
    for pname, param in sig.parameters.items():
        if pname in _SKIP_PARAMS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if pname == "bias" and not isinstance(getattr(module, "bias", True), bool):
            config["bias"] = getattr(module, "bias", None) is not None
            continue
        if pname == "bias" and isinstance(module, nn.MultiheadAttention):
            config["bias"] = module.in_proj_bias is not None
            continue
        if pname == "add_bias_kv" and isinstance(module, nn.MultiheadAttention):
            config["add_bias_kv"] = module.bias_k is not None
            continue
        if not hasattr(module, pname):
            continue
        value = getattr(module, pname)
        if callable(value) and not isinstance(value, torch.Tensor):
            raise UnsupportedError(
                f"{type(module).__name__}.{pname} is a callable and cannot be described"
            )
        config[pname] = value
    return config


def module_to_spec(module: nn.Module) -> ModuleSpec:
    """Describe a module tree of allowlisted classes, with its parameters and buffers.

    Raises:
        UnsupportedError: a submodule is not allowlisted (send it with
            ``mode="params"`` so its forward runs locally on remote parameters).

    Example:
        >>> spec = module_to_spec(nn.Linear(3, 2))
        >>> spec.cls, spec.config["out_features"], sorted(spec.state)
        ('Linear', 2, ['bias', 'weight'])
    """
    bad = unsupported_modules(module)
    if bad:
        raise UnsupportedError(
            "these modules cannot be rebuilt on a node: " + ", ".join(bad) + "; send the "
            "model with worker.send(model, mode='params') (or model.send(worker)) to run its forward on pointers"
        )
    state: dict[str, TensorData] = {}
    for name, p in module.named_parameters():
        state[name] = tensor_to_data(p.detach().requires_grad_(p.requires_grad))
    for name, b in module.named_buffers():
        state[name] = tensor_to_data(b)
    return _describe(module, state)


def hollow_spec(module: nn.Module) -> ModuleSpec:
    """A module's architecture without its data or training mode: classes, configs, and the
    shape, dtype and requires_grad of each parameter and buffer (what a plan's module slot
    states, and what a node checks a model against before running a plan on it).

    Example:
        >>> hollow_spec(nn.Linear(3, 2)) == hollow_spec(nn.Linear(3, 2).eval())
        True
        >>> hollow_spec(nn.Linear(3, 2)) == hollow_spec(nn.Linear(3, 4))
        False
    """
    bad = unsupported_modules(module)
    if bad:
        raise UnsupportedError("these modules cannot be rebuilt on a node: " + ", ".join(bad))
    empty = memoryview(b"")
    state = {
        name: TensorData(dtype_name(t.dtype), list(t.shape), empty, bool(t.requires_grad))
        for name, t in [*module.named_parameters(), *module.named_buffers()]
    }
    return _trained(_describe(module, state))


def _trained(spec: ModuleSpec) -> ModuleSpec:
    return msgspec.structs.replace(
        spec, training=True, children=[(n, _trained(c)) for n, c in spec.children]
    )


def _describe(module: nn.Module, state: dict[str, TensorData]) -> ModuleSpec:
    children = []
    if isinstance(module, _CONTAINERS):
        children = [(n, _describe(c, {})) for n, c in module.named_children()]
    config = {k: to_arg(v, lambda _o: None) for k, v in _config(module).items()}
    return ModuleSpec(
        cls=MODULE_NAMES[type(module)],
        config=config,
        children=children,
        state=state,
        training=module.training,
    )


def _build(spec: ModuleSpec, depth: int) -> nn.Module:
    if depth > MAX_MODULE_DEPTH:
        raise SerdeError(f"module description nested deeper than {MAX_MODULE_DEPTH}")
    cls = MODULE_CLASSES.get(spec.cls)
    if cls is None:
        raise OpNotAllowed(
            f"module class {spec.cls[:60]!r} is not on this node's allowlist; see "
            "veil.ops.MODULE_CLASSES"
        )
    kwargs = {k: from_arg(v, lambda _i: None) for k, v in spec.config.items()}
    try:
        module = cls(**kwargs)
    except Exception as exc:
        raise InvalidRequest(f"cannot build {spec.cls}: {exc}") from exc
    if spec.children and not isinstance(module, _CONTAINERS):
        raise SerdeError(f"{spec.cls} does not take children in a module description")
    for name, child in spec.children:
        if not name or "." in name or not name.replace("_", "a").isalnum():
            raise SerdeError(f"invalid submodule name {name[:40]!r}")
        module.add_module(name, _build(child, depth + 1))
    module.training = bool(spec.training)  # its own flag only: train() would reset children
    return module


def spec_to_module(spec: ModuleSpec) -> nn.Module:
    """Build the module a :class:`ModuleSpec` describes and load its state (strictly).

    Example:
        >>> m = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
        >>> m2 = spec_to_module(module_to_spec(m))
        >>> torch.equal(m2[0].weight, m[0].weight)
        True
    """
    with torch.device("meta"):  # no memory for (or initialization of) what the config
        module = _build(spec, 0)  # declares: only the state actually sent is materialized
    tensors = {k: tensor_from_data(v, copy=True) for k, v in spec.state.items()}
    try:
        module.load_state_dict(tensors, strict=True, assign=True)
    except Exception as exc:
        raise InvalidRequest(f"module state does not fit {spec.cls}: {exc}") from exc
    missing = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if missing:
        raise InvalidRequest(f"module state of {spec.cls} is missing {', '.join(missing)[:200]}")
    for name, p in module.named_parameters():
        if name in tensors:
            p.requires_grad_(tensors[name].requires_grad)
    return module


def spec_structure(spec: ModuleSpec) -> bytes:
    """Everything in ``spec`` that a forward pass's output shape, dtype and requires_grad
    can depend on (classes, configs, and each state tensor's dtype, shape and
    requires_grad), without the data: a key for caching predictions across models of one
    architecture.

    Example:
        >>> a = module_to_spec(nn.Linear(3, 2)); b = module_to_spec(nn.Linear(3, 2))
        >>> spec_structure(a) == spec_structure(b), a == b
        (True, False)
        >>> spec_structure(a) == spec_structure(module_to_spec(nn.Linear(3, 4)))
        False
    """
    return msgspec.msgpack.encode(_hollow(spec))


def _hollow(spec: ModuleSpec) -> ModuleSpec:
    empty = memoryview(b"")
    return msgspec.structs.replace(
        spec,
        state={k: msgspec.structs.replace(t, data=empty) for k, t in spec.state.items()},
        children=[(name, _hollow(child)) for name, child in spec.children],
    )


def meta_module(spec: ModuleSpec) -> nn.Module:
    """The module a :class:`ModuleSpec` describes, on the meta device (shapes, no data):
    enough to predict what its forward returns.

    Example:
        >>> m = meta_module(module_to_spec(nn.Sequential(nn.Linear(3, 2), nn.ReLU())))
        >>> m(torch.empty(5, 3, device="meta")).shape
        torch.Size([5, 2])
    """
    with torch.device("meta"):
        module = _build(spec, 0)
    for name, p in module.named_parameters():
        if name in spec.state:
            p.requires_grad_(spec.state[name].requires_grad)
    return module
