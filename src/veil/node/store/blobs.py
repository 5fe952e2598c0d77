"""Blob files: payloads too large for a row, written durably beside the database."""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

__all__ = ["BLOB_NAME", "BlobFiles", "nbytes"]

#: Blob files are ``<object id>-<16 hex>.obj`` (a payload) or ``.mock`` (a dataset asset's mock);
#: a fresh name per write, so a rolled-back write never touches a file a committed row names.
BLOB_NAME = re.compile(r"^\d+-[0-9a-f]{16}\.(obj|mock)(\.tmp)?$")
#: A file in the blob directory naming the database it belongs to (its ``store_id``), so
#: two databases never share one directory (each would delete the other's files).
_MARKER = ".veil-store"


def nbytes(payload: bytes | bytearray | memoryview) -> int:
    return payload.nbytes if isinstance(payload, memoryview) else len(payload)


class BlobFiles:
    """The blob directory of a :class:`~veil.node.store.sql.SQLStore` (a mixin): claims it
    for one database, writes files durably under fresh names, reads, removes and sweeps them."""

    _blob_dir: Path | None
    _lock: threading.Lock  # guards the lazily created blob directory and ``_staged``
    _temp_blob_dir: bool
    _claimed: bool
    _store_id: str
    _staged: set[str]  # blob files written ahead, not yet named by a row

    def _safe_url(self) -> str:
        """The database URL without its password, for messages (the store defines it)."""
        raise NotImplementedError

    def _claim(self, directory: Path) -> None:
        """Mark ``directory`` as this database's, or refuse it if another's."""
        marker = directory / _MARKER
        try:
            owner = marker.read_text().strip()
        except FileNotFoundError:
            directory.mkdir(parents=True, exist_ok=True)
            marker.write_text(self._store_id + "\n")
            owner = self._store_id
        if owner != self._store_id:
            raise ValueError(
                f"blob directory {str(directory)!r} belongs to another database (store id "
                f"{owner}, this one is {self._store_id}); give each database its own blob_dir"
            )
        self._claimed = True

    @property
    def blob_dir(self) -> Path:
        """Where payloads of ``inline_limit`` bytes or more are kept (created on first use)."""
        with self._lock:
            if self._blob_dir is None:
                self._blob_dir = Path(tempfile.mkdtemp(prefix="veil-blobs-"))
                self._temp_blob_dir = True
            return self._blob_dir

    def _write_blob(self, oid: int, suffix: str, *parts: bytes | bytearray | memoryview,
                    name: str | None = None) -> str:  # fmt: skip
        """Write the concatenated ``parts`` durably under a fresh name and return the name."""
        directory = self.blob_dir
        if not self._claimed:
            self._claim(directory)
        name = name or f"{oid}-{secrets.token_hex(8)}.{suffix}"
        path = directory / name
        tmp = directory / (name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                for part in parts:
                    f.write(part)  # large buffers go straight to the OS: no copy
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if os.name == "posix":  # make the rename itself durable
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return name

    def _blob_path(self, name: str) -> Path:
        if not BLOB_NAME.match(name):
            raise ValueError(f"database {self._safe_url()!r} names an invalid blob file {name!r}")
        return self.blob_dir / name

    def _read_blob(self, name: str, what: str) -> bytearray:
        path = self._blob_path(name)
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                buf = bytearray(size)
                view = memoryview(buf)
                got = 0
                while got < size:
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"{what} is stored in {str(path)!r}, which is missing; restore the blob "
                f"directory {str(self.blob_dir)!r} from a backup (or pass blob_dir=...)"
            ) from exc
        if got != size:
            raise OSError(f"{str(path)!r} changed while being read; try again")
        return buf

    def _remove_blobs(self, names: Iterable[str | None]) -> None:
        directory = self._blob_dir
        if directory is None:
            return
        for name in names:
            if name and BLOB_NAME.match(name):
                try:
                    (directory / name).unlink(missing_ok=True)
                except OSError:  # pragma: no cover - left for the sweep in load()
                    pass

    def _sweep(self, referenced: set[str]) -> None:
        """Remove blob files no row names (left by a process killed mid-write)."""
        directory = self._blob_dir
        if directory is None or not directory.is_dir():
            return
        self._claim(directory)
        with self._lock:
            referenced = referenced | self._staged  # being written, or about to be named
        for entry in os.scandir(directory):
            name = entry.name.removesuffix(".tmp")
            if entry.is_file() and BLOB_NAME.match(entry.name) and name not in referenced:
                self._remove_blobs([entry.name])
