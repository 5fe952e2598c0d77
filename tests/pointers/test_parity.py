"""Pointer arithmetic matches plain torch: results, shapes and dtypes, over random inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import veil

pytestmark = pytest.mark.filterwarnings("ignore:.*degrees of freedom:UserWarning")

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    """Tiny ops gain nothing from intra-op threads, and two test workers on two cores
    oversubscribe OpenMP (10x slower loops); restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


FLOATS = st.floats(-10, 10, width=32, allow_subnormal=False)


def tensors(min_dims: int = 1, max_dims: int = 3, max_side: int = 5) -> st.SearchStrategy[Any]:
    shapes = hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side)
    arrays = hnp.arrays(np.float32, shapes, elements=FLOATS)
    return arrays.map(lambda a: torch.from_numpy(a.copy()))


def check(result: Any, expected: Any, what: str) -> None:
    """A pointer result: same shape and dtype before fetching, same values after."""
    if isinstance(expected, tuple | list):
        assert isinstance(result, tuple | list), what
        assert len(result) == len(expected), what
        if hasattr(expected, "_fields"):  # torch.return_types: same named fields
            assert type(result) is type(expected), what
        for i, (r, e) in enumerate(zip(result, expected)):
            check(r, e, f"{what}[{i}]")
        return
    assert isinstance(result, veil.PointerTensor), f"{what}: got {type(result).__name__}"
    assert result.shape == expected.shape, f"{what}: shape {result.shape} != {expected.shape}"
    assert result.dtype == expected.dtype, f"{what}: dtype {result.dtype} != {expected.dtype}"
    torch.testing.assert_close(result.get(), expected, equal_nan=True, msg=lambda m: f"{what}: {m}")


def compare(ops: dict[str, Callable[[Any], Any]], local: Any, remote: Any) -> None:
    """Run every op on the local value(s) and the pointer(s); skip ops torch itself rejects."""
    for name, op in ops.items():
        try:
            expected = op(local)
        except (RuntimeError, IndexError, ValueError):
            with pytest.raises(veil.VeilError):  # the node refuses it too, cleanly
                op(remote)
            continue
        check(op(remote), expected, name)


UNARY: dict[str, Callable[[Any], Any]] = {
    name: (lambda x, _n=name: getattr(torch, _n)(x))
    for name in (
        "abs neg exp log sqrt rsqrt sin cos tan tanh sigmoid relu floor ceil round trunc frac "
        "sign square reciprocal erf expm1 log1p log2 atan asinh sinh cosh nan_to_num isnan "
        "isfinite signbit logical_not"
    ).split()
}
UNARY |= {
    "method.exp": lambda x: x.exp(),
    "method.clamp": lambda x: x.clamp(-1.5, 2.5),
    "method.clamp_min": lambda x: x.clamp(min=0.0),
    "op.neg": lambda x: -x,
    "op.pos": lambda x: +x,
    "op.abs": lambda x: abs(x),
    "op.pow": lambda x: x**2,
    "op.rpow": lambda x: 2**x,
    "op.rsub": lambda x: 2 - x,
    "op.radd": lambda x: 1.5 + x,
    "op.rmul": lambda x: 3 * x,
    "op.rtruediv": lambda x: 2 / x,
    "op.truediv": lambda x: x / 4,
    "op.floordiv": lambda x: x // 3,
    "op.mod": lambda x: x % 3,
    "op.lt": lambda x: x < 0.5,
    "op.ge": lambda x: x >= -1,
    "op.eq": lambda x: x == x,
    "op.ne": lambda x: x != 0,
    "to_double": lambda x: x.double(),
    "to_int": lambda x: x.int(),
    "to_long_then_add": lambda x: x.long() + 3,
    "to_bool": lambda x: x.bool(),
    "type_as": lambda x: x.to(torch.float16),
    "where": lambda x: torch.where(x > 0, x, x * 0.1),
    "masked_fill": lambda x: x.masked_fill(x < 0, 0.0),
    "clone": lambda x: x.clone(),
    "detach": lambda x: x.detach(),
}


@SETTINGS
@given(t=tensors())
def test_unary_ops_operators_and_conversions(deployment_worker: Any, t: torch.Tensor) -> None:
    compare(UNARY, t, t.send(deployment_worker))


@pytest.fixture
def deployment_worker(deployment: Any) -> Any:
    return deployment.scientist()


BINARY: dict[str, Callable[[Any], Any]] = {
    name: (lambda ab, _n=name: getattr(torch, _n)(ab[0], ab[1]))
    for name in (
        "add sub mul div maximum minimum atan2 fmod remainder pow hypot eq ne lt le gt ge "
        "fmax fmin copysign xlogy logical_and"
    ).split()
}
BINARY |= {
    "op.add": lambda ab: ab[0] + ab[1],
    "op.sub": lambda ab: ab[0] - ab[1],
    "op.mul": lambda ab: ab[0] * ab[1],
    "op.truediv": lambda ab: ab[0] / ab[1],
    "op.floordiv": lambda ab: ab[0] // ab[1],
    "op.pow": lambda ab: ab[0] ** ab[1],
    "op.gt": lambda ab: ab[0] > ab[1],
    "op.le": lambda ab: ab[0] <= ab[1],
    "method.sub_alpha": lambda ab: ab[0].sub(ab[1], alpha=2.5),
    "lerp": lambda ab: torch.lerp(ab[0], ab[1], 0.3),
    "addcmul": lambda ab: torch.addcmul(ab[0], ab[0], ab[1], value=0.5),
    "where": lambda ab: torch.where(ab[0] > ab[1], ab[0], ab[1]),
    "clamp_tensor": lambda ab: torch.clamp(ab[0], max=ab[1]),
    "isclose": lambda ab: torch.isclose(ab[0], ab[1]),
    "cat_last": lambda ab: torch.cat([ab[0] + 0 * ab[1], ab[1] + 0 * ab[0]], dim=-1),
    "stack": lambda ab: torch.stack([ab[0] + 0 * ab[1], ab[1] + 0 * ab[0]]),
}


@st.composite
def broadcast_pairs(draw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tensors whose shapes broadcast (some dims of the second collapsed to 1 or dropped)."""
    a = draw(tensors())
    shape = list(a.shape)
    shape = [1 if draw(st.booleans()) else d for d in shape]
    shape = shape[draw(st.integers(0, len(shape) - 1)) :]
    b = draw(hnp.arrays(np.float32, tuple(shape), elements=FLOATS))
    return a, torch.from_numpy(b.copy())


@SETTINGS
@given(pair=broadcast_pairs(), local_side=st.sampled_from(["none", "left", "right"]))
def test_binary_ops_with_broadcasting(
    deployment_worker: Any, pair: tuple[torch.Tensor, torch.Tensor], local_side: str
) -> None:
    a, b = pair
    pa = a if local_side == "left" else a.send(deployment_worker)  # mix pointer and local
    pb = b if local_side == "right" else b.send(deployment_worker)
    compare(BINARY, (a, b), (pa, pb))


@st.composite
def tensor_and_dim(draw: Any) -> tuple[torch.Tensor, int, bool]:
    t = draw(tensors())
    return t, draw(st.integers(-t.dim(), t.dim() - 1)), draw(st.booleans())


def reductions(dim: int, keep: bool) -> dict[str, Callable[[Any], Any]]:
    ops: dict[str, Callable[[Any], Any]] = {
        name: (lambda x, _n=name: getattr(torch, _n)(x, dim, keepdim=keep))
        for name in "sum mean prod amax amin logsumexp std var argmax argmin nansum".split()
    }
    return ops | {
        "sum_all": lambda x: x.sum(),
        "mean_all": lambda x: torch.mean(x),
        "max_all": lambda x: x.max(),
        "norm": lambda x: x.norm(),
        "norm_dim": lambda x: torch.norm(x, p=1, dim=dim, keepdim=keep),
        "cumsum": lambda x: torch.cumsum(x, dim),
        "cumprod": lambda x: x.cumprod(dim),
        "softmax_dim": lambda x: torch.softmax(x, dim),
        "count_nonzero": lambda x: torch.count_nonzero(x > 0, dim),
        "all_any": lambda x: (x > -5).all(),
        "any_dim": lambda x: (x > 5).any(dim),
        "max_dim": lambda x: torch.max(x, dim, keepdim=keep),
        "min_dim_method": lambda x: x.min(dim=dim),
        "sort": lambda x: torch.sort(x, dim=dim, descending=keep, stable=True),
        "argsort": lambda x: torch.argsort(x, dim=dim, stable=True),
        "topk": lambda x: torch.topk(x, 1, dim),
        "cummax": lambda x: torch.cummax(x, dim),
        "var_mean": lambda x: torch.var_mean(x, dim),
        "aminmax": lambda x: torch.aminmax(x, dim=dim, keepdim=keep),
        "split": lambda x: torch.split(x, 2, dim),
        "split_sizes": lambda x: x.split([1, x.shape[dim] - 1], dim) if x.shape[dim] > 1 else (x,),
        "chunk": lambda x: x.chunk(2, dim),
        "unbind": lambda x: torch.unbind(x, dim),
        "flip": lambda x: torch.flip(x, [dim]),
        "roll": lambda x: torch.roll(x, 1, dim),
        "narrow": lambda x: x.narrow(dim, 0, 1),
        "select": lambda x: x.select(dim, -1),
        "unsqueeze": lambda x: x.unsqueeze(dim),
        "diff": lambda x: torch.diff(x, dim=dim),
    }


@SETTINGS
@given(case=tensor_and_dim())
def test_reductions_and_tuple_returning_ops(
    deployment_worker: Any, case: tuple[torch.Tensor, int, bool]
) -> None:
    t, dim, keep = case
    compare(reductions(dim, keep), t, t.send(deployment_worker))


@st.composite
def matmul_operands(draw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    n, k, m = (draw(st.integers(1, 6)) for _ in range(3))
    batch = draw(st.sampled_from([(), (2,), (3, 1)]))
    a = draw(hnp.arrays(np.float32, (*batch, n, k), elements=FLOATS))
    b = draw(hnp.arrays(np.float32, (k, m), elements=FLOATS))
    return torch.from_numpy(a.copy()), torch.from_numpy(b.copy())


MATMUL: dict[str, Callable[[Any], Any]] = {
    "op.matmul": lambda ab: ab[0] @ ab[1],
    "torch.matmul": lambda ab: torch.matmul(ab[0], ab[1]),
    "method.matmul": lambda ab: ab[0].matmul(ab[1]),
    "mv": lambda ab: ab[0][..., 0, :] @ ab[1][:, 0],
    "mm": lambda ab: torch.mm(ab[0].reshape(-1, ab[1].shape[0]), ab[1]),
    "einsum": lambda ab: torch.einsum("...ik,kj->...ij", ab[0], ab[1]),
    "tensordot": lambda ab: torch.tensordot(ab[0], ab[1], dims=1),
    "linear": lambda ab: F.linear(ab[0], ab[1].T, ab[1][0]),
    "outer": lambda ab: torch.outer(ab[0].flatten(), ab[1][:, 0]),
    "dot": lambda ab: torch.dot(ab[0].reshape(-1, ab[1].shape[0])[0], ab[1][:, 0]),
    "bmm": lambda ab: torch.bmm(
        ab[0].reshape(-1, *ab[0].shape[-2:]),
        ab[1].expand(ab[0].reshape(-1, *ab[0].shape[-2:]).shape[0], *ab[1].shape),
    ),
}


@SETTINGS
@given(ab=matmul_operands(), local_side=st.sampled_from(["none", "left", "right"]))
def test_matmul_family(
    deployment_worker: Any, ab: tuple[torch.Tensor, torch.Tensor], local_side: str
) -> None:
    a, b = ab
    pa = a if local_side == "left" else a.send(deployment_worker)
    pb = b if local_side == "right" else b.send(deployment_worker)
    compare(MATMUL, (a, b), (pa, pb))


@st.composite
def tensor_and_perm(draw: Any) -> tuple[torch.Tensor, list[int]]:
    t = draw(tensors(min_dims=2, max_dims=4, max_side=4))
    return t, draw(st.permutations(list(range(t.dim()))))


@SETTINGS
@given(case=tensor_and_perm())
def test_reshape_family(deployment_worker: Any, case: tuple[torch.Tensor, list[int]]) -> None:
    t, perm = case
    ops: dict[str, Callable[[Any], Any]] = {
        "reshape": lambda x: x.reshape(-1),
        "reshape2": lambda x: torch.reshape(x, (x.shape[0], -1)),
        "view": lambda x: x.view(x.numel()),
        "view_neg": lambda x: x.view(-1, x.shape[-1]),
        "flatten": lambda x: torch.flatten(x, 1),
        "unflatten": lambda x: x.flatten().unflatten(0, tuple(x.shape)),
        "permute": lambda x: x.permute(*perm),
        "permute_contig": lambda x: x.permute(*perm).contiguous().view(-1),
        "transpose": lambda x: x.transpose(0, -1),
        "T2d": lambda x: x.reshape(x.shape[0], -1).T,
        "t": lambda x: x.reshape(x.shape[0], -1).t(),
        "movedim": lambda x: torch.movedim(x, 0, -1),
        "squeeze": lambda x: x.unsqueeze(1).squeeze(1),
        "squeeze_all": lambda x: torch.squeeze(x),
        "expand": lambda x: x[:1].expand(3, *x.shape[1:]),
        "repeat": lambda x: x.repeat(2, *([1] * (x.dim() - 1))),
        "tile": lambda x: torch.tile(x, (2,)),
        "repeat_interleave": lambda x: x.repeat_interleave(2, dim=0),
        "cat0": lambda x: torch.cat([x, x * 2], 0),
        "hstack": lambda x: torch.hstack([x, x]),
        "tril": lambda x: torch.tril(x.reshape(x.shape[0], -1)),
        "diagonal": lambda x: torch.diagonal(x, 0, 0, 1),
        "flatten_view_of_view": lambda x: x[..., ::2].reshape(-1),
        "reshape_as": lambda x: x.flatten().reshape_as(x),
    }
    compare(ops, t, t.send(deployment_worker))


@st.composite
def tensor_and_index(draw: Any) -> tuple[torch.Tensor, Any]:
    t = draw(tensors(min_dims=1, max_dims=3))
    d0 = t.shape[0]
    index = draw(
        st.one_of(
            st.integers(-d0, d0 - 1),
            st.builds(
                slice,
                st.none() | st.integers(-d0, d0),
                st.none() | st.integers(-d0, d0),
                st.none() | st.integers(1, 3),
            ),  # fmt: skip
            st.just(Ellipsis),
            st.just((Ellipsis, 0)),
            st.just((slice(None), None)),
            st.lists(st.integers(-d0, d0 - 1), min_size=1, max_size=4).map(torch.tensor),
            st.lists(st.booleans(), min_size=d0, max_size=d0).map(torch.tensor),
        )
    )
    return t, index


@SETTINGS
@given(case=tensor_and_index(), value=FLOATS)
def test_indexing_slicing_and_setitem(
    deployment_worker: Any, case: tuple[torch.Tensor, Any], value: float
) -> None:
    t, index = case
    p = t.send(deployment_worker)

    check(p[index], t[index], f"getitem {index!r}")
    if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
        check(p[index.send(deployment_worker)], t[index], "getitem with a remote mask")
    check(p[p > 0], t[t > 0], "getitem with a remote derived mask")
    check(torch.index_select(p, 0, torch.tensor([0])), t[:1], "index_select")
    check(p.gather(0, torch.zeros_like(t, dtype=torch.long)), t.gather(0, torch.zeros_like(t, dtype=torch.long)), "gather")  # fmt: skip

    local = t.clone()
    local[index] = value
    p[index] = value
    check(p, local, f"setitem {index!r}")
    local[local < 0] = 0.0
    p[p < 0] = 0.0
    check(p, local, "setitem with a remote mask")
    if t.dim() >= 2:
        local[:, 0] = local[:, -1]
        p[:, 0] = p[:, -1]
        check(p, local, "setitem from a remote slice")


@SETTINGS
@given(t=tensors(), scalar=FLOATS)
def test_inplace_ops_return_the_same_pointer(
    deployment_worker: Any, t: torch.Tensor, scalar: float
) -> None:
    p = t.send(deployment_worker)
    local = t.clone()
    pid = p.id
    steps: list[tuple[str, Callable[[Any], Any]]] = [
        ("add_", lambda x: x.add_(scalar)),
        ("mul_", lambda x: x.mul_(torch.full_like(t, 0.5))),
        ("clamp_", lambda x: x.clamp_(-3, 3)),
        ("sub_", lambda x: x.sub_(1)),
        ("abs_", lambda x: x.abs_()),
        ("sqrt_", lambda x: x.sqrt_()),
        ("neg_", lambda x: x.neg_()),
        ("fill_diagonal_", lambda x: x.fill_diagonal_(7.0) if x.dim() == 2 else x.mul_(1)),
        ("relu_", lambda x: x.relu_()),
        ("masked_fill_", lambda x: x.masked_fill_(x == 0, -1.0)),
        ("zero_", lambda x: x.zero_()),
        ("fill_", lambda x: x.fill_(scalar)),
    ]
    for name, step in steps:
        out = step(p)
        expected = step(local)
        assert out is p and p.id == pid, name
        check(p, expected, name)

    q = p
    q += 1
    q *= 2
    q -= 0.5
    q /= 4
    local += 1
    local *= 2
    local -= 0.5
    local /= 4
    assert q is p
    check(p, local, "augmented assignment")


@st.composite
def images(draw: Any) -> torch.Tensor:
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(4, 8)), draw(st.integers(4, 8))
    return torch.from_numpy(draw(hnp.arrays(np.float32, (n, c, h, w), elements=FLOATS)).copy())


@SETTINGS
@given(x=images(), seed=st.integers(0, 2**16), stride=st.integers(1, 2), pad=st.integers(0, 1))
def test_functional_conv_pool_activations(
    deployment_worker: Any, x: torch.Tensor, seed: int, stride: int, pad: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    c = x.shape[1]
    w = torch.randn(4, c, 3, 3, generator=gen)
    b = torch.randn(4, generator=gen)
    w1 = torch.randn(2, c, 3, generator=gen)
    ln_w = torch.randn(x.shape[-1], generator=gen)
    ops: dict[str, Callable[[Any], Any]] = {
        "conv2d": lambda v: F.conv2d(v[0], v[1], v[2], stride=stride, padding=pad),
        "conv1d": lambda v: F.conv1d(v[0].flatten(2), v[3], padding=pad),
        "max_pool2d": lambda v: F.max_pool2d(v[0], 2, stride=stride),
        "max_pool2d_idx": lambda v: F.max_pool2d(v[0], 2, return_indices=True),
        "avg_pool2d": lambda v: F.avg_pool2d(v[0], 2, padding=pad),
        "adaptive_avg_pool2d": lambda v: F.adaptive_avg_pool2d(v[0], (2, 3)),
        "relu": lambda v: F.relu(v[0]),
        "leaky_relu": lambda v: F.leaky_relu(v[0], 0.1),
        "gelu": lambda v: F.gelu(v[0]),
        "silu": lambda v: F.silu(v[0]),
        "elu": lambda v: F.elu(v[0]),
        "softplus": lambda v: F.softplus(v[0]),
        "hardtanh": lambda v: F.hardtanh(v[0], -2, 2),
        "sigmoid": lambda v: F.sigmoid(v[0]),
        "tanh": lambda v: F.tanh(v[0]),
        "softmax": lambda v: F.softmax(v[0], dim=1),
        "log_softmax": lambda v: F.log_softmax(v[0], dim=-1),
        "layer_norm": lambda v: F.layer_norm(v[0], (x.shape[-1],), v[4]),
        "normalize": lambda v: F.normalize(v[0], dim=1),
        "pad": lambda v: F.pad(v[0], (1, 2, 0, 1), value=0.5),
        "interpolate": lambda v: F.interpolate(v[0], scale_factor=2, mode="nearest"),
        "dropout_eval": lambda v: F.dropout(v[0], 0.5, training=False),
        "flatten_linear": lambda v: F.linear(v[0].flatten(1), v[0].flatten(1)),
    }
    local = (x, w, b, w1, ln_w)
    remote = tuple(t.send(deployment_worker) for t in local)
    compare(ops, local, remote)


@st.composite
def classification(draw: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, c = draw(st.integers(1, 6)), draw(st.integers(2, 5))
    logits = draw(hnp.arrays(np.float32, (n, c), elements=FLOATS))
    target = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    other = draw(hnp.arrays(np.float32, (n, c), elements=FLOATS))
    return torch.from_numpy(logits.copy()), torch.from_numpy(target.copy()), torch.from_numpy(other.copy())  # fmt: skip


LOSSES: dict[str, Callable[[Any], Any]] = {
    "cross_entropy": lambda v: F.cross_entropy(v[0], v[1]),
    "cross_entropy_sum": lambda v: F.cross_entropy(v[0], v[1], reduction="sum"),
    "cross_entropy_smooth": lambda v: F.cross_entropy(v[0], v[1], label_smoothing=0.1),
    "nll_loss": lambda v: F.nll_loss(F.log_softmax(v[0], 1), v[1]),
    "mse_loss": lambda v: F.mse_loss(v[0], v[2]),
    "mse_none": lambda v: F.mse_loss(v[0], v[2], reduction="none"),
    "l1_loss": lambda v: F.l1_loss(v[0], v[2]),
    "smooth_l1": lambda v: F.smooth_l1_loss(v[0], v[2], beta=0.5),
    "huber": lambda v: F.huber_loss(v[0], v[2]),
    "bce_logits": lambda v: F.binary_cross_entropy_with_logits(v[0], torch.sigmoid(v[2])),
    "bce": lambda v: F.binary_cross_entropy(torch.sigmoid(v[0]), torch.sigmoid(v[2])),
    "kl_div": lambda v: F.kl_div(
        F.log_softmax(v[0], 1), F.softmax(v[2], 1), reduction="batchmean"
    ),  # fmt: skip
    "one_hot": lambda v: F.one_hot(v[1], v[0].shape[1]),
    "argmax_acc": lambda v: (v[0].argmax(1) == v[1]).float().mean(),
}


@SETTINGS
@given(case=classification())
def test_functional_losses(deployment_worker: Any, case: tuple[torch.Tensor, ...]) -> None:
    compare(LOSSES, case, tuple(t.send(deployment_worker) for t in case))


@SETTINGS
@given(
    a=hnp.arrays(np.int64, hnp.array_shapes(max_dims=2, max_side=5), elements=st.integers(-50, 50))
)
def test_integer_tensors(deployment_worker: Any, a: np.ndarray) -> None:
    t = torch.from_numpy(a.copy())
    ops: dict[str, Callable[[Any], Any]] = {
        "add": lambda x: x + 3,
        "mul": lambda x: x * -2,
        "sum": lambda x: x.sum(),
        "and": lambda x: x & 6,
        "or": lambda x: x | 1,
        "xor": lambda x: x ^ x,
        "lshift": lambda x: x << 2,
        "invert": lambda x: ~x,
        "abs": lambda x: x.abs(),
        "float_div": lambda x: x / 2,
        "argmax": lambda x: x.argmax(),
        "eq": lambda x: x == 0,
        "to_float": lambda x: x.float().mean(),
        "bincount": lambda x: torch.bincount(x.flatten().abs()),
        "unique": lambda x: torch.unique(x),
    }
    compare(ops, t, t.send(deployment_worker))


def test_autograd_through_pointers_matches_torch(deployment_worker: Any) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    w = torch.randn(3, 2, requires_grad=True)
    pw = w.detach().clone().requires_grad_(True).send(deployment_worker)
    px = x.send(deployment_worker)

    loss = torch.tanh(x @ w).pow(2).mean()
    loss.backward()
    ploss = torch.tanh(px @ pw).pow(2).mean()
    ploss.backward()

    assert ploss.requires_grad
    torch.testing.assert_close(ploss.get(), loss.detach())
    check(pw.grad, w.grad, "grad")
