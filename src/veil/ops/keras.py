"""The Keras classes a node will build from a model config a peer sent, and the config check.

A Keras model travels as Keras's own JSON config (``veil.serde.keras_models``). Keras
rebuilds a config by the ``class_name`` and ``module`` of each object in it, and would
import a module it names; so before a config reaches Keras, :func:`check_config` walks the
whole tree and accepts only Keras's built-in layers, activations, initializers,
regularizers, constraints, losses, metrics and optimizers named here, under a ``keras.*``
module, with no custom registered name, and the few ``keras.ops`` operations of
:data:`KERAS_OPS`, each only under its own module. ``Lambda`` layers (which carry Python
bytecode) and anything a user defined are refused. The names are plain data: this module
never imports Keras.
"""

from __future__ import annotations

from typing import Any

_LAYERS = """
InputLayer Dense EinsumDense Activation Dropout SpatialDropout1D SpatialDropout2D
SpatialDropout3D GaussianDropout GaussianNoise AlphaDropout ActivityRegularization Flatten
Reshape Permute RepeatVector Identity Masking Embedding Conv1D Conv2D Conv3D Conv1DTranspose
Conv2DTranspose Conv3DTranspose DepthwiseConv1D DepthwiseConv2D SeparableConv1D
SeparableConv2D MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D
AveragePooling3D GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D
GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D ZeroPadding1D ZeroPadding2D
ZeroPadding3D Cropping1D Cropping2D Cropping3D UpSampling1D UpSampling2D UpSampling3D
BatchNormalization LayerNormalization GroupNormalization UnitNormalization RMSNormalization
SimpleRNN GRU LSTM SimpleRNNCell GRUCell LSTMCell StackedRNNCells RNN Bidirectional
TimeDistributed ConvLSTM1D ConvLSTM2D ConvLSTM3D MultiHeadAttention GroupQueryAttention
Attention AdditiveAttention Add Subtract Multiply Average Maximum Minimum Concatenate Dot
ReLU LeakyReLU PReLU ELU Softmax Rescaling
"""

_MODELS = "Sequential Functional"

_ACTIVATIONS = """
relu relu6 leaky_relu elu selu gelu silu swish sigmoid hard_sigmoid hard_silu hard_swish
tanh softmax log_softmax softplus softsign exponential linear mish celu glu sparse_plus
squareplus tanh_shrink hard_tanh soft_shrink hard_shrink sparsemax log_sigmoid
"""

_INITIALIZERS = """
Zeros Ones Constant RandomNormal RandomUniform TruncatedNormal GlorotNormal GlorotUniform
HeNormal HeUniform LecunNormal LecunUniform Orthogonal Identity IdentityInitializer
VarianceScaling
"""

_REGULARIZERS = "L1 L2 L1L2 OrthogonalRegularizer"

_CONSTRAINTS = "MaxNorm MinMaxNorm NonNeg UnitNorm"

_LOSSES = """
MeanSquaredError MeanAbsoluteError MeanAbsolutePercentageError MeanSquaredLogarithmicError
BinaryCrossentropy BinaryFocalCrossentropy CategoricalCrossentropy
CategoricalFocalCrossentropy SparseCategoricalCrossentropy Hinge SquaredHinge
CategoricalHinge Huber LogCosh KLDivergence Poisson CosineSimilarity
mean_squared_error mean_absolute_error binary_crossentropy categorical_crossentropy
sparse_categorical_crossentropy huber kl_divergence poisson hinge squared_hinge
categorical_hinge log_cosh cosine_similarity binary_focal_crossentropy
categorical_focal_crossentropy mse mae mape msle kld
"""

_OPTIMIZERS = "SGD Adam AdamW RMSprop Adagrad Adadelta Adamax Nadam Ftrl Lion"

#: Keras's own value types inside configs: dtype policies, the symbolic tensors that wire a
#: functional model's layers, and plain containers (``__tuple__``).
_INTERNAL = "DTypePolicy FloatDTypePolicy __keras_tensor__ __tuple__ __slice__"

#: The ``keras.ops`` operations a functional config may wire between layers (what a traced
#: subclassed model's ``call`` records, ``veil.serde.keras_subclassed``), by the module Keras
#: writes for them. Elementwise maps, reductions, shape changes that keep the element count,
#: and joins. No op here runs a callable (``cond``, ``scan``, ``map``) or allocates a size
#: its config chooses (``full``, ``arange``, ``tile``, ``pad``, ``einsum``); an op is
#: accepted only under the module that defines it (Keras imports that module to build it).
KERAS_OPS: dict[str, frozenset[str]] = {
    f"keras.src.{module}": frozenset(names.split())
    for module, names in (
        ("ops.numpy", """
            Abs Absolute Add Amax Amin Argmax Argmin Average Ceil Clip Concatenate Cos Cosh
            Cumprod Cumsum Divide Equal Exp ExpandDims Expm1 Flip Floor FloorDivide GetItem
            Greater GreaterEqual Less LessEqual Log Log10 Log1p Log2 Logaddexp LogicalAnd
            LogicalNot LogicalOr Matmul Max Maximum Mean Min Minimum Mod Moveaxis Multiply
            Negative NotEqual Power Prod Reciprocal Reshape Round Sign Sin Sinh Sqrt Square
            Squeeze Stack Std Subtract Sum Swapaxes Tan Tanh Transpose Tril Triu TrueDivide Var
        """),
        ("ops.nn", """
            Celu Elu Gelu Glu HardShrink HardSigmoid HardSilu HardTanh LeakyRelu LogSigmoid
            LogSoftmax Normalize Relu Relu6 Selu Sigmoid Silu SoftShrink Softmax Softplus
            Softsign SparsePlus Sparsemax Squareplus TanhShrink Threshold
        """),
        ("ops.math", "Erf Logsumexp Rsqrt"),
        ("ops.core", "Cast StopGradient"),
        ("activations.activations", "ReLU Mish"),
    )
}  # fmt: skip

#: Every class (or function) name a config may use, by what it is.
KERAS_ALLOWLIST: dict[str, frozenset[str]] = {
    kind: frozenset(names.split())
    for kind, names in (
        ("layer", _LAYERS),
        ("model", _MODELS),
        ("activation", _ACTIVATIONS),
        ("initializer", _INITIALIZERS),
        ("regularizer", _REGULARIZERS),
        ("constraint", _CONSTRAINTS),
        ("loss", _LOSSES),
        ("optimizer", _OPTIMIZERS),
        ("internal", _INTERNAL),
    )
}
_CLASSES = frozenset().union(*(v for k, v in KERAS_ALLOWLIST.items() if k != "activation"))
_FUNCTIONS = KERAS_ALLOWLIST["activation"] | KERAS_ALLOWLIST["loss"]
#: The modules a config may name: Keras's public API, and the few internal modules Keras
#: itself writes (the functional model class, the torch backend's optimizers). Keras imports
#: a ``keras.src`` module a config names, so no other one is accepted.
KERAS_MODULES = frozenset(
    ["keras", "keras.src.models.functional", "keras.src.models.sequential"]
    + [f"keras.{m}" for m in "layers models activations initializers regularizers constraints "
       "losses metrics optimizers dtype_policies".split()]
    + [f"keras.src.backend.torch.optimizers.torch_{n.lower()}" for n in _OPTIMIZERS.split()]
    + list(KERAS_OPS)
)  # fmt: skip
#: Nesting past this is refused (Keras's own configs of deep models stay far below it).
MAX_CONFIG_DEPTH = 64
#: Keys whose string values Keras resolves to a callable by name (``"relu"``).
_CALLABLE_KEYS = frozenset({"activation", "recurrent_activation", "loss"})


def check_config(config: Any) -> list[str]:
    """Every problem with a Keras config a peer sent (empty: it may be built).

    Each object in the tree (a dict with a ``class_name``) must name an allowlisted Keras
    class under one of :data:`KERAS_MODULES` with no foreign ``registered_name``; a
    ``"function"`` must name a built-in activation or loss; strings where Keras expects an
    activation must name a built-in one.

    Args:
        config: the decoded JSON of a model config (``json.loads(model.to_json())``).

    Returns:
        One message per refused object, with its place in the tree.

    Example:
        >>> dense = {"module": "keras.layers", "class_name": "Dense",
        ...          "config": {"units": 2, "activation": "relu"}, "registered_name": None}
        >>> check_config(dense)
        []
        >>> check_config({"module": "keras.layers", "class_name": "Lambda", "config": {}})
        ['<root>: Lambda layers carry Python code and are never built from the wire']
        >>> check_config({"module": "os", "class_name": "Dense", "config": {}})
        ["<root>: module 'os' is not part of Keras"]
    """
    problems: list[str] = []
    _walk(config, "<root>", 0, problems)
    return problems


def _walk(node: Any, where: str, depth: int, problems: list[str]) -> None:
    if depth > MAX_CONFIG_DEPTH:
        problems.append(f"{where}: config nested deeper than {MAX_CONFIG_DEPTH}")
        return
    if isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{where}[{i}]", depth + 1, problems)
        return
    if not isinstance(node, dict):
        return
    if "class_name" in node:
        _check_object(node, where, problems)
    for key, value in node.items():
        if not isinstance(key, str):
            problems.append(f"{where}: a key is not a string")
            continue
        if key in _CALLABLE_KEYS and isinstance(value, str) and value not in _FUNCTIONS:
            problems.append(f"{where}.{key}: {value[:60]!r} is not a built-in Keras function")
        _walk(value, f"{where}.{key}", depth + 1, problems)


def _check_object(node: dict[str, Any], where: str, problems: list[str]) -> None:
    name, module = node.get("class_name"), node.get("module")
    registered = node.get("registered_name")
    if not isinstance(name, str):
        problems.append(f"{where}: class_name is not a string")
        return
    if name in ("Lambda", "__lambda__") or module == "builtins":
        problems.append(
            f"{where}: Lambda layers carry Python code and are never built from the wire"
        )
        return
    if module is not None and not (
        isinstance(module, str) and (module == "keras" or module.startswith("keras."))
    ):
        problems.append(f"{where}: module {str(module)[:60]!r} is not part of Keras")
        return
    if module is not None and module not in KERAS_MODULES:
        problems.append(
            f"{where}: module {module[:60]!r} is not one of the Keras modules a config may "
            "name; see veil.ops.keras.KERAS_MODULES"
        )
        return
    if name == "function":
        fn = node.get("config")
        if not (isinstance(fn, str) and fn in _FUNCTIONS):
            problems.append(f"{where}: function {str(fn)[:60]!r} is not a built-in Keras function")
        elif registered not in (None, fn):
            problems.append(f"{where}: registered name {str(registered)[:60]!r} is not Keras's")
        return
    if module in KERAS_OPS:  # an op names only an op of its own module
        if name not in KERAS_OPS[module]:
            problems.append(
                f"{where}: {name[:60]!r} is not an allowlisted Keras op; see "
                "veil.ops.keras.KERAS_OPS"
            )
        elif registered not in (None, name):
            problems.append(f"{where}: registered name {str(registered)[:60]!r} is not Keras's")
        return
    if name not in _CLASSES:
        problems.append(
            f"{where}: {name[:60]!r} is not an allowlisted Keras class; see "
            "veil.ops.keras.KERAS_ALLOWLIST"
        )
        return
    if registered not in (None, name):
        problems.append(f"{where}: registered name {str(registered)[:60]!r} is not Keras's")
