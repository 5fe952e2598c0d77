"""Shared models: private inference and training of torch models on secret-shared data.

``encrypt_model(model, parties, provider)`` (also ``model.share(*parties,
crypto_provider=provider)``) secret-shares a plain ``torch.nn`` model's weights among the
parties; calling it on a :class:`~veil.mpc.SharedTensor` runs the forward pass under MPC.
With ``security="malicious"`` the weights and inputs are
:class:`~veil.mpc.authenticated.AuthenticatedTensor` objects and every layer (forward and
backward) runs on MAC-checked protocols.
Supported layers: Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d, Flatten, BatchNorm1d/2d in
eval mode (folded into a shared scale and shift), Dropout (identity), Identity, and
Sequential containers of them. A Keras model (a chain of built-in layers) is shared as the
torch layers it computes (:func:`veil.serde.keras_torch.keras_to_torch`).

Training: :meth:`SharedSequential.backward` back-propagates a shared gradient through
Linear, ReLU, Flatten and Dropout layers (explicit layer-wise gradients, not autograd) and
:class:`SGD` updates the shared weights. :func:`cross_entropy_grad` gives the gradient of
softmax cross-entropy with respect to the logits.

Example:
    >>> import torch, veil
    >>> from torch import nn
    >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> shared = encrypt_model(model, [a, b], c)
    >>> x = torch.randn(5, 4)
    >>> out = shared(x.share(a, b, crypto_provider=c)).reconstruct()
    >>> bool(torch.allclose(out, model(x), atol=1e-2))
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeAlias

import torch
from torch import nn

from veil.errors import UnsupportedError
from veil.mpc.protocols.session import MPCSession, Security, session_for
from veil.mpc.providers.base import CryptoProvider
from veil.mpc.tensors.authenticated import AuthenticatedTensor
from veil.mpc.tensors.shared import SharedTensor
from veil.node.worker import Worker
from veil.serde.keras_torch import is_keras, keras_to_torch

#: What shared layers compute on: semi-honest shares, or authenticated ones (``security="malicious"``).
Secret: TypeAlias = SharedTensor | AuthenticatedTensor


class SharedLayer:
    """One layer of a shared model."""

    def forward(self, x: Secret) -> Secret:
        raise NotImplementedError

    def backward(self, grad: Secret) -> Secret:
        raise UnsupportedError(
            f"{type(self).__name__} has no backward pass; private training supports "
            "Linear, ReLU, Flatten and Dropout"
        )

    def parameters(self) -> list[Secret]:
        return []

    def grads(self) -> list[Secret | None]:
        return []

    def set_parameters(self, params: list[Secret]) -> None:
        pass

    def __call__(self, x: Secret) -> Secret:
        return self.forward(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SharedLinear(SharedLayer):
    def __init__(self, weight: Secret, bias: Secret | None) -> None:
        self.weight, self.bias = weight, bias
        self._weight_t: Secret | None = None  # transposed once, not at every forward
        self._x: Secret | None = None
        self._grads: list[Secret | None] = []

    def forward(self, x: Secret) -> Secret:
        self._x = x
        if self._weight_t is None:
            self._weight_t = self.weight.t()
        out = x @ self._weight_t
        return out + self.bias if self.bias is not None else out

    def backward(self, grad: Secret) -> Secret:
        if self._x is None:
            raise RuntimeError("backward() before forward()")
        x = self._x
        gw = grad.t() @ x
        gb = grad.sum(0) if self.bias is not None else None
        self._grads = [gw, gb] if self.bias is not None else [gw]
        return grad @ self.weight

    def parameters(self) -> list[Secret]:
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def grads(self) -> list[Secret | None]:
        return self._grads

    def set_parameters(self, params: list[Secret]) -> None:
        self.weight = params[0]
        self._weight_t = None
        if self.bias is not None:
            self.bias = params[1]

    def __repr__(self) -> str:
        o, i = self.weight.shape
        return f"SharedLinear(in_features={i}, out_features={o}, bias={self.bias is not None})"


class SharedConv2d(SharedLayer):
    def __init__(self, weight: Secret, bias: Secret | None, stride: int,
                 padding: int) -> None:  # fmt: skip
        self.weight, self.bias, self.stride, self.padding = weight, bias, stride, padding

    def forward(self, x: Secret) -> Secret:
        return x.conv2d(self.weight, self.bias, stride=self.stride, padding=self.padding)

    def parameters(self) -> list[Secret]:
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def __repr__(self) -> str:
        o, i, kh, kw = self.weight.shape
        return f"SharedConv2d({i}, {o}, kernel_size=({kh}, {kw}), stride={self.stride}, padding={self.padding})"


class SharedReLU(SharedLayer):
    def __init__(self) -> None:
        self._keep: Secret | None = None

    def forward(self, x: Secret) -> Secret:
        self._keep = 1 - x._sign()
        return x * self._keep

    def backward(self, grad: Secret) -> Secret:
        if self._keep is None:
            raise RuntimeError("backward() before forward()")
        return grad * self._keep


class SharedMaxPool2d(SharedLayer):
    def __init__(self, kernel_size: int, stride: int) -> None:
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: Secret) -> Secret:
        return x.max_pool2d(self.kernel_size, self.stride)

    def __repr__(self) -> str:
        return f"SharedMaxPool2d(kernel_size={self.kernel_size}, stride={self.stride})"


class SharedAvgPool2d(SharedLayer):
    def __init__(self, kernel_size: int, stride: int) -> None:
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: Secret) -> Secret:
        return x.avg_pool2d(self.kernel_size, self.stride)


class SharedFlatten(SharedLayer):
    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        self.start_dim, self.end_dim = start_dim, end_dim
        self._shape: torch.Size | None = None

    def forward(self, x: Secret) -> Secret:
        self._shape = x.shape
        return x.flatten(self.start_dim, self.end_dim)

    def backward(self, grad: Secret) -> Secret:
        assert self._shape is not None
        return grad.reshape(*self._shape)


class SharedIdentity(SharedLayer):
    def forward(self, x: Secret) -> Secret:
        return x

    def backward(self, grad: Secret) -> Secret:
        return grad


class SharedAffine(SharedLayer):
    """Eval-mode BatchNorm folded into ``x * scale + shift`` (per channel, shared)."""

    def __init__(self, scale: Secret, shift: Secret) -> None:
        self.scale, self.shift = scale, shift

    def forward(self, x: Secret) -> Secret:
        view = [1, -1] + [1] * (x.dim() - 2)
        return x * self.scale.reshape(*view).expand(*x.shape) + self.shift.reshape(*view)


class SharedSequential(SharedLayer):
    """A shared model: its layers run in order on a :class:`Secret`."""

    def __init__(self, layers: Sequence[SharedLayer], session: MPCSession) -> None:
        self.layers = list(layers)
        self.session = session

    def forward(self, x: Any) -> Secret:
        if isinstance(x, torch.Tensor):
            x = x.share(session=self.session)  # type: ignore[attr-defined]
        for layer in self.layers:
            x = layer(x)
        return x  # type: ignore[no-any-return]

    def backward(self, grad: Secret) -> Secret:
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return grad

    def parameters(self) -> list[Secret]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __iter__(self) -> Iterator[SharedLayer]:
        return iter(self.layers)

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"SharedSequential(parties={[p.name for p in self.session.parties]},\n{inner}\n)"


class SGD:
    """Plain SGD on shared parameters: ``w -= lr * grad`` (``lr`` is public).

    Example:
        >>> import torch, veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> model = encrypt_model(torch.nn.Linear(2, 1), [a, b], c)
        >>> opt = SGD(model, lr=0.1)
        >>> opt
        SGD(lr=0.1, layers=1)
    """

    def __init__(self, model: SharedSequential, lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}; typical values are 0.01-1")
        self.model, self.lr = model, lr

    def step(self) -> None:
        for layer in self.model.layers:
            grads = layer.grads()
            if not grads:
                continue
            params = layer.parameters()
            layer.set_parameters(
                [
                    p - g * self.lr if g is not None else p
                    for p, g in zip(params, grads, strict=True)
                ]
            )

    def __repr__(self) -> str:
        n = sum(1 for layer in self.model.layers if layer.parameters())
        return f"SGD(lr={self.lr}, layers={n})"


def cross_entropy_grad(logits: Secret, onehot: Secret) -> Secret:
    """d(mean softmax cross-entropy)/d(logits) = (softmax(logits) - onehot) / batch."""
    return (logits.softmax(1) - onehot) * (1.0 / logits.shape[0])


def _layer(m: nn.Module, share: Any) -> list[SharedLayer]:
    if isinstance(m, nn.Sequential):
        return [lay for child in m for lay in _layer(child, share)]
    if isinstance(m, nn.Linear):
        return [SharedLinear(share(m.weight), share(m.bias) if m.bias is not None else None)]
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or m.dilation not in ((1, 1), 1) or m.padding_mode != "zeros":
            raise UnsupportedError("Conv2d with groups, dilation or non-zero padding modes")
        if len(set(m.stride)) != 1 or not isinstance(m.padding, tuple) or len(set(m.padding)) != 1:
            raise UnsupportedError("Conv2d needs equal strides and paddings on both axes")
        bias = share(m.bias) if m.bias is not None else None
        return [SharedConv2d(share(m.weight), bias, m.stride[0], int(m.padding[0]))]
    if isinstance(m, nn.ReLU):
        return [SharedReLU()]
    if isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        s = m.stride if isinstance(m.stride, int) else (m.stride or (k,))[0]
        if (m.padding not in (0, (0, 0))) or getattr(m, "ceil_mode", False):
            raise UnsupportedError(f"{type(m).__name__} with padding or ceil_mode")
        cls = SharedMaxPool2d if isinstance(m, nn.MaxPool2d) else SharedAvgPool2d
        return [cls(k, s or k)]
    if isinstance(m, nn.Flatten):
        return [SharedFlatten(m.start_dim, m.end_dim)]
    if isinstance(m, nn.Dropout | nn.Identity):
        return [SharedIdentity()]
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        if m.training or m.running_mean is None or m.running_var is None:
            raise UnsupportedError(
                "BatchNorm is supported in eval mode with running stats: model.eval()"
            )
        scale = (m.running_var + m.eps).rsqrt()
        shift = -m.running_mean * scale
        if m.affine:
            scale, shift = scale * m.weight, shift * m.weight + m.bias
        return [SharedAffine(share(scale.detach()), share(shift.detach()))]
    raise UnsupportedError(
        f"{type(m).__name__} cannot be shared; supported: Linear, Conv2d, ReLU, MaxPool2d, "
        "AvgPool2d, Flatten, BatchNorm (eval), Dropout, Identity, Sequential"
    )


def _leaves(m: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    if isinstance(m, nn.Sequential):
        for name, child in m.named_children():
            yield from _leaves(child, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix, m


def encrypt_model(model: nn.Module, parties: Sequence[Worker], provider: Worker | CryptoProvider | None = None, *,
                  session: MPCSession | None = None,
                  security: Security = "semi-honest") -> SharedSequential:  # fmt: skip
    """Secret-share ``model``'s weights among ``parties`` (see the module docstring).

    With ``security="malicious"`` the weights are shared with SPDZ2k MACs
    (:class:`~veil.mpc.authenticated.AuthenticatedTensor`) and the model runs on
    authenticated inputs: every opening of the forward (and backward) pass is MAC-checked,
    and a party that alters a share makes it raise :class:`~veil.errors.MACCheckFailed`.
    ``session`` (an :class:`MPCSession`) replaces parties, provider and security.

    Raises:
        UnsupportedError: listing every layer that cannot be shared.

    Example:
        >>> import torch, veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
        >>> shared = encrypt_model(model, [a, b], c, security="malicious")
        >>> x = torch.randn(4, 3)
        >>> out = shared(x.share(a, b, crypto_provider=c, security="malicious"))
        >>> type(out).__name__, bool(torch.allclose(out.reconstruct(), model(x), atol=1e-2))
        ('AuthenticatedTensor', True)
    """
    if is_keras(model):
        model = keras_to_torch(model)
    sess = session or session_for(parties, provider, security=security)
    problems = []
    if list(model.children()) and not isinstance(model, nn.Sequential):
        problems.append(
            f"{type(model).__name__} has its own forward(); put its layers in an nn.Sequential"
        )
    else:
        for name, m in _leaves(model, ""):
            try:
                _layer(m, lambda t: None)
            except UnsupportedError as exc:
                problems.append(f"{name or type(m).__name__}: {exc}")
    if problems:
        raise UnsupportedError("cannot share this model: " + "; ".join(problems))

    def share(t: torch.Tensor) -> Secret:
        return t.detach().share(session=sess)  # type: ignore[attr-defined, no-any-return]

    return SharedSequential(_layer(model, share), sess)


def _module_share(self: nn.Module, *parties: Worker, crypto_provider: Worker | CryptoProvider | None = None,
                  security: Security = "semi-honest", requires_grad: bool = False) -> Any:  # fmt: skip
    """``model.share(alice, bob, crypto_provider=carol[, security="malicious"])``: an
    ``nn.Sequential`` of supported layers becomes a :class:`SharedSequential` (see
    :func:`encrypt_model`); a model with its own ``forward``, or any model shared with
    ``requires_grad=True``, a shared copy running its own ``forward`` on shares
    (:func:`veil.mpc.tensors.modules.share_module`); a model sent in place
    (``model.send(bob)``) is shared by the node that holds it."""
    from veil.pointers.inplace import is_sent

    if is_sent(self):
        from veil.mpc.tensors.modules import sent_module_share

        return sent_module_share(self, parties, crypto_provider, requires_grad=requires_grad,
                                 security=security)  # fmt: skip
    if is_keras(self):  # a Keras chain of built-in layers, as the torch layers it computes
        twin = keras_to_torch(self).requires_grad_(requires_grad)
        return _module_share(twin, *parties, crypto_provider=crypto_provider, security=security,
                             requires_grad=requires_grad)  # fmt: skip
    if requires_grad or (list(self.children()) and not isinstance(self, nn.Sequential)):
        from veil.mpc.tensors.modules import share_module

        return share_module(self, parties, crypto_provider, requires_grad=requires_grad,
                            security=security)  # fmt: skip
    return encrypt_model(self, parties, crypto_provider, security=security)
