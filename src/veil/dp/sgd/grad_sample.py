"""Per-sample gradient norms and clipped gradient sums, layer by layer.

:class:`GradSampleModule` wraps a model and records, for every parametrized layer, its
inputs (forward hook) and the gradient of the loss with respect to its outputs (tensor hooks
set in the forward hook). After ``loss.backward()``, :meth:`GradSampleModule.clip_and_sum`
computes each example's gradient norm over the whole model and the sum of the clipped
per-example gradients, choosing per layer how:

* ``nn.Linear`` (any number of leading dims) and ``nn.Conv1d/2d``: from activations ``a`` and
  output gradients ``g``, without per-sample gradients when that is cheaper ("ghost norm":
  ``‖Σ_t a_t g_tᵀ‖² = Σ_{t,t'} (a_t·a_t')(g_t·g_t')``, cost ``T²(d+p)`` against ``T·d·p``),
  then the clipped sum as one matrix product ``aᵀ(c ⊙ g)`` (book-keeping; Bu et al. 2023).
* ``nn.Embedding``: ghost norm over token positions, clipped sum by ``index_add``.
* everything else with parameters (LayerNorm, GroupNorm, MultiheadAttention, any other
  module torch.func can batch): per-sample gradients with ``torch.func``
  (``functional_call`` + ``vmap`` + ``grad`` of ``⟨layer(x_i), g_i⟩``).

A layer called several times in one forward (recurrent cells, tied weights) has its calls
summed per example before the norm, so norms are exact for weight sharing.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = GradSampleModule(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    >>> nn.functional.cross_entropy(model(x), y).backward()
    >>> norms, sums = model.clip_and_sum(max_grad_norm=1.0)
    >>> norms.shape, bool((norms > 0).all()), len(sums)
    (torch.Size([8]), True, 4)
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.linalg import vector_norm
from torch.utils import _pytree as pytree

from veil.dp.sgd import keras_layers
from veil.errors import UnsupportedError

__all__ = ["GradSampleModule", "unsupported_layers"]

_GHOST_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
#: Parameter-holding modules handled as one unit (their forward uses submodules' parameters directly).
_UNITS = (nn.MultiheadAttention,)
#: Off while torch.func re-runs a layer (its forward hooks must not record that call).
_RECORDING = contextvars.ContextVar("veil_dp_recording", default=True)
_NORMS_WITH_STATS = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


def unsupported_layers(model: nn.Module) -> list[str]:
    """Every layer DP-SGD cannot handle, each with what to do instead (empty if none)."""
    if keras_layers.is_keras(model):
        return keras_layers.keras_problems(model)
    problems = []
    for name, m in model.named_modules():
        label = name or type(m).__name__
        if isinstance(m, _NORMS_WITH_STATS):
            problems.append(
                f"{label} ({type(m).__name__}) mixes examples in a batch, so per-example "
                "gradients do not exist: replace it with nn.GroupNorm, or call "
                "veil.dp.fix_model(model) to do it for you"
            )
        elif isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats:
            problems.append(
                f"{label} ({type(m).__name__}) tracks running statistics across examples: "
                "use track_running_stats=False, or nn.GroupNorm"
            )
        elif isinstance(m, nn.Embedding) and (m.max_norm is not None or m.sparse):
            problems.append(f"{label}: Embedding with max_norm or sparse=True is not supported")
        elif isinstance(m, nn.Embedding) and m.scale_grad_by_freq:
            problems.append(f"{label}: Embedding(scale_grad_by_freq=True) mixes examples")
    return problems


@dataclass(slots=True)
class _Call:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[torch.Tensor]
    grads: list[torch.Tensor | None] = field(default_factory=list)


class GradSampleModule(nn.Module):
    """A model wrapper that computes per-example gradient norms and clipped gradient sums.

    Args:
        module: the model (no BatchNorm; see :func:`unsupported_layers`).
        batch_first: whether inputs carry the batch in dim 0 (for layers that have no
            ``batch_first`` attribute of their own).
        loss_reduction: ``"mean"`` if the loss averages over the batch (backprops are
            rescaled by the batch size), ``"sum"`` if it sums.
        ghost: ``"auto"`` chooses per layer; ``"always"``/``"never"`` force it (for tests).
    """

    def __init__(self, module: nn.Module, *, batch_first: bool = True,
                 loss_reduction: str = "mean", ghost: str = "auto") -> None:  # fmt: skip
        super().__init__()
        problems = unsupported_layers(module)
        if problems:
            raise UnsupportedError("DP-SGD cannot train this model:\n- " + "\n- ".join(problems))
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        if ghost not in ("auto", "always", "never"):
            raise ValueError(f"ghost must be 'auto', 'always' or 'never', got {ghost!r}")
        self._module = module
        self.batch_first = batch_first
        self.loss_reduction = loss_reduction
        self.ghost = ghost
        self._calls: dict[nn.Module, list[_Call]] = {}
        self._batch = 0
        self._units = self._find_units(module)
        self._handles = [
            u.register_forward_hook(self._capture, with_kwargs=True) for u in self._units
        ]
        self.hooks_enabled = True

    @property
    def module(self) -> nn.Module:
        return self._module

    @staticmethod
    def _find_units(module: nn.Module) -> list[nn.Module]:
        if keras_layers.is_keras(module):
            return keras_layers.keras_units(module)
        units: list[nn.Module] = []
        inside: set[int] = set()
        for m in module.modules():
            if id(m) in inside:
                continue
            if isinstance(m, _UNITS):
                units.append(m)
                inside.update(id(s) for s in m.modules())
            elif any(p.requires_grad for p in m.parameters(recurse=False)):
                units.append(m)
        return units

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        first = next((a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor)), None)
        if first is not None and first.dim() > 0:
            bd = 0 if self.batch_first or first.dim() < 2 else 1
            self._batch = int(first.shape[bd])
        if self.training and torch.is_grad_enabled() and self.hooks_enabled and _RECORDING.get():
            # Every parameter's gradient comes from the recorded activations and backprops, so
            # the forward runs on detached parameters: backward then computes activation
            # gradients only (no per-batch weight gradients that DP-SGD would throw away).
            if keras_layers.is_keras(self._module):  # Keras reads its variables, not these
                with keras_layers.no_param_grads(self._module):
                    return self._module(*args, **kwargs)
            params = {n: p.detach() for n, p in self._module.named_parameters()}
            return functional_call(self._module, params, args, kwargs)
        return self._module(*args, **kwargs)

    # -- recording --------------------------------------------------------------------
    def _capture(
        self, m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> Any:
        if not (
            self.hooks_enabled and _RECORDING.get() and torch.is_grad_enabled() and self.training
        ):
            return
        # an output that needs no gradient (the first layer: its input and, here, its
        # parameters need none) is tapped as a fresh leaf so its backprop still arrives
        out = pytree.tree_map(_tap, out)
        leaves = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        call = _Call(tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                     dict(kwargs), leaves, [None] * len(leaves))  # fmt: skip
        self._calls.setdefault(m, []).append(call)
        for i, t in enumerate(leaves):
            if t.requires_grad:
                t.register_hook(_store(call, i))
        return out

    def clear(self) -> None:
        """Forget recorded activations and backprops (after each step)."""
        self._calls.clear()

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- norms and sums ---------------------------------------------------------------
    def _batch_size(self) -> int:
        return self._batch if self._calls else 0

    def clip_and_sum(
        self, max_grad_norm: float
    ) -> tuple[torch.Tensor, dict[torch.Tensor, torch.Tensor]]:
        """Per-example gradient norms (before clipping) and, per parameter, the sum over the
        batch of the per-example gradients clipped to ``max_grad_norm`` (L2 over all layers)."""
        batch = self._batch_size()
        if batch == 0:  # an empty Poisson batch: nothing to clip, the noise still goes on
            return torch.zeros(0), {}
        # backprops of a mean loss are 1/batch of each example's: fold the factor into the
        # norms and the clipping factors instead of rescaling every backprop
        scale = float(batch) if self.loss_reduction == "mean" else 1.0
        plans = []
        sq = None
        for m, calls in self._calls.items():
            calls = [c for c in calls if any(g is not None for g in c.grads)]
            if not calls:
                continue
            plan = _plan(m, calls, 1.0, batch, self.batch_first, self.ghost)
            plans.append(plan)
            part = plan.sq_norms()
            sq = part if sq is None else sq + part
        if sq is None:
            return torch.zeros(batch), {}
        norms = sq.clamp_min(0).sqrt() * scale
        factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0) * scale
        sums: dict[torch.Tensor, torch.Tensor] = {}
        for plan in plans:
            for p, s in plan.clipped_sums(factors).items():
                sums[p] = sums[p] + s if p in sums else s
        return norms, sums

    def per_sample_gradients(self) -> dict[torch.Tensor, torch.Tensor]:
        """Materialized per-example gradients of every parameter (for tests and inspection)."""
        batch = self._batch_size()
        scale = float(batch) if self.loss_reduction == "mean" else 1.0
        out: dict[torch.Tensor, torch.Tensor] = {}
        for m, calls in self._calls.items():
            calls = [c for c in calls if any(g is not None for g in c.grads)]
            if calls:
                plan = _plan(m, calls, scale, batch, self.batch_first, "never")
                for p, g in plan.per_sample().items():
                    out[p] = out[p] + g if p in out else g
        return out

    def __repr__(self) -> str:
        return f"GradSampleModule({self._module!r})"


def _tap(t: Any) -> Any:
    if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.requires_grad:
        return t.detach().requires_grad_()
    return t


def _store(call: _Call, i: int) -> Callable[[torch.Tensor], None]:
    def hook(g: torch.Tensor) -> None:
        prev = call.grads[i]
        call.grads[i] = g.detach() if prev is None else prev + g.detach()

    return hook


def _batch_dim(t: Any, batch: int, preferred: int) -> int | None:
    """Which dim of ``t`` is the batch: ``preferred`` if its size is the batch size, else the
    first dim of that size (layers after a transpose see the batch elsewhere)."""
    if not isinstance(t, torch.Tensor):
        return None
    if t.dim() > preferred and t.shape[preferred] == batch:
        return preferred
    for d in range(t.dim()):
        if t.shape[d] == batch:
            return d
    return None


def _bd(t: Any, batch: int, preferred: int) -> int:
    d = _batch_dim(t, batch, preferred)
    if d is None:
        raise UnsupportedError(
            f"a layer got a tensor of shape {tuple(t.shape)} with no dimension of the batch "
            f"size {batch}; per-example gradients need every layer to keep the batch dimension"
        )
    return d


# ------------------------------------------------------------------------------ plans
class _Plan:
    def sq_norms(self) -> torch.Tensor:
        raise NotImplementedError

    def clipped_sums(self, factors: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def per_sample(self) -> dict[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class _Materialized(_Plan):
    """Per-sample gradients held in memory (small layers, or when ghost norms cost more)."""

    def __init__(self, grads: dict[torch.Tensor, torch.Tensor]) -> None:
        self.grads = grads

    def sq_norms(self) -> torch.Tensor:
        return sum(g.flatten(1).pow(2).sum(1) for g in self.grads.values())  # type: ignore[return-value]

    def clipped_sums(self, factors: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        return {p: torch.einsum("b,b...->...", factors, g) for p, g in self.grads.items()}

    def per_sample(self) -> dict[torch.Tensor, torch.Tensor]:
        return self.grads


class _LinearGhost(_Plan):
    """``a``: (B, T, d) inputs, ``g``: (B, T, p) output grads of ``W`` (p, d) [+ bias]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                 g: torch.Tensor, shape: torch.Size) -> None:  # fmt: skip
        self.weight, self.bias, self.a, self.g, self.shape = weight, bias, a, g, shape

    def sq_norms(self) -> torch.Tensor:
        a, g = self.a, self.g
        if a.shape[1] == 1:  # ‖a gᵀ‖² = ‖a‖²‖g‖², and the bias adds ‖g‖²
            gg = vector_norm(g.squeeze(1), dim=1).square()
            aa = vector_norm(a.squeeze(1), dim=1).square()
            return gg * (aa + 1) if self.bias is not None else gg * aa
        w = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
        if self.bias is not None:
            w = w + vector_norm(g.sum(1), dim=1).square()
        return w

    def clipped_sums(self, factors: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        gs = self.g * factors.view(-1, 1, 1)
        out = {self.weight: (gs.flatten(0, 1).t() @ self.a.flatten(0, 1)).view(self.shape)}
        if self.bias is not None:
            out[self.bias] = gs.sum((0, 1))
        return out

    def per_sample(self) -> dict[torch.Tensor, torch.Tensor]:
        out = {self.weight: torch.einsum("btp,btd->bpd", self.g, self.a).reshape(-1, *self.shape)}
        if self.bias is not None:
            out[self.bias] = self.g.sum(1)
        return out


class _EmbeddingGhost(_Plan):
    def __init__(self, m: nn.Embedding, idx: torch.Tensor, g: torch.Tensor) -> None:
        self.m, self.idx, self.g = m, idx, g  # idx (B, T), g (B, T, dim)
        if m.padding_idx is not None:
            self.g = g * (idx != m.padding_idx).unsqueeze(-1)

    def sq_norms(self) -> torch.Tensor:
        same = (self.idx.unsqueeze(2) == self.idx.unsqueeze(1)).to(self.g.dtype)
        return (same * torch.bmm(self.g, self.g.transpose(1, 2))).sum((1, 2))

    def clipped_sums(self, factors: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        w = self.m.weight
        out = torch.zeros_like(w)
        gs = (self.g * factors.view(-1, 1, 1)).reshape(-1, w.shape[1])
        out.index_add_(0, self.idx.reshape(-1), gs)
        return {w: out}

    def per_sample(self) -> dict[torch.Tensor, torch.Tensor]:
        w = self.m.weight
        b = self.idx.shape[0]
        out = torch.zeros(b, *w.shape, dtype=self.g.dtype, device=self.g.device)
        rows = torch.arange(b, device=self.idx.device).repeat_interleave(self.idx.shape[1])
        out.index_put_(
            (rows, self.idx.reshape(-1)), self.g.reshape(-1, w.shape[1]), accumulate=True
        )
        return {w: out}


def _cat1(xs: list[torch.Tensor]) -> torch.Tensor:
    return xs[0] if len(xs) == 1 else torch.cat(xs, 1)


def _scaled(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x if scale == 1.0 else x * scale


def _to_btd(x: torch.Tensor, bd: int) -> torch.Tensor:
    x = x.movedim(bd, 0)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _grad_of(call: _Call, i: int = 0) -> torch.Tensor:
    g = call.grads[i]
    return g if g is not None else torch.zeros_like(call.outputs[i])


def _plan(m: nn.Module, calls: list[_Call], scale: float, batch: int, batch_first: bool,
          ghost: str) -> _Plan:  # fmt: skip
    pref = 0 if batch_first else 1
    if keras_layers.is_keras(m):
        return _functorch(m, calls, scale, batch, pref, keras_layers.keras_replay(m))
    if isinstance(m, nn.MultiheadAttention | nn.RNNBase):
        pref = 0 if m.batch_first else 1
    if isinstance(m, nn.Linear):
        a = _cat1([_to_btd(c.args[0], _bd(c.args[0], batch, pref)) for c in calls])
        g = _scaled(
            _cat1([_to_btd(_grad_of(c), _bd(_grad_of(c), batch, pref)) for c in calls]), scale
        )
        plan = _LinearGhost(m.weight, m.bias, a, g, m.weight.shape)
        t, d, p = a.shape[1], a.shape[2], g.shape[2]
        use_ghost = ghost == "always" or (
            ghost == "auto" and (t == 1 or t * t * (d + p) < t * d * p)
        )
        return plan if use_ghost else _Materialized(plan.per_sample())
    if isinstance(m, nn.Conv1d | nn.Conv2d) and m.padding_mode == "zeros" and m.groups == 1:
        if any(c.args[0].dim() == (3 if isinstance(m, nn.Conv2d) else 2) for c in calls):
            return _functorch(m, calls, scale, batch, pref)  # unbatched input
        conv1d = isinstance(m, nn.Conv1d)
        k = (1, *m.kernel_size) if conv1d else m.kernel_size
        st = (1, *m.stride) if conv1d else m.stride
        pd = (0, *_pad(m.padding)) if conv1d else _pad(m.padding)
        dl = (1, *m.dilation) if conv1d else m.dilation
        xs = [c.args[0].unsqueeze(2) if conv1d else c.args[0] for c in calls]
        gs = [_grad_of(c).unsqueeze(2) if conv1d else _grad_of(c) for c in calls]
        t = gs[0].shape[2] * gs[0].shape[3] * len(calls)
        d, p = m.in_channels * k[0] * k[1], m.out_channels
        if ghost == "always" or (ghost == "auto" and t * t * (d + p) < t * d * p):
            a = _cat1(
                [F.unfold(x, k, dilation=dl, padding=pd, stride=st).transpose(1, 2) for x in xs]
            )
            g = _scaled(_cat1([gg.flatten(2).transpose(1, 2) for gg in gs]), scale)  # (B, L, out)
            return _LinearGhost(m.weight, m.bias, a, g, m.weight.shape)
        # per-example weight gradients as one grouped convolution (no im2col): the batch becomes
        # the channels, each example's output gradient its kernel
        w = torch.stack(
            [_conv_weight_per_sample(x, gg, k, st, pd, dl) for x, gg in zip(xs, gs)]
        ).sum(0)
        grads = {m.weight: _scaled(w.reshape(-1, *m.weight.shape), scale)}
        if m.bias is not None:
            grads[m.bias] = _scaled(torch.stack([gg.sum((2, 3)) for gg in gs]).sum(0), scale)
        return _Materialized(grads)
    if isinstance(m, nn.Embedding):
        idx = torch.cat(
            [
                _to_btd(c.args[0].unsqueeze(-1), _bd(c.args[0], batch, pref)).squeeze(-1)
                for c in calls
            ],
            1,
        )
        g = _scaled(
            _cat1([_to_btd(_grad_of(c), _bd(_grad_of(c), batch, pref)) for c in calls]), scale
        )
        eplan = _EmbeddingGhost(m, idx, g)
        return eplan if ghost != "never" else _Materialized(eplan.per_sample())
    return _functorch(m, calls, scale, batch, pref)


def _conv_weight_per_sample(x: torch.Tensor, g: torch.Tensor, k: Any, stride: Any, padding: Any,
                            dilation: Any) -> torch.Tensor:  # fmt: skip
    """(B, out, in, kh, kw) per-example weight gradients of a 2-d convolution."""
    b, cin = x.shape[0], x.shape[1]
    cout = g.shape[1]
    w = F.conv2d(x.transpose(0, 1), g.reshape(b * cout, 1, *g.shape[2:]), None, stride=dilation,
                 padding=padding, dilation=stride, groups=b)  # fmt: skip
    w = w.view(cin, b, cout, *w.shape[2:]).movedim(0, 2)
    return w[..., : k[0], : k[1]]


def _pad(padding: Any) -> tuple[int, ...]:
    if isinstance(padding, str):
        raise UnsupportedError(
            "string padding ('same'/'valid') on a Conv layer is not supported yet"
        )
    return tuple(padding)


def _functorch(m: nn.Module, calls: list[_Call], scale: float, batch: int, pref: int,
               replay: tuple[Any, ...] | None = None) -> _Plan:  # fmt: skip
    """Per-sample gradients of any layer torch.func can batch: vmap of grad of ⟨m(x_i), g_i⟩.

    ``replay`` (Keras layers, :func:`keras_layers.keras_replay`): the parameter values and
    Parameters by name, how to call the layer with given values, and whether to loop over
    the examples instead of ``vmap``."""
    if replay is None:
        params = {k: p.detach() for k, p in m.named_parameters() if p.requires_grad}
        named = dict(m.named_parameters())
        apply: Callable[..., Any] = lambda p, a, kw: functional_call(m, p, a, kw)  # noqa: E731
        loop = False
    else:
        params, named, apply, loop = replay
    total: dict[str, torch.Tensor] = {}
    for c in calls:
        bd = _bd(next(a for a in c.args if isinstance(a, torch.Tensor)), batch, pref)

        def dim_of(a: Any, d: int) -> int | None:
            return (
                d if isinstance(a, torch.Tensor) and a.dim() > d and a.shape[d] == batch else None
            )

        in_dims = tuple(dim_of(a, bd) for a in c.args)
        kw_t = {k: v for k, v in c.kwargs.items() if isinstance(v, torch.Tensor)}
        kw_other = {k: v for k, v in c.kwargs.items() if k not in kw_t}
        # masks of MultiheadAttention are (N, S): batch first whatever batch_first says
        kw_dims = {k: dim_of(v, 0 if k == "key_padding_mask" else bd) for k, v in kw_t.items()}
        if isinstance(m, nn.MultiheadAttention):
            out_bd: list[int | None] = [bd, *(dim_of(o, 0) for o in c.outputs[1:])]
        else:
            out_bd = [_batch_dim(o, batch, bd) for o in c.outputs]
        gin = [
            _scaled(_grad_of(c, i), scale) if d is not None else torch.zeros(())
            for i, d in enumerate(out_bd)
        ]

        def inner(p: dict[str, torch.Tensor], args: tuple[Any, ...], kw: dict[str, Any],
                  gs: list[torch.Tensor], in_dims: tuple[int | None, ...] = in_dims,
                  kw_dims: dict[str, int | None] = kw_dims, kw_other: dict[str, Any] = kw_other,
                  out_bd: list[int | None] = out_bd) -> torch.Tensor:  # fmt: skip
            args = tuple(a.unsqueeze(d) if d is not None else a for a, d in zip(args, in_dims))
            kw = {
                k: (v.unsqueeze(kw_dims[k]) if kw_dims[k] is not None else v) for k, v in kw.items()
            }
            out = apply(p, args, {**kw, **kw_other})
            leaves = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
            return sum(  # type: ignore[return-value]
                (o * g.unsqueeze(d)).sum() for o, g, d in zip(leaves, gs, out_bd) if d is not None
            )

        token = _RECORDING.set(False)
        try:
            if loop:
                psg = _loop(inner, params, c.args, kw_t, gin, in_dims, kw_dims, out_bd, batch)
            else:
                psg = vmap(grad(inner), in_dims=(None, in_dims, kw_dims, out_bd))(
                    params, c.args, kw_t, gin
                )
        finally:
            _RECORDING.reset(token)
        for k, v in psg.items():
            total[k] = total[k] + v if k in total else v
    return _Materialized({named[k]: v for k, v in total.items()})


def _loop(inner: Callable[..., torch.Tensor], params: dict[str, torch.Tensor], args: tuple[Any, ...],
          kw: dict[str, Any], gs: list[torch.Tensor], in_dims: tuple[int | None, ...],
          kw_dims: dict[str, int | None], out_bd: list[int | None],
          batch: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """What ``vmap(grad(inner))`` computes, one example at a time (layers vmap cannot batch)."""

    def pick(t: Any, d: int | None, i: int) -> Any:
        return t.select(d, i) if d is not None else t

    rows: dict[str, list[torch.Tensor]] = {k: [] for k in params}
    for i in range(batch):
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        with torch.enable_grad():
            total = inner(leaves, tuple(pick(a, d, i) for a, d in zip(args, in_dims)),
                          {k: pick(v, kw_dims[k], i) for k, v in kw.items()},
                          [pick(g, d, i) for g, d in zip(gs, out_bd)])  # fmt: skip
            got = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
        for (k, v), g in zip(leaves.items(), got):
            rows[k].append(torch.zeros_like(v) if g is None else g)
    return {k: torch.stack(v) for k, v in rows.items()}
