"""The torch surface a peer may run on a node: curated name lists resolved against torch."""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from veil.ops.facts import SHAPE_VALUES, VALUE_SIZE, OpFacts
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

#: Not allowlisted: ``ctc_loss`` (torch's CPU kernel reads log-probabilities at target
#: labels it never bounds-checks: a label out of range reads the node's memory).
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
triplet_margin_loss
""".split()

LINALG_MODULE = """
norm vector_norm matrix_norm inv det slogdet solve svd svdvals qr eigh eigvalsh cholesky pinv
lstsq matrix_rank matrix_power multi_dot cross vecdot
""".split()

#: Tensor attributes readable through a pointer (each returns a new pointer).
ATTRIBUTES = ["grad", "data", "T", "mT", "H", "mH", "real", "imag"]

#: Ops whose output size is chosen by an argument (and that a pipelining client never
#: queues: the node may refuse them by its size limit, and that refusal must point at its line).
ARG_SIZED = {
    "repeat", "tile", "repeat_interleave", "expand", "broadcast_to", "pad", "interpolate",
    "upsample", "kron", "cartesian_prod", "block_diag", "diag_embed", "diagflat", "outer",
    "ger", "cdist", "full_like", "zeros_like", "ones_like", "rand_like", "randn_like",
    "randint_like", "histc", "one_hot", "bincount", "unfold", "fold", "einsum", "tensordot",
}  # fmt: skip

#: Results never larger than the op's largest tensor input (elementwise maps, reductions,
#: views, same-shape creation). Everything not listed here or in ``PRODUCT_SIZED`` is
#: checked on meta tensors before it runs.
INPUT_SIZED = (
    set(UNARY)
    | set(CONVERSIONS)
    | {
        "sum", "mean", "nansum", "nanmean", "prod", "std", "var", "std_mean", "var_mean",
        "amax", "amin", "aminmax", "argmax", "argmin", "norm", "logsumexp", "cumsum", "cumprod",
        "cummax", "cummin", "logcumsumexp", "median", "nanmedian", "mode", "count_nonzero",
        "all", "any", "topk", "sort", "argsort", "msort", "kthvalue", "trace", "softmax",
        "log_softmax", "softmin", "equal", "allclose",
        "tril", "triu", "diagonal", "t", "det", "inverse",
        "reshape", "view", "view_as", "reshape_as", "flatten", "unflatten", "squeeze",
        "unsqueeze", "permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis",
        "split", "chunk", "tensor_split", "hsplit", "vsplit", "unbind", "narrow", "select",
        "scatter", "scatter_add", "scatter_reduce", "flip", "fliplr", "flipud", "roll",
        "rot90", "contiguous", "clone", "detach", "atleast_1d", "atleast_2d", "atleast_3d",
        "ravel", "index_add", "index_copy", "index_fill", "index_put", "masked_scatter",
        "masked_fill", "put", "zeros_like", "ones_like", "full_like", "rand_like",
        "randn_like", "randint_like", "bernoulli", "poisson",
        "__neg__", "__pos__", "__abs__", "__invert__", "__setitem__", "__getattr__",
        "backward",
        # F.*: activations, dropout, normalization
        "relu", "relu6", "elu", "selu", "celu", "gelu", "silu", "mish", "leaky_relu", "prelu",
        "rrelu", "hardtanh", "hardswish", "hardsigmoid", "softplus", "softsign", "tanhshrink",
        "softshrink", "hardshrink", "threshold", "glu", "logsigmoid", "sigmoid", "tanh",
        "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
        "feature_alpha_dropout", "batch_norm", "layer_norm", "group_norm", "instance_norm",
        "local_response_norm", "rms_norm", "normalize", "pixel_shuffle", "pixel_unshuffle",
        # linalg.*
        "vector_norm", "matrix_norm", "inv", "slogdet", "svd", "svdvals", "qr", "eigh",
        "eigvalsh", "cholesky", "pinv", "matrix_rank", "matrix_power",
    }
)  # fmt: skip

#: Results at most the product of the inputs' sizes (broadcasting, products of matrices,
#: concatenation, gathers by an index tensor).
PRODUCT_SIZED = (
    set(BINARY)
    | set(LINALG) - {"diag", "diag_embed", "diagflat", "block_diag", "cartesian_prod", "einsum", "tensordot"}
    | {
        "max", "min", "quantile", "nanquantile", "dist", "renorm", "cat", "concat",
        "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack", "row_stack",
        "broadcast_tensors", "where", "index_select", "gather", "take", "take_along_dim",
        "normal", "linear", "bilinear", "pairwise_distance", "cosine_similarity",
        "scaled_dot_product_attention", "multi_dot", "solve", "lstsq", "vecdot", "embedding",
        "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
        "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div",
        "poisson_nll_loss", "gaussian_nll_loss", "cosine_embedding_loss", "margin_ranking_loss",
        "hinge_embedding_loss", "soft_margin_loss", "multilabel_soft_margin_loss",
        "multilabel_margin_loss", "multi_margin_loss", "triplet_margin_loss",
    }
    | set(OPERATORS) - {"__getitem__", "__setitem__", "__neg__", "__pos__", "__abs__", "__invert__"}
) - INPUT_SIZED  # fmt: skip

#: The DP sensitivity rule of each op, by base name: the rule *name* that
#: ``veil.dp.sensitivity`` implements (one rule per name; this table is the only place that
#: maps ops to rules). Ops not listed have no proven rule, and their results cannot be
#: published.
DP_RULES: dict[str, str] = {
    **dict.fromkeys(["clone", "detach", "contiguous", "cpu", "positive", "__pos__"], "same"),
    **dict.fromkeys(
        [
            "float",
            "double",
            "half",
            "bfloat16",
            "int",
            "long",
            "short",
            "bool",
            "byte",
            "char",
            "to",
            "type_as",
        ],
        "cast",
    ),
    **dict.fromkeys(["neg", "negative", "__neg__"], "neg"),
    **dict.fromkeys(["abs", "absolute", "__abs__"], "abs"),
    "square": "square",
    **dict.fromkeys(["pow", "__pow__"], "pow"),
    "sqrt": "sqrt",
    "reciprocal": "reciprocal",
    "relu": "relu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "exp": "exp",
    "floor": "floor",
    "ceil": "ceil",
    **dict.fromkeys(["trunc", "fix"], "trunc"),
    "round": "round",
    "nan_to_num": "nan_to_num",
    **dict.fromkeys(["clamp", "clip"], "clamp"),
    "clamp_min": "clamp_min",
    "clamp_max": "clamp_max",
    **dict.fromkeys(
        [
            "gt",
            "lt",
            "ge",
            "le",
            "eq",
            "ne",
            "greater",
            "less",
            "greater_equal",
            "less_equal",
            "not_equal",
            "__gt__",
            "__lt__",
            "__ge__",
            "__le__",
            "__eq__",
            "__ne__",
        ],
        "compare",
    ),  # fmt: skip
    **dict.fromkeys(["add", "__add__", "__radd__"], "add"),
    **dict.fromkeys(["sub", "subtract", "__sub__"], "sub"),
    **dict.fromkeys(["__rsub__", "rsub"], "rsub"),
    **dict.fromkeys(["mul", "multiply", "__mul__", "__rmul__"], "mul"),
    **dict.fromkeys(["div", "divide", "true_divide", "__truediv__"], "div"),
    **dict.fromkeys(["floor_divide", "__floordiv__"], "floor_divide"),
    "__rtruediv__": "rdiv",
    "__rfloordiv__": "rfloor_divide",
    **dict.fromkeys(["matmul", "mm", "__matmul__"], "matmul"),
    "linear": "linear",
    "sum": "sum",
    "nansum": "nansum",
    "mean": "mean",
    "count_nonzero": "count_nonzero",
    "histc": "histc",
    "__getitem__": "index",
    **dict.fromkeys(["reshape", "view", "flatten"], "reshape"),
    "__getattr__": "attribute",
}

#: Ops that return nothing: a pipelining client may always queue them.
DONE_OPS = {"backward"}
#: Side-effect-free ops a pipelining client still sends at once (their result is not a
#: plain new tensor, or the node looks at their arguments' values).
NEVER_PIPELINED = {
    "__getattr__", "__getitem__", "__setitem__",
    # results whose shape depends on values: a client cannot predict them
    "nonzero", "argwhere", "unique", "unique_consecutive", "bincount", "masked_select",
}  # fmt: skip

#: F.* functions that write into an argument, and the parameter that turns it on.
F_WRITES: dict[str, tuple[tuple[str, ...], str]] = {
    "batch_norm": (("running_mean", "running_var"), "training"),
    "instance_norm": (("running_mean", "running_var"), "use_input_stats"),
    "embedding": (("weight",), "max_norm"),
    "embedding_bag": (("weight",), "max_norm"),
}


def facts_for(base: str, fn: Any, effect: str = "none", *, functional: bool = False) -> OpFacts:
    """The declared facts of the torch op with base name ``base`` (see :class:`OpFacts`).

    Example:
        >>> import torch
        >>> f = facts_for("add", torch.add)
        >>> (f.size, f.dp, f.pipeline)
        ('product', 'add', 'result')
    """
    key = base.rstrip("_") if base.endswith("_") and not base.startswith("__") else base
    writes: tuple[str, ...] = ()
    switch = ""
    if functional and key in F_WRITES:
        writes, switch = F_WRITES[key]
    elif functional and _has_param(fn, "inplace"):
        writes, switch = ("input",), "inplace"
    if key in INPUT_SIZED:
        size = "input"
    elif key in PRODUCT_SIZED:
        size = "product"
    else:
        size = "meta"
    if key in DONE_OPS:
        pipeline = "done"
    elif key in NEVER_PIPELINED or key in ARG_SIZED or effect != "none":
        pipeline = "never"
    elif writes and switch != "inplace":  # a client refuses inplace=True itself
        pipeline = "never"
    else:
        pipeline = "result"
    inplace = effect == "inplace" or base.startswith("__i")
    dp = "" if inplace else DP_RULES.get(key, "")
    if functional and key not in ("relu", "sigmoid", "tanh", "linear"):
        dp = ""
    return OpFacts(
        writes=writes, write_switch=switch, shape_values=SHAPE_VALUES.get(key), size=size,  # type: ignore[arg-type]
        dp=dp, pipeline=pipeline,  # type: ignore[arg-type]
        index_arg=1 if key in ("__getitem__", "__setitem__") else -1,
        value_size=VALUE_SIZE.get(key),
    )  # fmt: skip


def _has_param(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _get_attr(tensor: torch.Tensor, name: str) -> Any:
    if type(name) is not str or name not in ATTRIBUTES:  # never print it: it may be data
        raise AttributeError(f"readable tensor attributes are {', '.join(ATTRIBUTES)}")
    if name == "grad" and not (tensor.is_leaf or tensor.retains_grad):
        return None  # torch would warn: a non-leaf that does not retain its gradient has none
    return getattr(tensor, name)


def _predict_attr(args: Any, kwargs: dict[str, Any]) -> Any:
    """``Tensor.__getattr__`` from public facts: whether a tensor has a gradient (and its
    shape) follows from the program's structure; the other attributes are views."""
    tensor, name = args[0], args[1]
    if type(name) is not str or name not in ATTRIBUTES:  # never print it: it may be data
        raise AttributeError(f"readable tensor attributes are {', '.join(ATTRIBUTES)}")
    if name == "grad":
        grad = tensor.grad if tensor.is_leaf or tensor.retains_grad else None
        return None if grad is None else torch.empty(grad.shape, dtype=grad.dtype, device="meta")
    meta = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
    return getattr(meta.requires_grad_(tensor.requires_grad), name)


def _cpu(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``Tensor.cpu``: a node's tensors are on its CPU already (meta tensors stay meta)."""
    return tensor if tensor.device.type in ("cpu", "meta") else tensor.cpu(*args, **kwargs)


def _backward(tensor: torch.Tensor, gradient: Any = None, retain_graph: Any = None) -> None:
    tensor.backward(gradient=gradient, retain_graph=retain_graph)


def _add(reg: OpRegistry, name: str, fn: Any, effect: Any = "none", base: str = "",
         *, functional: bool = False) -> None:  # fmt: skip
    if name not in reg:
        reg.register(OpSpec(name, fn, effect, facts_for(base, fn, effect, functional=functional)))


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
    _add(reg, "Tensor.cpu", _cpu, base="cpu")
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
            _add(reg, f"F.{base}", fn, base=base, functional=True)
    for base in LINALG_MODULE:
        fn = getattr(torch.linalg, base, None)
        if callable(fn):
            _add(reg, f"linalg.{base}", fn, base=base)
    _add(reg, "Tensor.backward", _backward, "backward", base="backward")
    attr = facts_for("__getattr__", _get_attr)
    reg.register(
        OpSpec("Tensor.__getattr__", _get_attr, facts=replace(attr, predict=_predict_attr))
    )
