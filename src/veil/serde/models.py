"""Messages of model hosting (``veil.models``): publish, list and fetch ONNX models by name and
version. Carried as typed capability calls (:class:`~veil.serde.messages.CapabilityCall`), so
a node decodes each against its type: a bad name, version or hash is refused before any
handler runs.

Example:
    >>> import msgspec
    >>> msgspec.convert({"name": "lenet", "version": "3"}, FetchModel)
    FetchModel(name='lenet', version='3')
    >>> msgspec.convert({"name": "../etc", "version": "3"}, FetchModel)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    msgspec.ValidationError: Expected `str` matching regex ... - at `$.name`
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "FetchModel",
    "ListModels",
    "ModelData",
    "ModelInfo",
    "ModelList",
    "PublishModel",
]

#: A model's name: letters, digits, ``.``, ``_``, ``-``; safe in a URL path and a file name
#: (the same rule as ``veil.device.MODEL_NAME``, which cannot import this module).
ModelName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")]
#: A version (``3``, ``1.2.0``, ``2026-12-03``); compared as text, never reused.
ModelVersion = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]


class PublishModel(msgspec.Struct, frozen=True, gc=False):
    """An owner publishes ``data`` (an ONNX file) as ``name`` at ``version``."""

    name: ModelName
    version: ModelVersion
    data: bytes
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class ModelInfo(msgspec.Struct, frozen=True):
    """What a node tells about one published version (never its bytes)."""

    name: str
    version: str
    sha256: Sha256
    size: int
    created: float
    publisher: str
    description: str = ""


class ListModels(msgspec.Struct, frozen=True):
    """Every hosted model, or the versions of one."""

    name: ModelName | None = None


class ModelList(msgspec.Struct, frozen=True):
    items: list[ModelInfo]


class FetchModel(msgspec.Struct, frozen=True):
    """The bytes of one version (``None``: the latest published)."""

    name: ModelName
    version: ModelVersion | None = None


class ModelData(msgspec.Struct, frozen=True, gc=False):
    info: ModelInfo
    data: bytes
