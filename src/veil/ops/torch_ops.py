"""The torch surface a peer may run on a node: curated name lists resolved against torch."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from veil.ops.registry import OpRegistry, OpSpec

# Elementwise ops that exist as ``torch.X`` and ``Tensor.X`` (and mostly ``Tensor.X_``).
UNARY = """
abs absolute acos arccos acosh arccosh asin arcsin asinh arcsinh atan arctan atanh arctanh
ceil cos cosh deg2rad rad2deg digamma erf erfc erfinv exp exp2 expm1 floor frac lgamma log
log10 log1p log2 logit neg negative reciprocal round rsqrt sigmoid sign sgn sin sinc sinh sqrt
square tan tanh trunc fix relu nan_to_num isnan isinf isfinite isneginf isposinf isreal
logical_not bitwise_not signbit positive conj i0
""".split()

BINARY = """
add sub subtract mul multiply div divide true_divide floor_divide remainder fmod pow
float_power atan2 arctan2 maximum minimum fmax fmin eq ne lt le gt ge greater less
greater_equal less_equal not_equal logical_and logical_or logical_xor bitwise_and bitwise_or
bitwise_xor bitwise_left_shift bitwise_right_shift hypot copysign xlogy lerp addcmul addcdiv
clamp clip clamp_min clamp_max where masked_fill isclose heaviside nextafter ldexp
""".split()

REDUCTIONS = """
sum mean nansum nanmean prod std var std_mean var_mean max min amax amin aminmax argmax argmin
norm logsumexp cumsum cumprod cummax cummin logcumsumexp median nanmedian quantile nanquantile
mode count_nonzero all any topk sort argsort msort kthvalue unique unique_consecutive histc
bincount diff trace dist renorm equal allclose softmax log_softmax
""".split()

LINALG = """
matmul mm bmm mv dot vdot outer inner ger einsum tensordot addmm addmv addbmm baddbmm addr
cross kron tril triu diag diagonal diag_embed diagflat t det inverse cdist chain_matmul
block_diag cartesian_prod
""".split()

SHAPE = """
reshape view view_as reshape_as flatten unflatten squeeze unsqueeze permute transpose swapaxes
swapdims movedim moveaxis cat concat concatenate stack hstack vstack dstack column_stack
row_stack split chunk tensor_split hsplit vsplit unbind expand expand_as repeat tile
repeat_interleave narrow select index_select gather scatter scatter_add scatter_reduce take
take_along_dim masked_select nonzero argwhere flip fliplr flipud roll rot90 contiguous clone
detach broadcast_to broadcast_tensors atleast_1d atleast_2d atleast_3d ravel unfold
index_add index_copy index_fill index_put masked_scatter masked_fill put
""".split()

CONVERSIONS = """
float double half bfloat16 int long short bool byte char to type_as requires_grad_ detach_
zero_ fill_ retain_grad cpu numel_ fill_diagonal_ uniform_ normal_ bernoulli_ random_
exponential_ cauchy_ log_normal_ geometric_
""".split()

#: Creation ops taking a tensor for shape. ``empty_like`` is excluded on purpose:
#: uninitialized memory could expose freed private data.
LIKE = "zeros_like ones_like full_like rand_like randn_like randint_like bernoulli multinomial poisson normal".split()

OPERATORS = """
__add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__
__rtruediv__ __itruediv__ __floordiv__ __rfloordiv__ __ifloordiv__ __mod__ __rmod__ __imod__
__pow__ __rpow__ __ipow__ __matmul__ __rmatmul__ __neg__ __pos__ __abs__ __invert__ __and__
__rand__ __iand__ __or__ __ror__ __ior__ __xor__ __rxor__ __ixor__ __lshift__ __rshift__
__eq__ __ne__ __lt__ __le__ __gt__ __ge__ __getitem__ __setitem__
""".split()

FUNCTIONAL = """
linear bilinear conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d
max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices
max_pool3d_with_indices adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices
adaptive_max_pool3d_with_indices adaptive_max_pool3d avg_pool1d avg_pool2d avg_pool3d
adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d lp_pool1d
lp_pool2d relu relu6 elu selu celu gelu silu mish leaky_relu prelu rrelu hardtanh hardswish
hardsigmoid softplus softsign tanhshrink softshrink hardshrink threshold glu logsigmoid
sigmoid tanh softmax log_softmax softmin dropout dropout1d dropout2d dropout3d alpha_dropout
feature_alpha_dropout batch_norm layer_norm group_norm instance_norm local_response_norm
rms_norm normalize embedding embedding_bag one_hot pad interpolate upsample pixel_shuffle
pixel_unshuffle unfold fold cosine_similarity pairwise_distance pdist
scaled_dot_product_attention cross_entropy nll_loss mse_loss l1_loss smooth_l1_loss
huber_loss binary_cross_entropy binary_cross_entropy_with_logits kl_div poisson_nll_loss
gaussian_nll_loss cosine_embedding_loss margin_ranking_loss hinge_embedding_loss
soft_margin_loss multilabel_soft_margin_loss multilabel_margin_loss multi_margin_loss
triplet_margin_loss ctc_loss
""".split()

LINALG_MODULE = """
norm vector_norm matrix_norm inv det slogdet solve svd svdvals qr eigh eigvalsh cholesky pinv
lstsq matrix_rank matrix_power multi_dot cross vecdot
""".split()

#: Tensor attributes readable through a pointer (each returns a new pointer).
ATTRIBUTES = ["grad", "data", "T", "mT", "H", "mH", "real", "imag"]

#: Ops whose output size is chosen by an argument: checked on the meta device first.
ALLOC_CHECKED = {
    "repeat",
    "tile",
    "repeat_interleave",
    "expand",
    "broadcast_to",
    "pad",
    "interpolate",
    "upsample",
    "kron",
    "cartesian_prod",
    "block_diag",
    "diag_embed",
    "diagflat",
    "outer",
    "ger",
    "cdist",
    "full_like",
    "zeros_like",
    "ones_like",
    "rand_like",
    "randn_like",
    "randint_like",
    "histc",
    "one_hot",
    "bincount",
    "unfold",
    "fold",
    "einsum",
    "tensordot",
}


#: Ops whose output can be larger than every input (broadcasting, products of matrices):
#: bounded by the product of the inputs' sizes, checked when that bound passes the limit.
BOUND_CHECKED = (
    set(BINARY)
    | set(REDUCTIONS) & {"dist", "renorm"}
    | set(LINALG)
    | set(SHAPE)
    & {
        "cat",
        "concat",
        "concatenate",
        "stack",
        "hstack",
        "vstack",
        "dstack",
        "column_stack",
        "row_stack",
        "broadcast_tensors",
        "where",
    }
    | {
        "linear",
        "bilinear",
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "pairwise_distance",
        "cosine_similarity",
        "scaled_dot_product_attention",
        "multi_dot",
        "solve",
        "lstsq",
        "vecdot",
    }
    | set(OPERATORS) - {"__getitem__", "__setitem__", "__neg__", "__pos__", "__abs__", "__invert__"}
)


def _get_attr(tensor: torch.Tensor, name: str) -> Any:
    if name not in ATTRIBUTES:
        raise AttributeError(name)
    return getattr(tensor, name)


def _backward(tensor: torch.Tensor, gradient: Any = None, retain_graph: Any = None) -> None:
    tensor.backward(gradient=gradient, retain_graph=retain_graph)


def _add(reg: OpRegistry, name: str, fn: Any, effect: Any = "none", base: str = "") -> None:
    if name not in reg:
        reg.register(
            OpSpec(
                name,
                fn,
                effect=effect,
                alloc_check=base in ALLOC_CHECKED,
                bound_check=base in BOUND_CHECKED,
            )  # fmt: skip
        )


def register_torch_ops(reg: OpRegistry) -> None:
    """Register the torch functions, Tensor methods, operators and ``F.*`` functions.

    Names absent from the installed torch are skipped, so the allowlist follows the
    torch version without naming anything torch does not have.
    """
    for group in (UNARY, BINARY, REDUCTIONS, LINALG, SHAPE, LIKE):
        for base in group:
            fn = getattr(torch, base, None)
            if callable(fn):
                _add(reg, f"torch.{base}", fn, base=base)
    for group in (UNARY, BINARY, REDUCTIONS, LINALG, SHAPE, CONVERSIONS):
        for base in group:
            meth = getattr(torch.Tensor, base, None)
            if callable(meth):
                effect = "inplace" if base.endswith("_") else "none"
                _add(reg, f"Tensor.{base}", meth, effect, base=base.rstrip("_"))
            inplace = getattr(torch.Tensor, base + "_", None)
            if callable(inplace) and not base.endswith("_"):
                _add(reg, f"Tensor.{base}_", inplace, "inplace", base=base)
    for op in OPERATORS:
        fn = getattr(torch.Tensor, op, None)
        if callable(fn):
            inplace = op.startswith("__i") or op == "__setitem__"
            _add(reg, f"Tensor.{op}", fn, "inplace" if inplace else "none", base=op)
    for base in FUNCTIONAL:
        fn = getattr(F, base, None)
        if callable(fn):
            _add(reg, f"F.{base}", fn, base=base)
    for base in LINALG_MODULE:
        fn = getattr(torch.linalg, base, None)
        if callable(fn):
            _add(reg, f"linalg.{base}", fn, base=base)
    _add(reg, "Tensor.backward", _backward, "backward")
    _add(reg, "Tensor.__getattr__", _get_attr)
