"""SQLStore: rows round-trip, writes are atomic, and a node's state survives a restart or a kill."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

import veil
from veil.errors import InvalidRequest, PermissionDenied, VersionMismatch
from veil.node import Node
from veil.node.store import (
    AuditRow,
    Batch,
    DatasetRow,
    DPRow,
    ObjectRow,
    RequestRow,
    Snapshot,
    UserRow,
)
from veil.node.store.sql import SCHEMA_VERSION, SQLStore

OWNER, OWNER_PW = "owner@store.test", "owner-password-7"
SCI, SCI_PW = "sci@store.test", "sci-password-7"
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _obj(oid: int, payload: bytes | bytearray | memoryview, **kw: object) -> ObjectRow:
    row = ObjectRow(oid, "tensor", 1, False, [], [], None, "", 1.0, payload)
    for name, value in kw.items():
        setattr(row, name, value)
    return row


def _blob_files(store: SQLStore) -> set[str]:
    d = store.blob_dir
    return {p.name for p in d.iterdir() if p.name != ".veil-store"} if d.is_dir() else set()


def _url(tmp_path: Path, name: str = "node.db") -> str:
    return f"sqlite:///{tmp_path / name}"


@pytest.fixture(params=["sqlite", "sqlite-core", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLStore]:
    """A fresh store with a small inline limit: SQLite through the sqlite3 fast path, SQLite
    through SQLAlchemy Core (the path other databases take), and PostgreSQL (a throwaway
    cluster, or ``VEIL_TEST_POSTGRES_URL``; see tests/conftest.py)."""
    if request.param == "postgresql":
        pg_url = request.getfixturevalue("postgres_url")
        from veil.node.store.sql import metadata

        engine = sa.create_engine(pg_url)
        metadata.drop_all(engine)
        engine.dispose()
        s = SQLStore(pg_url, blob_dir=str(tmp_path / "blobs"), inline_limit=64)
    else:
        s = SQLStore(_url(tmp_path), inline_limit=64)
        s._fast = request.param == "sqlite"
    yield s
    s.close()


def _reopen(store: SQLStore) -> SQLStore:
    url = store.url.render_as_string(hide_password=False)
    fast = store._fast
    store.close()
    s = SQLStore(url, blob_dir=str(store.blob_dir), inline_limit=64)
    s._fast = fast
    return s


# ---------------------------------------------------------------------- rows
def test_every_row_type_round_trips_with_upserts_and_deletes(store: SQLStore) -> None:
    small, big = b"tiny", bytes(range(256)) * 4  # inline (< 64 bytes) and a blob file
    asset_mock_small, asset_mock_big = b"m" * 10, b"M" * 1000
    store.write(
        Batch(
            objects={
                1: _obj(1, small, approved=[2, 3], sources=["ds"], asset_of="ds", private=True),
                2: _obj(2, bytearray(big), description="big"),
                3: _obj(3, memoryview(big)[:500], kind="module"),
                4: _obj(4, big),
                5: _obj(5, memoryview(b"a view, inline")),
            },
            users=[UserRow(1, OWNER, "owner", "o", "hash1", 1.5)],
            datasets=[
                DatasetRow(
                    "ds",
                    "d",
                    2.5,
                    [
                        ("a", 1, asset_mock_small, ["x", "y"], [(0.0, 1.0), (-1.0, 2.0)], "first"),
                        ("b", 4, asset_mock_big, [], [], ""),
                    ],
                )
            ],
            requests=[RequestRow(1, 2, 1, "why", "pending", 3.0)],
            audit=[AuditRow(1.0, OWNER, "send", "t", [1], ["ds"]), AuditRow(2.0, OWNER, "get")],
        )
    )
    files_before = _blob_files(store)
    assert len(files_before) == 4  # objects 2, 3, 4 and the big mock
    first = {o.id: o for o in store.load().objects}
    assert (first[1].approved, first[1].sources, first[1].asset_of) == ([2, 3], ["ds"], "ds")
    assert first[1].private is True and bytes(first[1].payload) == small
    assert bytes(first[2].payload) == big and first[2].description == "big"
    assert bytes(first[5].payload) == b"a view, inline"
    # upsert object 1 (metadata and payload, now a blob), object 2 (blob -> inline),
    # delete objects 4 (a blob) and 5 (inline), re-write a user and decide the request (written again)
    store.write(
        Batch(
            objects={1: _obj(1, big, approved=[]), 2: _obj(2, b"now small", private=True)},
            deleted={4, 5},
            users=[
                UserRow(1, OWNER, "owner", "renamed", "hash2", 1.5),
                UserRow(2, SCI, "data_scientist", "", "hash3", 4.0),
            ],
            requests=[RequestRow(1, 2, 1, "why", "approved", 3.0, decided_by=1, note="ok")],
            audit=[AuditRow(3.0, SCI, "login")],
        )
    )
    store = _reopen(store)
    snap = store.load()

    objs = {o.id: o for o in snap.objects}
    assert sorted(objs) == [1, 2, 3]
    # an upsert replaces the whole row: metadata too
    assert bytes(objs[1].payload) == big and objs[1].approved == [] and objs[1].sources == []
    assert objs[1].private is False and objs[1].asset_of is None
    assert bytes(objs[2].payload) == b"now small" and objs[2].private is True
    assert bytes(objs[3].payload) == big[:500] and objs[3].kind == "module"
    assert [(u.id, u.email, u.name, u.password_hash) for u in snap.users] == [
        (1, OWNER, "renamed", "hash2"),
        (2, SCI, "", "hash3"),
    ]
    (ds,) = snap.datasets
    assert (ds.name, ds.description, ds.created) == ("ds", "d", 2.5)
    assert ds.assets == [
        ("a", 1, asset_mock_small, ["x", "y"], [(0.0, 1.0), (-1.0, 2.0)], "first"),
        ("b", 4, asset_mock_big, [], [], ""),
    ]
    assert snap.requests == [RequestRow(1, 2, 1, "why", "approved", 3.0, 1, "ok")]
    assert [(a.ts, a.action, a.objects, a.sources) for a in store.audit(10)] == [
        (3.0, "login", [], []),
        (2.0, "get", [], []),
        (1.0, "send", [1], ["ds"]),
    ]
    assert [a.action for a in store.audit(2)] == ["login", "get"]
    # files of the replaced (2) and deleted (4) objects are gone; 1 got a new file, 3 kept its own
    files_after = _blob_files(store)
    assert len(files_after) == 3
    assert not any(f.startswith(("2-", "4-")) and f.endswith(".obj") for f in files_after)
    assert {f for f in files_before if f.startswith("3-")} <= files_after
    store.close()


def test_a_failing_write_changes_nothing(store: SQLStore) -> None:
    store.write(
        Batch(objects={1: _obj(1, b"x" * 100)}, users=[UserRow(1, OWNER, "owner", "", "h", 0)])
    )
    files = _blob_files(store)
    bad = Batch(
        objects={1: _obj(1, b"y" * 100), 2: _obj(2, b"z" * 100)},  # both would be new blob files
        deleted={1},
        users=[UserRow(2, OWNER, "data_scientist", "", "h", 0)],  # same email: unique violation
        audit=[AuditRow(1.0, OWNER, "send")],
    )
    with pytest.raises(sa.exc.IntegrityError):
        store.write(bad)
    assert _blob_files(store) == files  # the failed write's new files were removed (no sweep yet)
    snap = store.load()
    assert [(o.id, bytes(o.payload)) for o in snap.objects] == [(1, b"x" * 100)]
    assert [u.id for u in snap.users] == [1]
    assert store.audit(10) == []


def test_a_staged_payload_is_kept_by_the_write_that_names_it(store: SQLStore) -> None:
    assert store.stage(5, [b"VL", b"tiny"]) is None  # under the inline limit: stays in the row
    name = store.stage(5, [b"VL", b"p" * 100, b"!"])
    assert name is not None and name in _blob_files(store)
    store.load()  # a reload (e.g. after another write failed) while it waits: not swept
    assert name in _blob_files(store)

    store.write(Batch(objects={5: _obj(5, b"", blob=name)}))

    store = _reopen(store)
    assert [(o.id, bytes(o.payload)) for o in store.load().objects] == [
        (5, b"VL" + b"p" * 100 + b"!")
    ]
    assert _blob_files(store) == {name}
    store.close()


def test_a_staged_payload_no_write_names_is_removed(store: SQLStore) -> None:
    discarded = store.stage(6, [b"d" * 100])
    failed = store.stage(7, [b"f" * 100])
    orphan = store.stage(8, [b"o" * 100])  # as if the process died before its write
    assert discarded and failed and orphan
    store.discard(discarded)
    dup = [UserRow(1, OWNER, "owner", "", "h", 0), UserRow(2, OWNER, "owner", "", "h", 0)]
    with pytest.raises(sa.exc.IntegrityError):
        store.write(Batch(objects={7: _obj(7, b"", blob=failed)}, users=dup))
    assert _blob_files(store) == {orphan}

    store = _reopen(store)  # a new process: nothing is staged any more
    store.load()
    assert _blob_files(store) == set()
    store.close()


# ---------------------------------------------------------------------- setup checks
def test_sqlite_runs_in_wal_mode_with_normal_sync(tmp_path: Path) -> None:
    store = SQLStore(_url(tmp_path))
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    assert store.blob_dir == tmp_path / "node.db.blobs"
    store.close()


def test_a_database_from_a_newer_veil_is_refused(tmp_path: Path) -> None:
    SQLStore(_url(tmp_path)).close()
    engine = sa.create_engine(_url(tmp_path))
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    engine.dispose()
    with pytest.raises(VersionMismatch, match="newer veil"):
        SQLStore(_url(tmp_path))


def test_bad_configuration_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inline_limit"):
        SQLStore("sqlite://", inline_limit=-1)
    with pytest.raises(ValueError, match="database URL"):
        SQLStore("not a url")
    with pytest.raises(FileNotFoundError, match="create it first"):
        SQLStore(_url(tmp_path / "missing"))
    store = SQLStore("sqlite://")
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.write(Batch(audit=[AuditRow(0.0, "u", "op")]))


def test_two_databases_never_share_a_blob_directory(tmp_path: Path) -> None:
    blobs = str(tmp_path / "blobs")
    first = SQLStore(_url(tmp_path, "a.db"), blob_dir=blobs, inline_limit=8)
    first.write(Batch(objects={1: _obj(1, b"0123456789")}))
    first.close()
    with pytest.raises(ValueError, match="belongs to another database"):
        SQLStore(_url(tmp_path, "b.db"), blob_dir=blobs)  # its load() would delete a.db's files
    again = SQLStore(_url(tmp_path, "a.db"), blob_dir=blobs)
    assert [bytes(o.payload) for o in again.load().objects] == [b"0123456789"]
    again.close()


def test_in_memory_sqlite_keeps_rows_across_connections() -> None:
    store = SQLStore("sqlite://", inline_limit=8)
    store.write(Batch(objects={5: _obj(5, b"0123456789")}))
    blob_dir = store.blob_dir
    assert [bytes(o.payload) for o in store.load().objects] == [b"0123456789"]
    assert len(_blob_files(store)) == 1
    store.close()
    assert not blob_dir.exists()  # the temporary blob directory goes with the store


def test_load_removes_blob_files_no_row_names(tmp_path: Path) -> None:
    store = SQLStore(_url(tmp_path), inline_limit=8)
    store.write(Batch(objects={7: _obj(7, b"0123456789")}))
    (kept,) = _blob_files(store)
    orphan = store.blob_dir / "9-0123456789abcdef.obj"  # as left by a write killed before commit
    partial = store.blob_dir / "9-0123456789abcdef.mock.tmp"
    foreign = store.blob_dir / "notes.txt"  # not ours: never touched
    for p in (orphan, partial, foreign):
        p.write_bytes(b"x")
    store.load()
    assert _blob_files(store) == {kept, "notes.txt"}
    store.close()


def test_small_write_latency(tmp_path: Path) -> None:
    store = SQLStore(_url(tmp_path))
    times = []
    for i in range(1, 1501):
        batch = Batch(objects={i: _obj(i, bytearray(256))}, audit=[AuditRow(1.0, OWNER, "send")])
        t0 = time.perf_counter()
        store.write(batch)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times[300:])
    print(f"SQLStore.write median (1 small object + 1 audit row, SQLite): {median * 1e3:.3f} ms")
    assert median < 0.002  # typically ~0.08 ms; this catches an fsync or a connect per write
    assert len(store.load().objects) == 1500
    store.close()


# ---------------------------------------------------------------------- through a node
def _node(url: str, **kw: object) -> Node:
    return Node("n", store=SQLStore(url), **kw)  # type: ignore[arg-type]


def test_node_state_survives_close_and_reopen(tmp_path: Path) -> None:
    url = _url(tmp_path)
    node = _node(url, owner_email=OWNER, owner_password=OWNER_PW)
    owner = veil.VirtualWorker(node=node)
    value = torch.arange(12.0).reshape(3, 4)
    x = owner.send(value, description="twelve")
    private, mock = torch.rand(30, 3), torch.zeros(30, 3)
    owner.datasets.create("ds", private=private, mock=mock, bounds=(0, 1))
    owner.create_user(SCI, SCI_PW)
    sci = owner.login(SCI, SCI_PW)
    m = sci.datasets["ds"].private.mean()
    req = m.request("why")
    before = [(e.ts, e.user, e.action) for e in owner.audit(1000)]
    node.close()

    node2 = _node(url)  # no owner arguments: the users come from the database
    owner2 = veil.VirtualWorker(node=node2)
    assert owner2.session.email == OWNER
    assert sorted(u.email for u in owner2.users()) == sorted([OWNER, SCI])
    sci2 = owner2.login(SCI, SCI_PW)

    ds = owner2.datasets["ds"]
    assert torch.equal(ds.mock, mock)
    assert torch.equal(ds.private.get(), private)
    assert torch.equal(owner2.pointer(x.id).get(), value)
    assert next(i for i in owner2.objects() if i.id == x.id).description == "twelve"

    pending = owner2.requests.list("pending")
    assert [(r.id, r.object_id, r.reason) for r in pending] == [(req.id, m.id, "why")]
    with pytest.raises(PermissionDenied):
        sci2.pointer(m.id).get()
    owner2.requests.approve(req.id)
    fetched = veil.PointerTensor(sci2, next(i for i in sci2.objects() if i.id == m.id), owned=False)
    torch.testing.assert_close(fetched.get(), private.mean())

    after = [(e.ts, e.user, e.action) for e in owner2.audit(1000)]
    assert set(before) <= set(after)
    assert {"send", "create_dataset", "request", "login", "approved"} <= {a for _, _, a in after}
    node2.close()


def test_create_user_refuses_an_email_loaded_from_the_store(tmp_path: Path) -> None:
    url = _url(tmp_path)
    node = _node(url, owner_email=OWNER, owner_password=OWNER_PW)
    node.create_user(SCI, SCI_PW)
    node.close()

    node2 = _node(url)
    with pytest.raises(InvalidRequest, match="already exists"):
        node2.create_user(SCI, "another-password-1")
    node2.close()
    node3 = _node(url)
    assert node3.login(SCI, SCI_PW).email == SCI  # the first password still holds
    assert isinstance(node3.store, SQLStore)
    assert [u.email for u in node3.store.load().users].count(SCI) == 1
    node3.close()


def test_a_large_tensor_goes_to_a_blob_file_and_back(tmp_path: Path) -> None:
    url = _url(tmp_path)
    node = _node(url, owner_email=OWNER, owner_password=OWNER_PW)
    owner = veil.VirtualWorker(node=node)
    big = torch.randn(750_000)  # 3 MB
    ptr = owner.send(big)
    store = node.store
    assert isinstance(store, SQLStore)
    files = [f for f in _blob_files(store) if f.startswith(f"{ptr.id}-")]
    assert len(files) == 1 and (store.blob_dir / files[0]).stat().st_size > 3_000_000
    node.close()

    node2 = _node(url)
    owner2 = veil.VirtualWorker(node=node2)
    assert torch.equal(owner2.pointer(ptr.id).get(), big)
    info = next(i for i in owner2.objects() if i.id == ptr.id)
    veil.PointerTensor(owner2, info, owned=True).delete()
    owner2.flush()  # the object is deleted, and its file with it
    assert ptr.id not in {i.id for i in owner2.objects()}
    assert isinstance(node2.store, SQLStore)
    assert not any(f.startswith(f"{ptr.id}-") for f in _blob_files(node2.store))
    node2.close()


def test_a_large_upload_is_written_outside_the_node_lock_and_survives(tmp_path: Path) -> None:
    url = _url(tmp_path)
    node = _node(url, owner_email=OWNER, owner_password=OWNER_PW)
    store = node.store
    assert isinstance(store, SQLStore)
    locked_while_writing = []
    real_write = store._write_blob

    def write_blob(*args: object, **kwargs: object) -> str:
        def probe() -> None:  # could another user's call take the node's lock now?
            free = node._lock.acquire(blocking=False)
            if free:
                node._lock.release()
            locked_while_writing.append(not free)

        other = threading.Thread(target=probe)
        other.start()
        other.join()
        return real_write(*args, **kwargs)  # type: ignore[arg-type]

    store._write_blob = write_blob  # type: ignore[method-assign]
    owner = veil.VirtualWorker(node=node)
    big = torch.randn(2**19)  # 2 MiB

    ptr = owner.send(big)

    assert locked_while_writing == [False]
    node.close()
    again = _node(url)
    assert torch.equal(veil.VirtualWorker(node=again).pointer(ptr.id).get(), big)
    again.close()


def test_a_refused_large_upload_leaves_no_file(tmp_path: Path) -> None:
    node = _node(_url(tmp_path), owner_email=OWNER, owner_password=OWNER_PW)
    owner = veil.VirtualWorker(node=node)
    owner.create_user(SCI, SCI_PW)
    sci = owner.login(SCI, SCI_PW)
    with pytest.raises(PermissionDenied):
        sci.send(torch.randn(2**19), private=True)  # refused before anything is written
    store = node.store
    assert isinstance(store, SQLStore)

    def failing_write(batch: Batch) -> None:
        raise OSError("disk full")

    real = store.write
    store.write = failing_write  # type: ignore[method-assign]
    with pytest.raises(veil.errors.StorageError):
        owner.send(torch.randn(2**19))  # staged, then the commit fails
    store.write = real  # type: ignore[method-assign]
    assert not [f for f in _blob_files(store) if f.endswith(".obj")]
    node.close()


# ---------------------------------------------------------------------- a killed process
_CHILD = textwrap.dedent(
    """
    import json, sys, torch, veil
    from veil.node import Node
    from veil.node.store.sql import SQLStore

    def ack(**kw):
        print(json.dumps(kw), flush=True)

    url, owner_pw, sci, sci_pw = sys.argv[1:5]
    node = Node("k", store=SQLStore(url, inline_limit=4096),
                owner_email="owner@kill.test", owner_password=owner_pw)
    owner = veil.VirtualWorker(node=node)
    owner.datasets.create("ds", private=torch.arange(40.0).reshape(20, 2),
                          mock=torch.zeros(20, 2), bounds=(0, 40))
    owner.create_user(sci, sci_pw)
    sci_w = owner.login(sci, sci_pw)
    m = sci_w.datasets["ds"].private.sum(0)
    req = m.request("column sums")
    ack(ready=True, sums=m.id, request=req.id)
    keep, i = [], 0
    while True:  # keep writing (rows, blob files, deletions) until killed
        released = []
        if i % 3 == 2:
            old = keep.pop(0)
            ack(deleting=old.id)  # deleted by the next call (or not, if killed first)
            old.delete()
            released.append(old.id)
        n = 10 if i % 2 else 2000  # 40 B inline, or 8 kB: a blob file
        p = owner.send(torch.full((n,), float(i)))
        keep.append(p)
        ack(sent=p.id, i=i, n=n, released=released)
        i += 1
    """
)


def test_a_killed_process_keeps_everything_it_acknowledged(tmp_path: Path) -> None:
    url = _url(tmp_path)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, OWNER_PW, SCI, SCI_PW],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    lines = []
    try:
        first = proc.stdout.readline()
        if not first:
            pytest.fail("child failed:\n" + proc.communicate(timeout=30)[1])
        ready = json.loads(first)
        deadline = time.monotonic() + 30
        while len(lines) < 150 and time.monotonic() < deadline:  # kill it mid-stream
            lines.append(proc.stdout.readline())
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait(timeout=30)
    # Read what is left through proc.stdout itself: communicate() would read the raw pipe and
    # drop lines readline() had already buffered (e.g. the last "deleting" acknowledgement).
    rest = proc.stdout.read()
    proc.stdout.close()
    if proc.stderr is not None:
        proc.stderr.close()
    acks = []
    for line in [*lines, *rest.splitlines()]:
        try:
            acks.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut off by the kill was not acknowledged
    sent = {a["sent"]: a for a in acks if "sent" in a}
    released = {oid for a in acks if "sent" in a for oid in a["released"]}
    in_doubt = {a["deleting"] for a in acks if "deleting" in a} - released
    assert len(sent) >= 100 and len(released) >= 30

    node = _node(url)
    owner = veil.VirtualWorker(node=node)
    assert torch.equal(owner.datasets["ds"].private.get(), torch.arange(40.0).reshape(20, 2))
    assert [r.id for r in owner.requests.list("pending")] == [ready["request"]]
    held = {o.id for o in owner.objects()}
    assert ready["sums"] in held
    assert not held & released  # acknowledged deletions stayed deleted
    alive = set(sent) - released - in_doubt
    assert alive <= held  # every acknowledged object is there...
    for oid in alive:  # ...with its value
        a = sent[oid]
        assert torch.equal(owner.pointer(oid).get(), torch.full((a["n"],), float(a["i"])))
    store = node.store
    assert isinstance(store, SQLStore)
    with store._engine.connect() as conn:
        named = set(
            conn.exec_driver_sql("SELECT blob FROM objects WHERE blob IS NOT NULL").scalars()
        )
    assert named and _blob_files(store) == named  # every file is named, and no orphan is left
    node.close()


# ---------------------------------------------------------------------- by key, migrations
def test_load_keys_reads_just_the_rows_named(store: SQLStore) -> None:
    big = bytes(range(256)) * 4  # a blob file
    store.write(
        Batch(
            objects={1: _obj(1, b"one"), 2: _obj(2, big), 3: _obj(3, b"three")},
            users=[
                UserRow(1, OWNER, "owner", "", "h", 0.0),
                UserRow(2, SCI, "admin", "", "h", 0.0),
            ],
            datasets=[
                DatasetRow(
                    "ds",
                    "d",
                    1.0,
                    [
                        ("a", 1, b"m" * 10, ["x"], [(0.0, 1.0)], ""),
                        ("b", 2, b"M" * 1000, [], [], "big mock"),
                    ],
                ),
                DatasetRow("other", "", 2.0, []),
            ],  # fmt: skip
            requests=[
                RequestRow(1, 1, 2, "why", "pending", 3.0),
                RequestRow(2, 3, 2, "?", "denied", 4.0),
            ],
            dp=[DPRow("k1", "budget", {"e": 1.0}), DPRow("k2", "release", {"e": 0.5})],
        )
    )
    files = _blob_files(store)
    snap = store.load_keys(objects=[2, 9], users=[2], datasets=["ds", "nope"], requests=[1],
                           rows=["k2", "k3"])  # fmt: skip
    assert [(o.id, bytes(o.payload)) for o in snap.objects] == [(2, big)]
    assert [u.email for u in snap.users] == [SCI]
    assert [(d.name, [a[0] for a in d.assets]) for d in snap.datasets] == [("ds", ["a", "b"])]
    assert snap.datasets[0].assets[1][2] == b"M" * 1000
    assert [(r.id, r.reason) for r in snap.requests] == [(1, "why")]
    assert [(r.key, r.value) for r in snap.dp] == [("k2", {"e": 0.5})]
    assert store.load_keys() == Snapshot([], [], [], [], [])
    assert _blob_files(store) == files  # reading by key sweeps nothing


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_database_of_an_older_schema_is_migrated(store: SQLStore, version: int) -> None:
    store.write(
        Batch(
            objects={1: _obj(1, b"payload", extra={"alias": 5})},
            users=[UserRow(1, OWNER, "owner", "", "h", 0.0)],
            requests=[RequestRow(1, 1, 1, "why", "pending", 3.0, digest="ab" * 32)],
        )
    )
    url = store.url.render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # take the database back to what that veil wrote
        if version == 1:
            conn.exec_driver_sql("ALTER TABLE objects DROP COLUMN extra")
            conn.exec_driver_sql("ALTER TABLE requests DROP COLUMN digest")
        conn.exec_driver_sql("ALTER TABLE requests DROP COLUMN kind")  # both new in 4
        conn.exec_driver_sql("ALTER TABLE requests DROP COLUMN subject")
        conn.execute(
            sa.text("UPDATE meta SET value = :v WHERE key = 'schema_version'"), {"v": str(version)}
        )
    engine.dispose()

    store = _reopen(store)

    with store._engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()
            == "4"
        )
    snap = store.load()
    assert [(o.id, bytes(o.payload)) for o in snap.objects] == [(1, b"payload")]
    assert snap.objects[0].extra == ({} if version == 1 else {"alias": 5})
    assert snap.requests[0].digest == ("" if version == 1 else "ab" * 32)
    assert (snap.requests[0].kind, snap.requests[0].subject) == ("object", "")
    store.write(Batch(objects={2: _obj(2, b"new", extra={"label": "x"})}))  # the new layout works
    assert {o.id: o.extra for o in store.load().objects}[2] == {"label": "x"}
    store.close()
