"""nn modules and optimizers a node will build from a description sent by a peer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from veil.ops.facts import OpFacts
from veil.ops.registry import OpRegistry, OpSpec

_MODULES = """
Sequential ModuleList ModuleDict Identity Linear Bilinear Conv1d Conv2d Conv3d
ConvTranspose1d ConvTranspose2d ConvTranspose3d MaxPool1d MaxPool2d MaxPool3d AvgPool1d
AvgPool2d AvgPool3d AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d
AdaptiveMaxPool2d LPPool1d LPPool2d BatchNorm1d BatchNorm2d BatchNorm3d LayerNorm GroupNorm
InstanceNorm1d InstanceNorm2d RMSNorm LocalResponseNorm Dropout Dropout1d Dropout2d Dropout3d
AlphaDropout Embedding EmbeddingBag RNN GRU LSTM RNNCell GRUCell LSTMCell MultiheadAttention
Flatten Unflatten ReLU ReLU6 LeakyReLU PReLU ELU SELU CELU GELU SiLU Mish Sigmoid Tanh Softmax
Softmax2d LogSoftmax Softmin Softplus Softsign Hardtanh Hardswish Hardsigmoid Hardshrink
Softshrink Tanhshrink LogSigmoid Threshold GLU Upsample PixelShuffle PixelUnshuffle ZeroPad1d
ZeroPad2d ConstantPad1d ConstantPad2d ReflectionPad1d ReflectionPad2d ReplicationPad1d
ReplicationPad2d CosineSimilarity PairwiseDistance CrossEntropyLoss MSELoss L1Loss NLLLoss
BCELoss BCEWithLogitsLoss SmoothL1Loss HuberLoss KLDivLoss
""".split()

_OPTIMIZERS = "SGD Adam AdamW RMSprop Adagrad Adadelta Adamax NAdam RAdam".split()

#: Allowlisted nn.Module classes by wire name (``"Linear"`` -> ``torch.nn.Linear``).
MODULE_CLASSES: dict[str, type[nn.Module]] = {
    name: getattr(nn, name) for name in _MODULES if isinstance(getattr(nn, name, None), type)
}
#: Allowlisted optimizer classes by wire name.
OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    name: getattr(torch.optim, name) for name in _OPTIMIZERS if hasattr(torch.optim, name)
}
MODULE_NAMES: dict[type, str] = {cls: name for name, cls in MODULE_CLASSES.items()}
OPTIMIZER_NAMES: dict[type, str] = {cls: name for name, cls in OPTIMIZER_CLASSES.items()}


def _module_call(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return module(*args, **kwargs)


def _module_parameters(module: nn.Module) -> list[torch.Tensor]:
    return list(module.parameters())


def _module_buffers(module: nn.Module) -> list[torch.Tensor]:
    return list(module.buffers())


def _module_train(module: nn.Module, mode: bool = True) -> None:
    module.train(bool(mode))


def _module_zero_grad(module: nn.Module, set_to_none: bool = True) -> None:
    module.zero_grad(set_to_none=bool(set_to_none))


def _optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    optimizer.step()


def _optimizer_zero_grad(optimizer: torch.optim.Optimizer, set_to_none: bool = True) -> None:
    optimizer.zero_grad(set_to_none=bool(set_to_none))


def _make_optimizer(cls: type[torch.optim.Optimizer]) -> Any:
    def build(params: list[Any], **options: Any) -> torch.optim.Optimizer:
        return cls(params, **options)

    build.__name__ = f"build_{cls.__name__}"
    return build


def register_module_ops(reg: OpRegistry) -> None:
    """Register module calls, parameter access and optimizer construction and steps."""
    done = OpFacts(size="input", pipeline="done")
    # a module call's output size is set by its layers' configuration: checked on meta
    # tensors; it writes its input when a layer is in-place (ReLU(inplace=True) first...)
    call = OpFacts(writes=("input",), write_switch="inplace", size="meta")
    reg.register(OpSpec("Module.__call__", _module_call, "module_call", call))
    reg.register(
        OpSpec(
            "Module.parameters", _module_parameters, facts=OpFacts(size="input", pipeline="never")
        )
    )
    reg.register(
        OpSpec("Module.buffers", _module_buffers, facts=OpFacts(size="input", pipeline="never"))
    )
    reg.register(OpSpec("Module.train", _module_train, "inplace", done))
    reg.register(OpSpec("Module.zero_grad", _module_zero_grad, "inplace", done))
    reg.register(OpSpec("Optimizer.step", _optimizer_step, "step", done))
    reg.register(OpSpec("Optimizer.zero_grad", _optimizer_zero_grad, "inplace", done))
    build = OpFacts(writes=("params",), size="input", pipeline="never")  # it steps them later
    for name, cls in OPTIMIZER_CLASSES.items():
        reg.register(OpSpec(f"optim.{name}", _make_optimizer(cls), facts=build))
