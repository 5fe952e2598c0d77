"""``veil.export``: write a model or a plan for on-device prediction, as ONNX or ExecuTorch.

ONNX files are written by torch's own exporter, the ``torch.export``-based one
(``torch.onnx.export(..., dynamo=True)``, the default since torch 2.9; it needs ``onnx`` and
``onnxscript``: ``pip install 'veil[export]'``). The older TorchScript exporter
(``dynamo=False``) also handles the models the tests cover, but torch 2.13 deprecates it and
says it will be removed. A dynamic batch is declared for the first dimension of every input
(``dynamic_batch=True``): ``torch.export`` fixes a dimension of size 1 to 1, so an example
batch of one is traced as a batch of two (the same rows twice), and the file takes any batch.

``.pte`` files are ExecuTorch programs (``torch.export`` lowered with the XNNPACK
partitioner), written when the ``executorch`` package is installed (``pip install
'veil[pte]'``; 1.5.x runs beside torch 2.13). Their batch dimension goes up to
:data:`PTE_MAX_BATCH`.

Run what was written with :class:`veil.device.Predictor` (numpy and onnxruntime only).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veil.errors import UnsupportedError

__all__ = ["FORMATS", "PTE_MAX_BATCH", "export"]

#: File suffix -> format.
FORMATS = {".onnx": "onnx", ".pte": "pte"}
#: The largest batch a ``.pte`` program with a dynamic batch accepts (ExecuTorch plans its
#: memory for an upper bound).
PTE_MAX_BATCH = 1024


def export(model_or_plan: Any, path: str | os.PathLike[str], example_inputs: Any, *,
           format: str | None = None, opset: int | None = None, dynamic_batch: bool = True,
           input_names: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None) -> Path:  # fmt: skip
    """Write ``model_or_plan`` to ``path`` for on-device prediction.

    The model is exported in eval mode (dropout off, batch norm on its running statistics)
    and left in the mode it was in.

    Args:
        model_or_plan: a ``torch.nn.Module``, or a plan (any object with ``to_module()``
            returning one, e.g. a ``veil.plan``; it then runs the plan locally).
        path: where to write; its suffix chooses the format unless ``format`` is given.
        example_inputs: a tensor, or a tuple of tensors (the model's positional arguments).
        format: ``"onnx"`` or ``"pte"`` (ExecuTorch); by default from the suffix.
        opset: the ONNX opset (default: the exporter's, 18 in torch 2.13).
        dynamic_batch: let the first dimension of every input vary (the ``batch``); with
            False, the file takes exactly the example's shapes.
        input_names: ONNX input names (default ``input``, or ``input_0``, ``input_1``, ...).
        output_names: ONNX output names (default ``output``, or ``output_0``, ...).

    Returns:
        The path written.

    Raises:
        TypeError: the model or the inputs are not what export takes.
        ValueError: an unknown format, or inputs without a common batch dimension.
        ImportError: the exporter's packages are missing (the message says what to install).
        UnsupportedError: the exporter could not translate the model (its reason is given).

    Example:
        >>> import tempfile, torch, veil
        >>> from veil.device import Predictor
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        >>> path = veil.export(model, tempfile.mkdtemp() + "/m.onnx", torch.randn(1, 4))
        >>> p = Predictor(path)
        >>> p.input_names, p.output_names
        (['input'], ['output'])
        >>> x = torch.randn(5, 4)
        >>> bool(abs(p.predict(x.numpy()) - model(x).detach().numpy()).max() < 1e-5)
        True
    """
    module = _as_module(model_or_plan)
    args = _as_args(example_inputs)
    path = Path(path)
    fmt = format or FORMATS.get(path.suffix.lower())
    if fmt not in FORMATS.values():
        raise ValueError(
            f"cannot tell the format of {str(path)!r}: give a path ending .onnx or .pte, or "
            f"format='onnx' or 'pte' (got format={format!r})"
        )
    was_training = module.training
    module.eval()
    try:
        traced = _batch_of_two(args) if dynamic_batch else args
        n_out = _count_outputs(module, args)
        ins = _names(input_names, "input", len(args))
        outs = _names(output_names, "output", n_out)
        if fmt == "onnx":
            _to_onnx(module, traced, path, ins, outs, opset, dynamic_batch)
        else:
            _to_pte(module, traced, path, dynamic_batch)
    finally:
        module.train(was_training)
    return path


def _as_module(obj: Any) -> nn.Module:
    to_module = getattr(obj, "to_module", None)  # a plan first (a plan may be a Module too)
    if callable(to_module):
        module = to_module()
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"{type(obj).__name__}.to_module() returned a {type(module).__name__}, not a "
                "torch.nn.Module"
            )
        return module
    if isinstance(obj, nn.Module):
        return obj
    raise TypeError(
        f"export takes a torch.nn.Module or a plan (an object with to_module()), got a "
        f"{type(obj).__name__}; a model on a node must be fetched first (.get())"
    )


def _as_args(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    args = tuple(example_inputs) if isinstance(example_inputs, tuple | list) else (example_inputs,)
    bad = [f"{i}: {type(a).__name__}" for i, a in enumerate(args) if type(a) is not torch.Tensor]
    if bad or not args:
        raise TypeError(
            "example_inputs must be a tensor or a tuple of tensors (local ones: fetch a "
            f"pointer with .get()); got {', '.join(bad) or 'nothing'}"
        )
    return args


def _count_outputs(module: nn.Module, args: tuple[torch.Tensor, ...]) -> int:
    """Run the model once on the example (it must run) and count its tensor outputs."""
    with torch.no_grad():
        out = module(*args)
    if isinstance(out, torch.Tensor):
        return 1
    if isinstance(out, tuple | list) and out and all(isinstance(o, torch.Tensor) for o in out):
        return len(out)
    raise TypeError(
        f"{type(module).__name__} returns a {type(out).__name__}; export takes models that "
        "return a tensor or a tuple of tensors"
    )


def _names(given: Sequence[str] | None, stem: str, n: int) -> list[str]:
    if given is None:
        return [stem] if n == 1 else [f"{stem}_{i}" for i in range(n)]
    names = list(given)
    if len(names) != n or len(set(names)) != n:
        raise ValueError(f"{stem}_names: give {n} distinct names, got {names}")
    return names


def _batch_of_two(args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The example with a batch of at least two (a traced size of 1 is fixed to 1)."""
    sizes = {a.shape[0] if a.dim() else None for a in args}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            "dynamic_batch=True takes the first dimension of every input as the batch, but "
            f"the inputs have shapes {[tuple(a.shape) for a in args]}; give inputs with a "
            "common first dimension, or pass dynamic_batch=False"
        )
    if sizes == {1}:
        return tuple(torch.cat([a, a]) for a in args)
    return args


#: The exporters' notes about their own internals (an LSTM's flat weights; the name of a
#: dimension shared by several inputs), not about the model.
_NOTICES = (r".*The tensor attributes .*_flat_weights", r".*The axis name: .* will not be used")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress chatter and their internal deprecation notices."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            for notice in _NOTICES:
                warnings.filterwarnings("ignore", message=notice, category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _dynamic_shapes(module: nn.Module, args: tuple[torch.Tensor, ...],
                    upper: int | None) -> tuple[Any, ...]:  # fmt: skip
    """Dimension 0 of every input is ``batch``, in the structure of ``forward``'s signature
    (``torch.export`` groups the inputs a ``*args`` takes into one tuple, as a plan's has)."""
    batch = torch.export.Dim("batch") if upper is None else torch.export.Dim("batch", max=upper)
    each = [{0: batch} for _ in args]
    fixed = 0
    for p in inspect.signature(module.forward).parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return (*each[:fixed], tuple(each[fixed:]))
        if p.kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            break
        fixed += 1
    return tuple(each)


def _to_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, ins: list[str],
             outs: list[str], opset: int | None, dynamic: bool) -> None:  # fmt: skip
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"writing ONNX needs onnx and onnxscript ({exc}): pip install 'veil[export]'"
        ) from None
    try:
        with _quiet():
            torch.onnx.export(
                module, args, str(path), dynamo=True, verbose=False, input_names=ins,
                output_names=outs, opset_version=opset, external_data=False,
                dynamic_shapes=_dynamic_shapes(module, args, None) if dynamic else None,
            )  # fmt: skip
    except (OSError, ImportError):
        raise
    except Exception as exc:
        raise UnsupportedError(
            f"torch.onnx could not export {type(module).__name__}: {_first_line(exc)}"
        ) from exc


def _to_pte(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, dynamic: bool) -> None:
    try:
        with _quiet():  # its import warns of its own deprecated calls
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
                XnnpackPartitioner,
            )
            from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise ImportError(
            f"writing .pte (ExecuTorch) needs the executorch package ({exc}): "
            "pip install 'veil[pte]'"
        ) from None
    try:
        with _quiet():
            program = torch.export.export(
                module,
                args,
                dynamic_shapes=_dynamic_shapes(module, args, PTE_MAX_BATCH) if dynamic else None,
            )
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            buffer = lowered.to_executorch().buffer
    except Exception as exc:
        raise UnsupportedError(
            f"ExecuTorch could not export {type(module).__name__}: {_first_line(exc)}"
        ) from exc
    path.write_bytes(buffer)


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # without terminal colours
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:1000]
