"""Predictor: run an ONNX model with onnxruntime and numpy (no torch), its hash checked."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from veil.errors import IntegrityError, InvalidRequest

__all__ = ["Predictor", "sha256_of"]

#: ONNX element types -> numpy dtypes (inputs are converted to what the model takes).
_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def sha256_of(data: bytes | bytearray | memoryview) -> str:
    """The SHA-256 of ``data``, as 64 hex digits (the digest hosted models are checked by).

    Example:
        >>> sha256_of(b"veil")[:16]
        '01979b66ee1794c4'
    """
    return hashlib.sha256(data).hexdigest()


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "veil.device runs models with onnxruntime: pip install onnxruntime "
            "(or pip install 'veil[device]')"
        ) from None
    return onnxruntime


class Predictor:
    """An ONNX model ready to predict on this machine, with onnxruntime on the CPU.

    Args:
        model: a path to a ``.onnx`` file (one file: weights inside, as ``veil.export``
            writes them), or the file's bytes.
        sha256: the digest the bytes must have (64 hex digits); a mismatch raises
            :class:`~veil.errors.IntegrityError` before anything is loaded.
        threads: onnxruntime's intra-op threads (1 suits batch-1 prediction on a device).

    Raises:
        IntegrityError: the bytes do not have ``sha256``.
        InvalidRequest: onnxruntime cannot load them as a model.

    Example:
        >>> import tempfile, torch, veil
        >>> path = veil.export(torch.nn.Linear(2, 1), tempfile.mkdtemp() + "/m.onnx",
        ...                    torch.zeros(1, 2))
        >>> p = Predictor(path)
        >>> p  # doctest: +ELLIPSIS
        Predictor(sha256='...', inputs=['input'], outputs=['output'])
        >>> p.predict([[1.0, 2.0], [3.0, 4.0]]).shape
        (2, 1)
        >>> Predictor(path, sha256="0" * 64)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        veil.errors.IntegrityError: the model's SHA-256 is ..., not 0000000000000000...: it was altered or corrupted; nothing was loaded
    """

    def __init__(self, model: str | os.PathLike[str] | bytes | bytearray | memoryview, *,
                 sha256: str | None = None, threads: int = 1) -> None:  # fmt: skip
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        if isinstance(model, bytes | bytearray | memoryview):
            data = bytes(model)
        else:
            data = Path(model).read_bytes()
        digest = sha256_of(data)
        if sha256 is not None and digest != sha256.strip().lower():
            raise IntegrityError(
                f"the model's SHA-256 is {digest}, not {sha256.strip().lower()}: it was "
                "altered or corrupted; nothing was loaded"
            )
        #: SHA-256 of the model's bytes.
        self.sha256 = digest
        ort = _onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only
        try:
            self._session = ort.InferenceSession(
                data, sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's own error types (InvalidProtobuf, Fail...)
            first = (str(exc).strip().splitlines() or [""])[0][:500]
            raise InvalidRequest(
                f"onnxruntime cannot load this model ({type(exc).__name__}: {first}); give an "
                "ONNX file as veil.export writes it"
            ) from None
        inputs = self._session.get_inputs()
        #: The model's input names, in order.
        self.input_names: list[str] = [i.name for i in inputs]
        #: The model's output names, in order.
        self.output_names: list[str] = [o.name for o in self._session.get_outputs()]
        self._dtypes = [_DTYPES.get(i.type) for i in inputs]
        self._shapes = [i.shape for i in inputs]

    def predict(self, x: Any) -> Any:
        """Run the model.

        Args:
            x: the input as an array (or nested lists) for a one-input model; for several
                inputs a sequence in :attr:`input_names` order, or a dict name -> array.
                Values are converted to the dtype the model takes (float64 -> float32...).

        Returns:
            The output as a numpy array, or a list of arrays for a model with several.

        Raises:
            InvalidRequest: inputs missing, unknown or of the wrong shape (named).
        """
        feed = self._feed(x)
        try:
            out = self._session.run(self.output_names, feed)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:500]
            raise InvalidRequest(
                f"the model refused these inputs ({first}); it takes {self._describe_inputs()}"
            ) from None
        return out[0] if len(out) == 1 else out

    __call__ = predict

    def _feed(self, x: Any) -> dict[str, np.ndarray]:  # type: ignore[type-arg]
        names = self.input_names
        if isinstance(x, Mapping):
            unknown = sorted(set(x) - set(names))
            missing = [n for n in names if n not in x]
            if unknown or missing:
                raise InvalidRequest(
                    f"inputs {unknown} are not the model's and {missing} are missing; it "
                    f"takes {self._describe_inputs()}"
                )
            values = [x[n] for n in names]
        elif len(names) == 1:
            values = [x]
        elif isinstance(x, Sequence) and not isinstance(x, str | bytes) and len(x) == len(names):
            values = list(x)
        else:
            raise InvalidRequest(
                f"the model takes {len(names)} inputs ({self._describe_inputs()}): give a "
                "list in that order, or a dict by name"
            )
        feed = {}
        for name, value, dtype in zip(names, values, self._dtypes):
            arr = np.asarray(value)
            if dtype is not None and arr.dtype != dtype:
                arr = arr.astype(dtype)
            feed[name] = arr
        return feed

    def _describe_inputs(self) -> str:
        ins = self._session.get_inputs()
        return ", ".join(f"{i.name}: {i.type} of shape {i.shape}" for i in ins)

    def __repr__(self) -> str:
        return (
            f"Predictor(sha256={self.sha256[:16]!r}, inputs={self.input_names}, "
            f"outputs={self.output_names})"
        )
