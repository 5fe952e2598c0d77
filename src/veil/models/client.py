"""The Python side of model hosting: publish, list and fetch models on a node's ``Worker``.

Devices without torch fetch over REST instead (:func:`veil.device.fetch`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from veil.device.fetch import check_name, check_version
from veil.device.predictor import Predictor, sha256_of
from veil.errors import IntegrityError
from veil.export import export
from veil.node import capability
from veil.serde.models import FetchModel, ListModels, ModelData, ModelInfo, ModelList, PublishModel

__all__ = ["download", "fetch", "list_models", "publish"]


def _onnx_bytes(model_or_path: Any, example_inputs: Any, export_options: dict[str, Any]) -> bytes:
    if isinstance(model_or_path, bytes | bytearray | memoryview):
        return bytes(model_or_path)
    if isinstance(model_or_path, str | os.PathLike):
        path = Path(model_or_path)
        if path.suffix.lower() != ".onnx":
            raise ValueError(f"nodes host ONNX models: give a .onnx file, not {str(path)!r}")
        return path.read_bytes()
    if example_inputs is None:
        raise TypeError(
            "publishing a torch model exports it to ONNX first: give example_inputs (a tensor "
            "or a tuple of tensors the model takes)"
        )
    with tempfile.TemporaryDirectory(prefix="veil-export-") as tmp:
        path = export(model_or_path, Path(tmp) / "model.onnx", example_inputs, **export_options)
        return path.read_bytes()


def publish(worker: Any, name: str, model_or_path: Any, example_inputs: Any = None, *,
            version: str | int, description: str = "", **export_options: Any) -> ModelInfo:  # fmt: skip
    """Publish a model on ``worker``'s node for devices to fetch (owners and admins).

    Args:
        worker: a ``Worker`` logged in as the node's owner or an admin.
        name: the model's name (letters, digits, ``.``, ``_``, ``-``).
        model_or_path: a torch module or a plan (exported with :func:`veil.export`), a path
            to a ``.onnx`` file, or ONNX bytes.
        example_inputs: what the model takes, to export a torch module or plan.
        version: this version's label (``3``, ``"1.2.0"``); a version never changes.
        description: shown by ``veil models list``.
        export_options: passed to :func:`veil.export` (``dynamic_batch``, ``opset``...).

    Returns:
        What the node recorded (its SHA-256, size, publisher).

    Raises:
        PermissionDenied: the caller is not the node's owner or an admin.
        InvalidRequest: a bad name or version, bytes that are not ONNX, or a version that
            is published already with other bytes.

    Example:
        >>> import torch, veil
        >>> node = veil.VirtualWorker("hospital")
        >>> info = veil.models.publish(node, "triage", torch.nn.Linear(4, 2), torch.zeros(1, 4),
        ...                            version=1, description="4 vitals -> 2 scores")
        >>> info.name, info.version, info.size > 0
        ('triage', '1', True)
        >>> veil.models.fetch(node, "triage").predict([[1.0, 2.0, 3.0, 4.0]]).shape
        (1, 2)
    """
    check_name(name)
    ver = check_version(version)
    data = _onnx_bytes(model_or_path, example_inputs, export_options)
    msg = PublishModel(name, ver, data, description)
    return capability.call(worker, "models", "publish", msg, ModelInfo)


def list_models(worker: Any, name: str | None = None) -> list[ModelInfo]:
    """The models ``worker``'s node hosts (every version; only ``name``'s if given), by name
    and then in the order they were published."""
    return capability.call(worker, "models", "list", ListModels(name), ModelList).items


def download(worker: Any, name: str, version: str | int | None = None) -> tuple[ModelInfo, bytes]:
    """One version of a hosted model (default: the latest) and its ONNX bytes, checked
    against the SHA-256 the node states.

    Raises:
        ObjectNotFound: no such model or version (the message lists what there is).
        IntegrityError: the bytes do not have the node's stated SHA-256.
    """
    ver = None if version is None else check_version(version)
    got = capability.call(worker, "models", "fetch", FetchModel(name, ver), ModelData)
    if sha256_of(got.data) != got.info.sha256:
        raise IntegrityError(
            f"model {name!r} version {got.info.version!r}: the bytes received do not match the "
            f"SHA-256 the node states ({got.info.sha256}); nothing was loaded"
        )
    return got.info, got.data


def fetch(worker: Any, name: str, version: str | int | None = None, *,
          threads: int = 1) -> Predictor:  # fmt: skip
    """A hosted model (default: its latest version), checked and ready to predict locally
    (:class:`veil.device.Predictor`); see :func:`download` for what it raises."""
    info, data = download(worker, name, version)
    return Predictor(data, sha256=info.sha256, threads=threads)
