"""Staged uploads: the slow part of storing a large sent tensor, done before the node's lock.

A node answers a ``SendObject`` only once the tensor is durable. For a large tensor that
means encoding its stored form and writing (and fsyncing) a file of hundreds of MB, which
takes seconds; done under the node's lock it would stall every other user. So the node
stages it first, without the lock: it decodes the tensor (a view of the received frame),
and the store writes its file (:meth:`veil.node.store.Store.stage`). Under the lock it
then only records the object and commits a row naming that file. Durability holds: the
file is fsynced before the row commits, and the reply goes out after the commit; a
process killed in between leaves a file no row names, which the next start removes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from veil.errors import VeilError
from veil.node.store import Store
from veil.serde import codec
from veil.serde.messages import SendObject, TensorData, Value
from veil.serde.tensors import tensor_from_data, tensor_to_data

#: Uploads at least this large are staged (smaller ones are quick under the lock).
STAGE_MIN_BYTES = codec.OUT_OF_LINE_BYTES


@dataclass(frozen=True, slots=True)
class StagedUpload:
    """A sent tensor, decoded, whose stored form the store has already written."""

    oid: int  #: the object id the staged file was written for
    value: torch.Tensor
    blob: str  #: the store's name for the staged payload (``ObjectRow.blob``)


def stage_upload(store: Store, oid: int, msg: SendObject) -> StagedUpload | None:
    """Decode a large sent tensor and have ``store`` write its payload now; None when there
    is nothing to stage (a small or non-tensor upload, a store that keeps nothing, a store
    that keeps it inline, or a malformed tensor, which the normal path then refuses).

    Example:
        >>> from veil.node.store.sql import SQLStore
        >>> store = SQLStore("sqlite://")
        >>> msg = SendObject(tensor_to_data(torch.zeros(2**20)))
        >>> staged = stage_upload(store, 7, msg)
        >>> staged.value.shape, staged.blob.startswith("7-")
        (torch.Size([1048576]), True)
        >>> store.discard(staged.blob)
        >>> stage_upload(store, 8, SendObject(tensor_to_data(torch.zeros(4)))) is None
        True
        >>> store.close()
    """
    value_data = msg.value
    if (
        not store.persistent
        or not isinstance(value_data, TensorData)
        or len(value_data.data) < STAGE_MIN_BYTES
    ):
        return None
    try:
        value = tensor_from_data(value_data, copy=False)  # shares the received frame
    except VeilError:
        return None
    parts = codec.encode_parts(Value(tensor_to_data(value)))  # the tensor is not copied
    blob = store.stage(oid, parts)
    return None if blob is None else StagedUpload(oid, value, blob)
