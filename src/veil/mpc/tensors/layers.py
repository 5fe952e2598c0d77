"""Shape ops, layers (``torch.nn.functional``) and losses on shared tensors, with their
gradients, and the in-place updates a ``torch.optim`` optimizer makes to shared parameters.
A model's own ``forward`` (residual additions, ``torch.cat``, ``F.relu``, ``x.view``) runs
on shares through these.

Example:
    >>> import torch, veil
    >>> import torch.nn.functional as F
    >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
    >>> x = torch.tensor([[1.0, -2.0]]).share(a, b, crypto_provider=c)
    >>> F.relu(torch.cat([x, -x], dim=1)).view(2, 2).reconstruct()
    tensor([[1., 0.],
            [0., 2.]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from veil.errors import UnsupportedError
from veil.mpc.tensors.autograd import AutogradTensor, is_secret, record, register, unwrap
from veil.mpc.tensors.gradients import add, matmul, mean, mul, shape_of, square, sub, unbroadcast

T = "torch.Tensor."
F = "torch.nn.functional."


def _shape_args(args: Sequence[Any]) -> list[int]:
    if len(args) == 1 and isinstance(args[0], list | tuple | torch.Size):
        return list(args[0])
    return list(args)


def _same_shape(name: str, fn: Any) -> Any:
    """A free op whose gradient is the output's gradient reshaped back."""

    def op(a: Any, *args: Any, **kwargs: Any) -> AutogradTensor:
        x = unwrap(a)
        shape = x.shape
        return record(fn(x, *args, **kwargs), name, [a], lambda g, n: (g.reshape(*shape),))

    return op


def _reshape(x: Any, *shape: Any) -> Any:
    return x.reshape(*_shape_args(shape))


register(f"{T}reshape", f"{T}view", "torch.reshape")(_same_shape("Reshape", _reshape))
register(f"{T}view_as", f"{T}reshape_as")(
    _same_shape("Reshape", lambda x, other: x.reshape(*shape_of(other)))
)
register(f"{T}flatten", "torch.flatten")(
    _same_shape("Flatten", lambda x, start_dim=0, end_dim=-1: x.flatten(start_dim, end_dim))
)
unsqueeze = register(f"{T}unsqueeze", "torch.unsqueeze")(
    _same_shape("Unsqueeze", lambda x, d: x.unsqueeze(d))
)
register(f"{T}squeeze", "torch.squeeze")(_same_shape("Squeeze", lambda x, dim=None: x.squeeze(dim)))


@register(f"{T}transpose", "torch.transpose")
def transpose(a: Any, d0: int, d1: int) -> AutogradTensor:
    return record(unwrap(a).transpose(d0, d1), "Transpose", [a],
                  lambda g, n: (g.transpose(d0, d1),))  # fmt: skip


@register(f"{T}t", "torch.t", f"{T}T.__get__")
def t(a: Any) -> AutogradTensor:
    return record(unwrap(a).t(), "T", [a], lambda g, n: (g.t(),))


@register(f"{T}permute", "torch.permute")
def permute(a: Any, *dims: Any) -> AutogradTensor:
    order = _shape_args(dims)
    inverse = [order.index(i) for i in range(len(order))]
    return record(unwrap(a).permute(*order), "Permute", [a], lambda g, n: (g.permute(*inverse),))


@register(f"{T}expand")
def expand(a: Any, *sizes: Any) -> AutogradTensor:
    shape = shape_of(a)
    return record(unwrap(a).expand(*_shape_args(sizes)), "Expand", [a],
                  lambda g, n: (unbroadcast(g, shape),))  # fmt: skip


@register(f"{T}expand_as")
def expand_as(a: Any, other: Any) -> AutogradTensor:
    return expand(a, *shape_of(other))


@register(f"{T}contiguous", f"{T}clone", "torch.clone", f"{T}float", f"{T}to")
def identity(a: Any, *args: Any, **kwargs: Any) -> AutogradTensor:
    return record(unwrap(a), "Clone", [a], lambda g, n: (g,))


@register(f"{T}detach", "torch.detach")
def detach(a: Any) -> AutogradTensor:
    return AutogradTensor(unwrap(a))


@register(f"{T}__deepcopy__")
def deepcopy(a: Any, memo: Any = None) -> AutogradTensor:
    return AutogradTensor(unwrap(a), requires_grad=isinstance(a, AutogradTensor) and a._wants)


@register(f"{T}__getitem__")
def getitem(a: Any, idx: Any) -> AutogradTensor:
    def rule(g: Any, n: Sequence[bool]) -> tuple[Any]:
        raise UnsupportedError(
            "no gradient flows back through indexing a shared tensor; index the data before "
            "sharing it, or slice with torch.split-free ops (view, cat, sum)"
        )

    return record(unwrap(a)[idx], "Index", [a], rule)


@register("torch.cat", "torch.concat", "torch.concatenate")
def cat(tensors: Sequence[Any], dim: int = 0) -> AutogradTensor:
    vals = [unwrap(x) for x in tensors]
    ref = next((v for v in vals if is_secret(v)), None)
    if ref is None:
        raise UnsupportedError("torch.cat of public tensors only: nothing is shared")
    secrets = [v if is_secret(v) else ref._from_public(v.detach(), ref.encoding) for v in vals]
    out = type(ref).cat(secrets, dim)
    d = dim % out.dim()
    sizes = [v.shape[d] for v in secrets]

    def rule(g: Any, n: Sequence[bool]) -> list[Any]:
        parts, start = [], 0
        for k, need in zip(sizes, n, strict=True):
            at = (slice(None),) * d + (slice(start, start + k),)
            parts.append(g[at] if need else None)
            start += k
        return parts

    return record(out, "Cat", list(tensors), rule)


@register("torch.stack")
def stack(tensors: Sequence[Any], dim: int = 0) -> AutogradTensor:
    return cat([unsqueeze(x, dim) if isinstance(x, AutogradTensor) or is_secret(x)
                else x.unsqueeze(dim) for x in tensors], dim)  # fmt: skip


# ----------------------------------------------------------------- layers


@register(f"{F}linear")
def linear(x: Any, weight: Any, bias: Any = None) -> AutogradTensor:
    out = matmul(x, t(weight) if isinstance(weight, AutogradTensor) else unwrap(weight).t())
    return add(out, bias) if bias is not None else out


def _pair(v: Any, what: str) -> int:
    vals = (v, v) if isinstance(v, int) else tuple(v)
    if len(set(vals)) != 1:
        raise UnsupportedError(f"conv2d on shared tensors needs equal {what} on both axes")
    return int(vals[0])


@register(f"{F}conv2d", "torch.conv2d")
def conv2d(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> AutogradTensor:  # fmt: skip
    """2-d convolution; the backward pass (input and weight) needs stride 1."""
    if groups != 1 or _pair(dilation, "dilations") != 1 or isinstance(padding, str):
        raise UnsupportedError("conv2d on shared tensors: groups=1, dilation=1, numeric padding")
    xs, ws = unwrap(x), unwrap(weight)
    if not is_secret(xs):
        xs = ws._from_public(xs.detach(), ws.encoding)
    if not is_secret(ws):
        ws = ws.detach()
    st, pad = _pair(stride, "strides"), _pair(padding, "paddings")
    out = xs.conv2d(ws, None, stride=st, padding=pad)
    k = tuple(ws.shape[2:])

    def rule(g: Any, n: Sequence[bool]) -> tuple[Any, Any]:
        if st != 1 or k[0] != k[1] or pad > k[0] - 1:
            raise UnsupportedError(
                "conv2d's backward pass on shared tensors needs stride 1, a square kernel and "
                f"padding < kernel size (got stride {st}, kernel {k}, padding {pad}); keep this "
                "layer frozen (requires_grad=False, inputs shared without it)"
            )
        gx = gw = None
        if n[0]:  # the transposed convolution: the flipped kernel, channels swapped
            gx = g.conv2d(ws.flip(2, 3).transpose(0, 1), None, stride=1, padding=k[0] - 1 - pad)
        if n[1]:  # the input's channels against the output gradient's, over the batch
            gw = xs.transpose(0, 1).conv2d(g.transpose(0, 1), None, stride=1, padding=pad)
            gw = gw.transpose(0, 1)
        return gx, gw

    res = record(out, "Conv2d", [x, weight], rule)
    if bias is None:
        return res
    b = (
        bias.reshape(1, -1, 1, 1)
        if isinstance(bias, AutogradTensor)
        else unwrap(bias).reshape(1, -1, 1, 1)
    )
    return add(res, b)


def _pool(kind: str, x: Any, kernel_size: Any, stride: Any, padding: Any,
          extra: bool) -> AutogradTensor:  # fmt: skip
    k = _pair(kernel_size, "kernel sizes")
    s = k if stride is None or stride == [] else _pair(stride, "strides")
    if _pair(padding, "paddings") != 0 or extra:
        raise UnsupportedError(f"{kind} on shared tensors: no padding, dilation or ceil_mode")
    xs = unwrap(x)
    out = getattr(xs, kind)(k, s)
    shape = tuple(xs.shape)

    def rule(g: Any, n: Sequence[bool]) -> tuple[Any]:
        if kind != "avg_pool2d" or k != s or shape[2] % k or shape[3] % k:
            raise UnsupportedError(
                f"{kind}'s backward pass on shared tensors: avg_pool2d with stride = kernel "
                "size dividing the input (max_pool2d: forward only)"
            )
        nb, c, oh, ow = g.shape
        up = g.reshape(nb, c, oh, 1, ow, 1).expand(nb, c, oh, k, ow, k).reshape(*shape)
        return (up * (1.0 / (k * k)),)

    return record(out, kind, [x], rule)


@register(f"{F}max_pool2d", f"{F}_max_pool2d", "torch.max_pool2d")
def max_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False, return_indices: bool = False) -> AutogradTensor:  # fmt: skip
    extra = _pair(dilation, "dilations") != 1 or ceil_mode or return_indices
    return _pool("max_pool2d", x, kernel_size, stride, padding, bool(extra))


@register(f"{F}avg_pool2d", "torch._C._nn.avg_pool2d", "torch.avg_pool2d")
def avg_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
               ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: Any = None) -> AutogradTensor:  # fmt: skip
    return _pool("avg_pool2d", x, kernel_size, stride, padding, bool(ceil_mode or divisor_override))


@register(f"{F}batch_norm", "torch.batch_norm")
def batch_norm(x: Any, running_mean: Any, running_var: Any, weight: Any = None, bias: Any = None,
               training: bool = False, momentum: Any = 0.1, eps: float = 1e-5,
               *args: Any) -> AutogradTensor:  # fmt: skip
    """Eval-mode batch norm with public running statistics (a shared model folds the
    owner's statistics into its shared weight and bias when it is shared)."""
    if training or running_mean is None or running_var is None:
        raise UnsupportedError(
            "batch_norm on shared tensors runs in eval mode with running statistics: "
            "call model.eval() (batch statistics would need secret square roots)"
        )
    if isinstance(running_mean, AutogradTensor) or isinstance(running_var, AutogradTensor):
        raise UnsupportedError("batch_norm with shared running statistics: share the model whole")
    view = [1, -1] + [1] * (len(shape_of(x)) - 2)
    scale = (running_var.double() + eps).rsqrt().reshape(view)
    out = add(mul(x, scale), (-running_mean.double()).reshape(view) * scale)
    if weight is not None:
        out = mul(out, weight.reshape(*view))
    return add(out, bias.reshape(*view)) if bias is not None else out


@register(f"{F}dropout", "torch.dropout")
def dropout(x: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> AutogradTensor:
    """Identity in eval mode; in training, a public random mask (which units are dropped
    says nothing about the data)."""
    if not training or p == 0:
        return identity(x)
    keep = (torch.rand(shape_of(x)) >= p).double() / (1 - p)
    return mul(x, keep)


# ----------------------------------------------------------------- losses


@register(f"{F}mse_loss")
def mse_loss(x: Any, target: Any, size_average: Any = None, reduce: Any = None,
             reduction: str = "mean", weight: Any = None) -> AutogradTensor:  # fmt: skip
    sq = square(sub(x, target))
    if weight is not None:
        sq = mul(sq, weight)
    if reduction == "none":
        return sq
    return mean(sq) if reduction == "mean" else dispatch_sum(sq)


def dispatch_sum(x: Any) -> AutogradTensor:
    from veil.mpc.tensors.gradients import sum_

    return sum_(x)


@register(f"{F}cross_entropy")
def cross_entropy(x: Any, target: Any, weight: Any = None, size_average: Any = None,
                  ignore_index: int = -100, reduce: Any = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> AutogradTensor:  # fmt: skip
    """Softmax cross-entropy of shared logits ``(N, C)``: ``target`` holds public class
    indices or (shared or public) one-hot rows. Forward: ``logsumexp - <target, x>`` with
    the max subtracted first; backward: ``(softmax(x) - target) / N`` (one fused rule, as
    in CrypTen)."""
    if weight is not None or label_smoothing or reduction not in ("mean", "sum"):
        raise UnsupportedError("cross_entropy on shared tensors: no weight, no smoothing, mean/sum")
    logits = unwrap(x)
    if logits.dim() != 2:
        raise UnsupportedError("cross_entropy on shared tensors takes (N, C) logits")
    tv = unwrap(target)
    onehot = (tv if is_secret(tv) or tv.is_floating_point()
              else torch.nn.functional.one_hot(tv, logits.shape[1]).double())  # fmt: skip
    m, _ = logits.max(1, keepdim=True)
    shifted = logits - m.expand(*logits.shape)
    lse = shifted.exp().sum(1).log() + m.reshape(-1)
    picked = (logits * onehot).sum(1)
    scale = 1.0 / logits.shape[0] if reduction == "mean" else 1.0
    out = (lse - picked).sum() * scale

    def rule(g: Any, n: Sequence[bool]) -> tuple[Any, Any]:
        grad = (logits.softmax(1) - onehot) * scale
        return g.reshape(1, 1).expand(*grad.shape) * grad, None

    return record(out, "CrossEntropy", [x, target], rule)


# ----------------------------------------------------------------- in place (optimizers)


def _in_place(fn: Any) -> Any:
    def op(a: Any, *args: Any, **kwargs: Any) -> AutogradTensor:
        if not isinstance(a, AutogradTensor) or (a._node is not None and torch.is_grad_enabled()):
            raise UnsupportedError("in-place ops on shared tensors apply to leaves under no_grad")
        a.secret = unwrap(fn(AutogradTensor(a.secret), *args, **kwargs))
        return a

    return op


register(f"{T}add_")(_in_place(lambda a, b, alpha=1: add(a, b, alpha=alpha)))
register(f"{T}sub_")(_in_place(lambda a, b, alpha=1: sub(a, b, alpha=alpha)))
register(f"{T}mul_")(_in_place(mul))
register(f"{T}zero_")(_in_place(lambda a: AutogradTensor(unwrap(a) * 0)))


@register("refresh")
def refresh(a: Any) -> AutogradTensor:
    """The same value under fresh shares (a new random sharing of zero added)."""
    x = unwrap(a)
    zero = type(x).from_encoded(x.session, torch.zeros(x.shape, dtype=torch.int64), x.encoding)
    return record(x + zero, "Refresh", [a], lambda g, n: (g,))
