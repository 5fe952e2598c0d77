"""``.keras`` files (Keras 3's saved models) loaded on the torch backend, checked first.

A ``.keras`` file is a zip of ``config.json`` (the model's JSON config), ``metadata.json``
and ``model.weights.h5`` (its variables, and the optimizer's if it was compiled). It does
not matter which backend saved it: a model trained with Keras on TensorFlow, JAX or torch
loads here on torch. :func:`load_model` reads the archive itself and checks the config
against :data:`veil.ops.keras.KERAS_ALLOWLIST` *before* Keras sees it, exactly as a node
checks a config that arrives on the wire, then builds it with ``safe_mode=True`` and loads
the weights with Keras's own reader. It never hands the path to ``keras.saving.load_model``,
which also takes legacy HDF5 models, remote paths and directories.
"""

from __future__ import annotations

import copy
import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from veil.errors import OpNotAllowed, SerdeError, UnsupportedError
from veil.ops.keras import check_config
from veil.serde.keras_models import MAX_CONFIG_CHARS, load_keras

__all__ = ["MAX_FILE_BYTES", "load_model"]

#: Files larger than this are refused before they are read (``max_bytes`` raises it).
MAX_FILE_BYTES = 512 * 1024 * 1024
CONFIG, METADATA, WEIGHTS = "config.json", "metadata.json", "model.weights.h5"


def load_model(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """Load a ``.keras`` file as a Keras model on the torch backend, for inference or upload.

    The archive may hold only ``config.json``, ``metadata.json`` and ``model.weights.h5``.
    Its compile settings (optimizer, loss, metrics) and optimizer state are dropped: the
    model comes back uncompiled, with the weights it was saved with.

    Args:
        path: a ``.keras`` file, saved by Keras 3 (``model.save("m.keras")``) on any backend.
        max_bytes: refuse larger files (and archive members) before reading them.

    Returns:
        The Sequential or functional model (a ``torch.nn.Module``), ready for
        ``worker.send(model)`` or :func:`veil.keras.upload_model`.

    Raises:
        OpNotAllowed: the config names a ``Lambda`` layer, a custom or unknown class, or a
            module outside Keras (every problem is listed); nothing was deserialized.
        UnsupportedError: the archive holds more than a config and weights (assets of
            preprocessing layers), or the config is not a Sequential or functional model.
        SerdeError: not a ``.keras`` archive (a legacy ``.h5`` model, a SavedModel, a
            damaged zip), a config that is not JSON, or weights that do not fit the config.
        ModuleNotFoundError: Keras is not installed (``pip install 'veil[keras]'``).

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> import torch
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     model.save(f"{d}/m.keras")
        ...     back = load_model(f"{d}/m.keras")
        >>> x = torch.ones(1, 3)
        >>> torch.equal(back(x), model(x))
        True
    """
    path = Path(path)
    config, weights = _read_archive(path, max_bytes)
    config.pop("compile_config", None)  # never compiled here: nothing in it is built
    problems = check_config(config)
    if problems:
        raise OpNotAllowed(
            f"{path.name}: Keras config refused before deserialization: "
            + "; ".join(problems[:10])
            + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
            + ". Only Keras's built-in layers load (veil.ops.keras.KERAS_ALLOWLIST): rebuild "
            "the model without Lambda or custom layers, as a Sequential or functional model"
        )
    if config.get("class_name") not in ("Sequential", "Functional"):
        raise UnsupportedError(
            f"{path.name} holds a {str(config.get('class_name'))[:60]!r}, not a Sequential or "
            "functional Keras model"
        )
    keras = load_keras()
    try:
        with keras.device("cpu"):
            model = keras.saving.deserialize_keras_object(copy.deepcopy(config), safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types on a bad config
        raise SerdeError(f"{path.name}: cannot build its Keras model: {str(exc)[:300]}") from None
    with tempfile.TemporaryDirectory(prefix="veil-keras-") as tmp:
        h5 = Path(tmp) / WEIGHTS  # Keras's weight reader takes a path ending in .weights.h5
        h5.write_bytes(weights)
        try:
            model.load_weights(h5)
        except Exception as exc:  # noqa: BLE001 - h5py and Keras raise many types
            raise SerdeError(
                f"{path.name}: its weights do not fit its config: {str(exc)[:300]}"
            ) from None
    return model


def _read_archive(path: Path, max_bytes: int) -> tuple[dict[str, Any], bytes]:
    """The config (decoded) and the weights file (bytes) of a ``.keras`` archive."""
    size = path.stat().st_size
    if size > max_bytes:
        raise SerdeError(f"{path.name} is {size:,} bytes, over max_bytes={max_bytes:,}")
    data = path.read_bytes()
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise SerdeError(
            f"{path.name} is not a .keras archive (a zip of config.json and "
            "model.weights.h5); legacy .h5 models and SavedModels are not loaded: re-save "
            "the model with Keras 3 as model.save('model.keras')"
        )
    infos, members = _members(path.name, data, max_bytes)
    for info in infos:
        if info.filename not in (CONFIG, METADATA, WEIGHTS):
            raise UnsupportedError(
                f"{path.name} holds {info.filename[:100]!r}: only {CONFIG}, {METADATA} and "
                f"{WEIGHTS} are loaded (models whose layers keep assets, such as StringLookup "
                "or TextVectorization, are not supported)"
            )
    missing = [m for m in (CONFIG, WEIGHTS) if m not in members]
    if missing:
        raise SerdeError(f"{path.name} has no {' or '.join(missing)}: not a Keras 3 model")
    if len(members[CONFIG]) > MAX_CONFIG_CHARS:
        raise SerdeError(f"{path.name}: its config is longer than {MAX_CONFIG_CHARS} bytes")
    try:
        config = json.loads(members[CONFIG])
    except (ValueError, RecursionError) as exc:
        raise SerdeError(f"{path.name}: config.json is not JSON: {str(exc)[:200]}") from None
    if not isinstance(config, dict):
        raise SerdeError(f"{path.name}: config.json is not a JSON object")
    return config, members[WEIGHTS]


def _members(
    name: str, data: bytes, max_bytes: int
) -> tuple[list[zipfile.ZipInfo], dict[str, bytes]]:
    """The entries of the zip ``data`` and the contents of the three a model may hold."""
    members: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            for info in infos:
                if info.filename not in (CONFIG, METADATA, WEIGHTS):
                    continue
                if info.filename in members:
                    raise SerdeError(f"{name} holds {info.filename} twice")
                if info.file_size > max_bytes:
                    raise SerdeError(f"{name}: {info.filename} unpacks past max_bytes")
                with archive.open(info) as f:
                    members[info.filename] = f.read(max_bytes + 1)
                if len(members[info.filename]) > max_bytes:
                    raise SerdeError(f"{name}: {info.filename} unpacks past max_bytes")
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, OSError) as exc:
        raise SerdeError(f"{name} is a damaged zip: {str(exc)[:200]}") from None
    return infos, members
