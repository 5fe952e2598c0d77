"""Datasets: a data owner's private assets with their mocks, bounds and descriptions."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from veil.errors import (
    InvalidRequest,
    ObjectNotFound,
    PermissionDenied,
    SerdeError,
)
from veil.node.base import NodeBase
from veil.node.store import (
    DatasetRow,
)
from veil.node.users import Session
from veil.serde import codec
from veil.serde.messages import (
    AssetInfo,
    CreateDataset,
    DatasetInfo,
    DatasetList,
    GetDataset,
    ListDatasets,
    Reply,
    TensorData,
    Value,
)
from veil.serde.tensors import tensor_from_data, tensor_to_data

log = logging.getLogger("veil.node")


@dataclass(slots=True)
class DatasetEntry:
    name: str
    description: str
    created: float
    assets: list[tuple[str, int, TensorData, list[str], list[tuple[float, float]], str]]


def dataset_from_row(d: DatasetRow) -> DatasetEntry:
    assets = []
    for aname, oid, mock, cols, bounds, desc in d.assets:
        mock_reply = codec.decode_reply(mock)
        if not (isinstance(mock_reply, Value) and isinstance(mock_reply.value, TensorData)):
            raise SerdeError(f"stored mock of dataset {d.name!r} is corrupt")
        assets.append((aname, oid, mock_reply.value, cols, [tuple(b) for b in bounds], desc))
    return DatasetEntry(d.name, d.description, d.created, assets)  # type: ignore[arg-type]


class DatasetsMixin(NodeBase):
    """Creating, listing and describing datasets."""

    def _create_dataset(self, session: Session, msg: CreateDataset) -> Reply:
        if not session.is_admin:
            raise PermissionDenied("only the node's owner or admins create datasets")
        problems = []
        if not msg.name or len(msg.name) > 200:
            problems.append("a dataset needs a name of 1-200 characters")
        if msg.name in self._datasets:
            problems.append(f"dataset {msg.name!r} already exists")
        if not msg.assets:
            problems.append("a dataset needs at least one asset")
        for a in msg.assets:
            if (a.private.shape, a.private.dtype) != (a.mock.shape, a.mock.dtype):
                problems.append(
                    f"asset {a.name!r}: the mock must have the private data's shape and dtype "
                    f"({a.private.shape} {a.private.dtype}), got {a.mock.shape} {a.mock.dtype}"
                )
            ncols = a.private.shape[-1] if a.private.shape else 1
            if a.columns and len(a.columns) != ncols:
                problems.append(
                    f"asset {a.name!r}: {len(a.columns)} column names for {ncols} columns"
                )
            if a.bounds and len(a.bounds) not in (1, ncols):
                problems.append(f"asset {a.name!r}: give one (low, high) bound or one per column")
            if any(lo > hi for lo, hi in a.bounds):
                problems.append(f"asset {a.name!r}: a bound has low > high")
        for cap in self._caps.values():  # e.g. veil.dp: rows per data subject
            problems += cap.check_assets(msg.assets)
        if problems:
            raise InvalidRequest("; ".join(problems))
        assets = []
        for a in msg.assets:
            value = tensor_from_data(a.private, copy=True)
            rec = self._store(session, value, private=True, sources=frozenset({msg.name}),
                              description=a.description, asset_of=msg.name)  # fmt: skip
            for cap in self._caps.values():  # e.g. veil.dp: bounds and rows per data subject
                cap.on_asset(rec, a)
            mock = tensor_to_data(tensor_from_data(a.mock, copy=True))
            assets.append((a.name, rec.id, mock, list(a.columns), list(a.bounds), a.description))
        ds = DatasetEntry(msg.name, msg.description, time.time(), assets)
        self._datasets[msg.name] = ds
        if self.store.persistent:
            self._batch.datasets.append(DatasetRow(ds.name, ds.description, ds.created, [
                (n, oid, bytes(codec.encode(Value(m))), c, b, d) for n, oid, m, c, b, d in assets
            ]))  # fmt: skip
        self._audit_row(session, "create_dataset", msg.name, [a[1] for a in assets])
        return self._dataset_info(ds)

    def _dataset_info(self, ds: DatasetEntry) -> DatasetInfo:
        assets = [
            AssetInfo(n, self._info_of(self._objects[oid]), mock, cols, bounds, desc)
            for n, oid, mock, cols, bounds, desc in ds.assets
            if oid in self._objects
        ]
        return DatasetInfo(ds.name, ds.description, assets, ds.created)

    def _list_datasets(self, session: Session, msg: ListDatasets) -> Reply:
        return DatasetList([self._dataset_info(d) for d in self._datasets.values()])

    def _get_dataset(self, session: Session, msg: GetDataset) -> Reply:
        ds = self._datasets.get(msg.name)
        if ds is None:
            known = ", ".join(sorted(self._datasets)) or "none"
            raise ObjectNotFound(
                f"node {self.name!r} has no dataset {msg.name!r} (it has: {known})"
            )
        return self._dataset_info(ds)
