"""Any ``torch.nn`` model, shared: its parameters become shared
:class:`~veil.mpc.tensors.autograd.AutogradTensor` leaves and its own ``forward`` (residual
additions, ``torch.cat``, ``F.relu``, ``x.view``) runs on shares; ``loss.backward()`` fills
their ``.grad`` and a ``torch.optim.SGD`` over ``model.parameters()`` updates them.

Spellings: ``model.fix_precision().share(alice, bob, crypto_provider=james,
requires_grad=True)``, ``optimizer.fix_precision()``, ``model.copy()``, ``model.refresh()``,
``model.get().float_precision()``. A model that lives on a node is shared by that node
(``ptr.share(...)`` of a model sent in ``"params"`` form): the owner's node splits each
weight and seals a seed to the other parties, so the driver never sees a weight.

Example:
    >>> import torch, veil
    >>> from torch import nn
    >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Linear(2, 1)
    >>> shared = model.fix_precision().share(a, b, crypto_provider=c, requires_grad=True)
    >>> opt = torch.optim.SGD(shared.parameters(), lr=0.1).fix_precision()
    >>> x = torch.tensor([[1.0, 2.0]]).share(a, b, crypto_provider=c)
    >>> loss = ((shared(x) - 1) ** 2).sum()
    >>> loss.backward(); opt.step()
    >>> torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    >>> ((model(torch.tensor([[1.0, 2.0]])) - 1) ** 2).sum().backward()
    >>> with torch.no_grad():
    ...     _ = model.weight.sub_(0.1 * model.weight.grad)
    >>> bool(torch.allclose(shared.weight.reconstruct(), model.weight, atol=1e-3))
    True
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from veil.errors import UnsupportedError
from veil.mpc.protocols.session import MPCSession, Security, session_for
from veil.mpc.providers.base import CryptoProvider
from veil.mpc.ring import FixedPoint
from veil.mpc.tensors.autograd import AutogradTensor
from veil.node.worker import Worker


class SharedModule(nn.Module):
    """Mixed into the class of a shared copy of a model (``SharedNet`` for ``Net``): the
    model's own methods and layers, with shared parameters, plus the veil surface.

    Example:
        >>> import torch, veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> shared = torch.nn.Linear(2, 1).fix_precision().share(a, b, crypto_provider=c)
        >>> isinstance(shared, SharedModule), isinstance(shared, torch.nn.Linear)
        (True, True)
        >>> type(shared.copy().get().float_precision()).__name__
        'Linear'
    """

    def copy(self) -> SharedModule:
        """Another shared model over the same shares (shares are never changed in place:
        training one copy leaves the other as it was)."""
        memo: dict[int, Any] = {id(p): p.copy() for p in self._shared_tensors()}
        return copy.deepcopy(self, memo)

    def refresh(self) -> SharedModule:
        """Re-randomize every shared parameter's shares (same values); returns ``self``."""
        for p in self._shared_tensors():
            p.secret = p.refresh().secret
        return self

    def get(self) -> FixedPrecisionModule:
        """Reconstruct the weights (needs read access to every share): a
        :class:`FixedPrecisionModule`; ``.float_precision()`` gives the plain model."""
        plain = self._plain_class()
        memo: dict[int, Any] = {}
        for p in self._shared_tensors():
            memo[id(p)] = nn.Parameter(p.reconstruct(), requires_grad=p.requires_grad)
        out = copy.deepcopy(self, memo)
        out.__class__ = plain  # type: ignore[assignment]
        return FixedPrecisionModule(out, self._encoding())

    def _encoding(self) -> FixedPoint:
        first = next(iter(self._shared_tensors()), None)
        return first.encoding if first is not None else FixedPoint(16)

    def _plain_class(self) -> type[nn.Module]:
        cls = next(c for c in type(self).__mro__[1:] if not issubclass(c, SharedModule))
        return cls  # type: ignore[return-value]

    def _shared_tensors(self) -> list[AutogradTensor]:
        seen: dict[int, AutogradTensor] = {}
        for m in self.modules():
            for v in list(m._parameters.values()) + list(m._buffers.values()):
                if isinstance(v, AutogradTensor):
                    seen.setdefault(id(v), v)
        return list(seen.values())


_CLASSES: dict[type, type] = {}


def _shared_class(cls: type[nn.Module]) -> type[nn.Module]:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(
            f"Shared{cls.__name__}", (SharedModule, cls), {"__module__": cls.__module__}
        )
    return _CLASSES[cls]


class FixedPrecisionModule:
    """A model to be shared in fixed point (``model.fix_precision()``), or a reconstructed
    one (``shared.get()``): ``share(...)`` splits it, ``float_precision()`` gives it back.

    Example:
        >>> from torch import nn
        >>> FixedPrecisionModule(nn.Linear(2, 1), FixedPoint(16))
        FixedPrecisionModule(Linear(in_features=2, out_features=1, bias=True), frac_bits=16)
    """

    def __init__(self, module: nn.Module, encoding: FixedPoint) -> None:
        self.module = module
        self.encoding = encoding

    def share(self, *parties: Worker, crypto_provider: Worker | CryptoProvider | None = None,
              requires_grad: bool = False, security: Security = "semi-honest",
              session: MPCSession | None = None) -> nn.Module:  # fmt: skip
        """Share the model's weights among ``parties`` (see :func:`share_module`)."""
        return share_module(self.module, parties, crypto_provider, requires_grad=requires_grad,
                            security=security, session=session,
                            frac_bits=self.encoding.frac_bits)  # fmt: skip

    def float_precision(self) -> nn.Module:
        """The plain model (decoded weights)."""
        return self.module

    def __repr__(self) -> str:
        return f"FixedPrecisionModule({self.module!r}, frac_bits={self.encoding.frac_bits})"


def _fold_batch_norms(model: nn.Module) -> dict[int, torch.Tensor]:
    """Eval-mode BatchNorm folded into its weight and bias (the statistics are the
    owner's data: they are shared inside the weight, the running stats become public
    zeros and ones). Returns the folded values by the id of the parameter they replace."""
    out: dict[int, torch.Tensor] = {}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_var is None or m.running_mean is None or not m.affine:
                raise UnsupportedError(
                    f"{type(m).__name__} is shared with running statistics and affine=True"
                )
            scale = (m.running_var.double() + m.eps).rsqrt()
            shift = m.bias.detach().double() - m.running_mean.double() * scale * m.weight.double()
            out[id(m.weight)] = (scale * m.weight.double()).detach()
            out[id(m.bias)] = shift.detach()
    return out


def share_module(model: nn.Module, parties: Sequence[Worker],
                 provider: Worker | CryptoProvider | None = None, *, requires_grad: bool = False,
                 security: Security = "semi-honest", session: MPCSession | None = None,
                 frac_bits: int = 16) -> nn.Module:  # fmt: skip
    """A shared copy of ``model``: same class and layers (``Shared<Class>``), each parameter
    an :class:`AutogradTensor` leaf (``requires_grad`` as asked), buffers shared too.
    Calling it on shared inputs runs the model's own ``forward`` on shares; an op with no
    shared implementation raises :class:`~veil.errors.UnsupportedError` naming it.
    BatchNorm layers are folded into their (shared) weight and bias and run in eval mode.

    Example:
        >>> import torch, veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> shared = share_module(torch.nn.Linear(3, 2), [a, b], c)
        >>> type(shared).__name__, type(shared.weight).__name__
        ('SharedLinear', 'AutogradTensor')
    """
    sess = session or session_for(parties, provider, frac_bits=frac_bits, security=security)
    folded = _fold_batch_norms(model)
    memo: dict[int, Any] = {}

    def share(t: torch.Tensor, grad: bool) -> AutogradTensor:
        value = folded.get(id(t), t.detach())
        secret = value.fix_precision(frac_bits).share(session=sess)  # type: ignore[attr-defined]
        return AutogradTensor(secret, requires_grad=grad)

    for p in model.parameters():
        memo.setdefault(id(p), share(p, requires_grad and p.requires_grad))
    for m in model.modules():
        for name, buf in m._buffers.items():
            if buf is None or id(buf) in memo:
                continue
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and name.startswith("running_"):
                public = (
                    torch.zeros_like(buf)
                    if name == "running_mean"
                    else torch.ones_like(buf) - m.eps
                )
                memo[id(buf)] = public
            elif buf.is_floating_point():
                memo[id(buf)] = share(buf, False)
    shared = copy.deepcopy(model, memo)
    shared.__class__ = _shared_class(type(model))
    return shared


def module_fix_precision(self: nn.Module, frac_bits: int = 16) -> FixedPrecisionModule:
    """``model.fix_precision()``: the model ready to be shared (``.share(...)``).

    Example:
        >>> module_fix_precision(nn.Linear(1, 1), 12).encoding
        FixedPoint(frac_bits=12)
    """
    return FixedPrecisionModule(self, FixedPoint(frac_bits))


def optimizer_fix_precision(self: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``optimizer.fix_precision()``: PySyft's spelling, kept. Veil encodes public
    hyperparameters (the learning rate) when they meet shares, so the optimizer itself
    is returned once every parameter is checked to be shared.

    Example:
        >>> opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
        >>> optimizer_fix_precision(opt)
        Traceback (most recent call last):
        ...
        veil.errors.UnsupportedError: 2 parameters of this optimizer are plain tensors: ...
    """
    plain = [p for g in self.param_groups for p in g["params"] if not isinstance(p, AutogradTensor)]
    if plain:
        raise UnsupportedError(
            f"{len(plain)} parameters of this optimizer are plain tensors: share the model "
            "first (model.fix_precision().share(...)) and build the optimizer over its parameters"
        )
    return self


def pointer_module_share(self: Any, *parties: Worker, crypto_provider: Worker | CryptoProvider | None = None,
                         requires_grad: bool = False, security: Security = "semi-honest",
                         session: MPCSession | None = None) -> nn.Module:  # fmt: skip
    """Share a model that lives on a node: the node holding it splits each weight among the
    parties (it must be one of them) and the driver gets the shared model without ever
    seeing a weight. Works for models sent in ``"params"`` form (a model with its own
    ``forward``, or ``mode="params"``).

    Example:
        >>> import veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(2, 1)
        >>> shared = b.send(model, mode="params").share(a, b, crypto_provider=c)
        >>> bool(torch.allclose(shared.weight.reconstruct(), model.weight, atol=1e-4))
        True
    """
    shell = getattr(self, "_shell", None)
    if shell is None:
        raise UnsupportedError(
            "sharing a model sent in 'module' form from its node is not supported; send it "
            "with model.send(node, mode='params') to share it from there"
        )
    sess = session or session_for(parties, crypto_provider, security=security)
    memo: dict[int, Any] = {}
    for p in list(shell.parameters()) + list(shell.buffers()):
        ptr = p  # a PointerTensor in the shell
        if id(ptr) not in memo:
            secret = ptr.fix_precision().share(session=sess)
            memo[id(ptr)] = AutogradTensor(secret, requires_grad=requires_grad)
    shared = copy.deepcopy(shell, memo)
    shared.__class__ = _shared_class(type(shell))
    return shared


def sent_module_share(model: nn.Module, parties: Sequence[Worker],
                      crypto_provider: Worker | CryptoProvider | None = None, *,
                      requires_grad: bool = False, security: Security = "semi-honest",
                      session: MPCSession | None = None) -> nn.Module:  # fmt: skip
    """Share a model sent in place (PySyft's ``model.send(bob)``) from the node that holds
    it: that node splits each weight among the parties (it must be one of them), so the
    driver never sees a weight. Answers a shared copy running the model's own ``forward``.

    Example:
        >>> import veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(2, 1)
        >>> w = model.weight.detach().clone()
        >>> shared = model.send(b).share(a, b, crypto_provider=c)
        >>> bool(torch.allclose(shared.weight.reconstruct(), w, atol=1e-4))
        True
    """
    from veil.pointers import inplace

    sess = session or session_for(parties, crypto_provider, security=security)
    memo: dict[int, Any] = {}
    for sub in model.modules():
        memo[id(sub.__dict__.get(inplace._STATE_ATTR))] = None
        memo[id(sub.__dict__.get("location"))] = None  # the worker, not copied
        for table in (sub._parameters, sub._buffers):
            for t in table.values():
                if t is None or id(t) in memo:
                    continue
                ptr = getattr(t, inplace.POINTER_ATTR)
                leaf = AutogradTensor(ptr.fix_precision().share(session=sess),
                                      requires_grad=requires_grad)  # fmt: skip
                memo[id(t)] = memo[id(ptr)] = leaf
    shared = copy.deepcopy(model, memo)
    for sub in shared.modules():
        for name in [*sub._parameters, *sub._buffers, inplace._STATE_ATTR]:
            sub.__dict__.pop(name, None)  # the pointers that stood for the weights
        for key, hook in list(sub._forward_pre_hooks.items()):
            if hook is inplace._check_inputs:
                del sub._forward_pre_hooks[key]
    shared.__dict__.pop("location", None)
    shared.__class__ = _shared_class(type(model))
    return shared
