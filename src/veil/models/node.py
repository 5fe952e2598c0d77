"""Model hosting as a node capability: owners publish ONNX models, users fetch them by version.

A node's owner (or an admin) publishes a model's ONNX bytes under a name and a version;
anyone logged in lists the models and fetches one (a version, or the latest published).
Prediction then happens on the device (:mod:`veil.device`): a fetch carries no input, and
the node records every fetch in its audit log (who, which model and version, its hash).

A published version never changes: publishing the same name and version again with the
same bytes answers what is there; with other bytes it is refused.

Storage: each version is a durable keyed row of the node (:meth:`~veil.node.Node.put_row`)
with its facts, and its bytes are rows of base64 chunks of :data:`CHUNK_BYTES`, keyed by
the bytes' SHA-256 (two versions with the same bytes share them). They are written in the
message's transaction (all or nothing), survive restarts, and no object operation can
delete or alter them (unlike a node object, which its owner's ``clear()`` would drop).
Rows live in the node's memory as well as its database, so a model may have at most
:data:`MAX_MODEL_BYTES`; models for devices are far smaller.
"""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any

from veil.device.predictor import sha256_of
from veil.errors import IntegrityError, InvalidRequest, ObjectNotFound, PermissionDenied
from veil.models.onnx_format import onnx_problem
from veil.node.capability import Capability, CapabilityState, Method, install
from veil.node.text import check_text
from veil.serde.models import (
    FetchModel,
    ListModels,
    ModelData,
    ModelInfo,
    ModelList,
    PublishModel,
)

if TYPE_CHECKING:
    from veil.node.users import Session

__all__ = ["CAPABILITY", "CHUNK_BYTES", "MAX_MODEL_BYTES", "ModelHosting"]

#: Kinds of the node's durable rows this capability writes.
MODEL, CHUNK = "models.model", "models.chunk"
#: Bytes of a model per chunk row (stored as base64: 4/3 of this).
CHUNK_BYTES = 1 << 20
#: The largest model a node hosts.
MAX_MODEL_BYTES = 64 << 20


def _info(row: dict[str, Any]) -> ModelInfo:
    return ModelInfo(row["name"], row["version"], row["sha256"], int(row["size"]),
                     float(row["created"]), row["publisher"], row.get("description", ""))  # fmt: skip


class ModelHosting(CapabilityState):
    """The ``models`` capability on one node. Its state is the node's rows, read on each
    call (so a rolled-back message leaves nothing behind)."""

    def _versions(self, name: str) -> list[dict[str, Any]]:
        """The rows of every version of ``name``, oldest published first."""
        rows = [r for r in self.node.rows(MODEL).values() if r["name"] == name]
        return sorted(rows, key=lambda r: int(r["seq"]))

    def _row(self, name: str, version: str | None) -> dict[str, Any]:
        versions = self._versions(name)
        if not versions:
            hosted = sorted({r["name"] for r in self.node.rows(MODEL).values()})
            raise ObjectNotFound(
                f"node {self.node.name!r} hosts no model {name!r}; it hosts "
                f"{hosted[:20] or 'none'} (veil models list)"
            )
        if version is None:
            return versions[-1]
        for r in versions:
            if r["version"] == version:
                return r
        raise ObjectNotFound(
            f"model {name!r} has no version {version!r}; its versions: "
            f"{[r['version'] for r in versions][-20:]}"
        )

    # -------------------------------------------------------------- methods
    def publish(self, session: Session, msg: PublishModel) -> ModelInfo:
        """Store a new version (owners and admins)."""
        if not session.is_admin:
            raise PermissionDenied("only the node's owner or admins publish models")
        check_text("description", msg.description)
        size = len(msg.data)
        if not 0 < size <= MAX_MODEL_BYTES:
            raise InvalidRequest(
                f"a model has 1 to {MAX_MODEL_BYTES} bytes, this one {size}: models for "
                "devices are usually a few MB (quantize or prune larger ones)"
            )
        problem = onnx_problem(msg.data)
        if problem is not None:
            raise InvalidRequest(
                f"model {msg.name!r} is not an ONNX file ({problem}); write one with veil.export"
            )
        digest = sha256_of(msg.data)
        rows = self.node.rows(MODEL)
        key = f"{MODEL}:{msg.name}:{msg.version}"
        if key in rows:
            if rows[key]["sha256"] == digest:
                return _info(rows[key])  # published already: nothing changes
            raise InvalidRequest(
                f"model {msg.name!r} version {msg.version!r} is published already (sha256 "
                f"{rows[key]['sha256'][:16]}...), and a version never changes: publish "
                "these bytes under a new version"
            )
        if not any(r["sha256"] == digest for r in rows.values()):
            for i in range(0, size, CHUNK_BYTES):
                chunk = base64.b64encode(msg.data[i : i + CHUNK_BYTES]).decode("ascii")
                self.node.put_row(f"{CHUNK}:{digest}:{i // CHUNK_BYTES}", CHUNK,
                                  {"sha256": digest, "data": chunk})  # fmt: skip
        row = {
            "name": msg.name, "version": msg.version, "sha256": digest, "size": size,
            "created": time.time(), "publisher": session.email, "description": msg.description,
            "chunks": -(-size // CHUNK_BYTES),
            "seq": 1 + max((int(r["seq"]) for r in rows.values()), default=0),
        }  # fmt: skip
        self.node.put_row(key, MODEL, row)
        self.node.write_audit(session, "models.publish",
                              f"{msg.name} version {msg.version}: sha256={digest} size={size}")  # fmt: skip
        return _info(row)

    def list_models(self, session: Session, msg: ListModels) -> ModelList:
        """Every hosted version (of ``msg.name`` only, if given), by name then age."""
        if msg.name is not None:
            rows = self._versions(msg.name)
        else:
            rows = list(self.node.rows(MODEL).values())
        ordered = sorted(rows, key=lambda r: (r["name"], int(r["seq"])))
        return ModelList([_info(r) for r in ordered])

    def fetch(self, session: Session, msg: FetchModel) -> ModelData:
        """One version's bytes (anyone logged in); the fetch is audited."""
        row = self._row(msg.name, msg.version)
        chunks = self.node.rows(CHUNK)
        digest = row["sha256"]
        try:
            parts = [chunks[f"{CHUNK}:{digest}:{i}"]["data"] for i in range(int(row["chunks"]))]
            data = b"".join(base64.b64decode(p, validate=True) for p in parts)
        except (KeyError, ValueError):
            data = b""
        if sha256_of(data) != digest:
            raise IntegrityError(
                f"node {self.node.name!r}: the stored bytes of model {msg.name!r} version "
                f"{row['version']!r} do not match its SHA-256; its store was damaged. Tell "
                "the node's owner (republishing needs a new version)"
            )
        self.node.write_audit(session, "models.fetch",
                              f"{row['name']} version {row['version']}: sha256={digest}")  # fmt: skip
        return ModelData(_info(row), data)


#: Model hosting as a node capability: typed ``publish``, ``list`` and ``fetch`` methods.
CAPABILITY = Capability(
    "models",
    state=ModelHosting,
    methods={
        "publish": Method(PublishModel, ModelHosting.publish),
        "list": Method(ListModels, ModelHosting.list_models),
        "fetch": Method(FetchModel, ModelHosting.fetch),
    },
)
install(CAPABILITY)
