"""Fuzzing the wire decoder and the node's frame handler: bad bytes get a clean error, always."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import veil
from veil.errors import MessageTooLarge, SerdeError, VersionMismatch
from veil.node import Node, Session
from veil.serde import codec, tensor_from_data, tensor_to_data
from veil.serde.messages import (
    AssetSpec,
    Call,
    CreateDataset,
    DatasetInfo,
    DictArg,
    Done,
    DTypeArg,
    EllipsisArg,
    ErrorReply,
    GetInfo,
    GetObject,
    ListArg,
    ModuleSpec,
    NodeInfo,
    ObjectInfo,
    Ref,
    RequestAccess,
    Results,
    RunOp,
    SendObject,
    SliceArg,
    TensorData,
    TupleArg,
    Value,
)
from veil.serde.modules import module_to_spec
from veil.serde.tensors import DTYPES
from veil.version import WIRE_VERSION

FUZZ = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    """Tiny ops gain nothing from intra-op threads, and two test workers on two cores
    oversubscribe OpenMP (10x slower loops); restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


HEADER = struct.pack(">2sH", b"VL", WIRE_VERSION)


def _td(t: torch.Tensor) -> TensorData:
    return tensor_to_data(t)


VALID_CALLS = [
    Call(GetInfo()),
    Call(GetObject(12345), release=[1, 2, 3]),
    Call(SendObject(_td(torch.arange(6, dtype=torch.float32).reshape(2, 3)), "x", False)),
    Call(SendObject(_td(torch.tensor([True, False])))),
    Call(
        RunOp(
            "torch.add",
            [Ref(7), _td(torch.ones(2, dtype=torch.int64)), 1.5, None, "s"],
            {"alpha": 2},
        )
    ),
    Call(
        RunOp(
            "Tensor.__getitem__",
            [Ref(9), TupleArg([SliceArg(None, 2, 1), EllipsisArg(), ListArg([0, 1])])],
        )
    ),
    Call(RunOp("Tensor.to", [Ref(1), DTypeArg("float64")], {"d": DictArg({"k": True})})),
    Call(RequestAccess(5, "why")),
    Call(SendObject(module_to_spec(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())))),
    Call(
        CreateDataset(
            "ds", "d", [AssetSpec("a", _td(torch.ones(2, 2)), _td(torch.zeros(2, 2)), ["u", "v"])]
        )
    ),
]
VALID_REPLIES = [
    ObjectInfo(1, "tensor", [2, 3], "float32", False, True, "o@x", ["ds"]),
    Results([ObjectInfo(1, "tensor", [2], "float32"), None], "max"),
    Done(),
    Value(_td(torch.randn(3, 2))),
    ErrorReply("permission_denied", "no"),
    NodeInfo("n", "0.1.0", WIRE_VERSION, "u", "owner", 3, 100),
    DatasetInfo("ds", "", []),
]
CALL_FRAMES = [bytes(codec.encode(c)) for c in VALID_CALLS]
REPLY_FRAMES = [bytes(codec.encode(r)) for r in VALID_REPLIES]
ALL_FRAMES = CALL_FRAMES + REPLY_FRAMES


def _decodes_or_serde_error(frame: bytes | bytearray) -> None:
    """Both decoders either return a message of the right type or raise SerdeError."""
    try:
        call = codec.decode_call(frame)
    except SerdeError:
        pass
    else:
        assert isinstance(call, Call)
    try:
        reply = codec.decode_reply(frame)
    except SerdeError:
        pass
    else:
        assert type(reply).__module__ == "veil.serde.messages"


# ------------------------------------------------------------------ the decoder alone


def test_valid_frames_round_trip() -> None:
    for msg, frame in zip(VALID_CALLS, CALL_FRAMES):
        assert codec.decode_call(frame) == msg
    for msg, frame in zip(VALID_REPLIES, REPLY_FRAMES):
        assert codec.decode_reply(frame) == msg


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    _decodes_or_serde_error(data)
    _decodes_or_serde_error(HEADER + data)


def test_every_prefix_of_valid_frames() -> None:
    for frame in ALL_FRAMES:
        for n in range(len(frame)):
            _decodes_or_serde_error(frame[:n])
            if n < len(frame) - 1:
                with pytest.raises(SerdeError):  # a truncated message is never silently accepted
                    codec.decode_call(frame[:n]) if frame in CALL_FRAMES else codec.decode_reply(frame[:n])  # fmt: skip


@FUZZ
@given(
    which=st.integers(0, len(ALL_FRAMES) - 1),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=8),
)
def test_bit_flipped_frames(which: int, flips: list[tuple[int, int]]) -> None:
    frame = bytearray(ALL_FRAMES[which])
    for pos, bit in flips:
        frame[pos % len(frame)] ^= 1 << bit
    _decodes_or_serde_error(frame)


@FUZZ
@given(
    which=st.integers(0, len(ALL_FRAMES) - 1),
    at=st.integers(0, 10**6),
    cut=st.integers(0, 16),
    insert=st.binary(max_size=16),
)
def test_spliced_frames(which: int, at: int, cut: int, insert: bytes) -> None:
    frame = ALL_FRAMES[which]
    at %= len(frame) + 1
    _decodes_or_serde_error(frame[:at] + insert + frame[at + cut :])


HUGE_HEADERS = [
    b"\xdd\xff\xff\xff\xff",  # array32 of 4G items
    b"\xdf\xff\xff\xff\xff",  # map32
    b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GB
    b"\xdb\xff\xff\xff\xff",  # str32
    b"\xc9\xff\xff\xff\xff\x01",  # ext32
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",  # uint64 max
    b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",  # int64 min
]


def test_huge_declared_lengths_are_rejected_without_allocating() -> None:
    td = b"\x84\xa4type\xa6tensor\xa5dtype\xa7float32\xa5shape\x91\xce\x7f\xff\xff\xff\xa4data"
    send = b"\x81\xa3msg\x82\xa4type\xa4send\xa5value" + td
    for h in HUGE_HEADERS:
        for body in (h, b"\x81\xa3msg" + h, send + h, send + b"\xc6\x7f\xff\xff\xff" + h):
            _decodes_or_serde_error(HEADER + body)
            with pytest.raises(SerdeError):
                codec.decode_call(HEADER + body)


def _nested(depth: int) -> bytes:
    level = b"\x82\xa4type\xa4list\xa5items\x91"  # {"type": "list", "items": [ ... ]}
    op = b"\x83\xa4type\xa2op\xa2op\xa9torch.add\xa4args\x91"
    return HEADER + b"\x81\xa3msg" + op + level * depth + b"\x01"


@pytest.mark.parametrize("depth", [1, 31, 200, 5_000, 1_000_000])
def test_deep_nesting(depth: int) -> None:
    _decodes_or_serde_error(_nested(depth))
    _decodes_or_serde_error(HEADER + b"\x91" * depth + b"\xc0")
    _decodes_or_serde_error(HEADER + b"\x81\xa1a" * depth + b"\xc0")


@FUZZ
@given(
    dtype=st.sampled_from(sorted(DTYPES)),
    shape=st.lists(st.integers(0, 4), max_size=4),
    seed=st.integers(0, 2**16),
)
def test_tensor_data_round_trips(dtype: str, shape: list[int], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=gen) * 100).to(DTYPES[dtype])

    frame = codec.encode(Value(tensor_to_data(t)))
    back = tensor_from_data(codec.decode_reply(frame).value)  # type: ignore[union-attr]

    assert back.dtype == t.dtype and back.shape == t.shape
    assert torch.equal(back.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))


def test_version_mismatch_names_both_versions() -> None:
    frame = codec.encode(Call(GetInfo()), version=WIRE_VERSION + 1)

    assert codec.peek_version(frame) == WIRE_VERSION + 1
    for decode in (codec.decode_call, codec.decode_reply):
        with pytest.raises(VersionMismatch) as err:
            decode(frame)
        assert f"v{WIRE_VERSION + 1}" in str(err.value) and f"v{WIRE_VERSION}" in str(err.value)
        assert isinstance(err.value, SerdeError)


def test_size_limit_is_checked_before_decoding() -> None:
    frame = CALL_FRAMES[2]
    with pytest.raises(MessageTooLarge, match="limit"):
        codec.decode_call(frame, max_bytes=len(frame) - 1)
    assert codec.decode_call(frame, max_bytes=len(frame)) == VALID_CALLS[2]


def test_not_a_veil_frame() -> None:
    for frame in (b"", b"V", b"VL\x00", b"GET / HTTP/1.1\r\n\r\n", b"\x80\x04\x95", b"{}"):
        with pytest.raises(SerdeError):
            codec.decode_call(frame)


def test_encoding_unencodable_values_is_a_serde_error() -> None:
    with pytest.raises(SerdeError):
        codec.encode(ErrorReply("x", "\udc80"))
    with pytest.raises(SerdeError):
        codec.encode(object())


# ------------------------------------------------------------------ the node's frame handler


@pytest.fixture
def served() -> Iterator[tuple[Node, Session, veil.VirtualWorker]]:
    node = Node("fuzz", owner_email="o@fuzz.test", owner_password="owner-password")
    info = node.create_user("ds@fuzz.test", "scientist-password")
    owner = veil.VirtualWorker(node=node)
    owner.datasets.create("d", private=torch.randn(4, 3), mock=torch.zeros(4, 3))
    yield node, Session(info.id, info.email, info.role), owner


def _answers(node: Node, session: Session, frame: bytes | bytearray) -> Any:
    out = node.handle_frame(session, frame)
    assert isinstance(out, bytes | bytearray)
    return codec.decode_reply(out)  # the node's answer always decodes


def _still_serving(node: Node, session: Session) -> None:
    info = _answers(node, session, codec.encode(Call(SendObject(_td(torch.tensor([1.0, 2.0]))))))
    assert isinstance(info, ObjectInfo)
    op = _answers(node, session, codec.encode(Call(RunOp("torch.mul", [Ref(info.id), 3]))))
    got = _answers(node, session, codec.encode(Call(GetObject(op.id), release=[info.id])))
    assert torch.equal(tensor_from_data(got.value), torch.tensor([3.0, 6.0]))
    _answers(node, session, codec.encode(Call(GetInfo(), release=[op.id])))


@FUZZ
@given(data=st.binary(max_size=400), with_header=st.booleans())
def test_node_answers_random_bytes_with_an_error(
    served: Any, data: bytes, with_header: bool
) -> None:
    node, session, _ = served
    frame = HEADER + data if with_header else data

    reply = _answers(node, session, frame)

    try:
        codec.decode_call(frame)
    except SerdeError:
        assert isinstance(reply, ErrorReply)
    _still_serving(node, session)


@FUZZ
@given(
    which=st.integers(0, len(CALL_FRAMES) - 1),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=6),
    cut=st.integers(0, 10**6),
)
def test_node_answers_mutated_frames(served: Any, which: int, flips: Any, cut: int) -> None:
    node, session, owner = served
    frame = bytearray(CALL_FRAMES[which])
    for pos, bit in flips:
        frame[pos % len(frame)] ^= 1 << bit
    if cut % 3 == 0:
        frame = frame[: cut % len(frame)]

    reply = _answers(node, session, frame)

    assert type(reply).__module__ == "veil.serde.messages"
    _still_serving(node, session)
    assert owner.datasets["d"].private.shape == torch.Size([4, 3])


FIELDS = ["type", "msg", "op", "args", "kwargs", "id", "ids", "value", "dtype", "shape", "data",
          "items", "release", "start", "stop", "step", "name", "cls", "config", "children",
          "state", "requires_grad", "reason", "private", "description", "assets", "limit"]  # fmt: skip
TAGS = ["op", "send", "get", "delete", "clear", "list_objects", "request", "list_requests",
        "decide", "info", "audit", "tensor", "ref", "slice", "ellipsis", "dtype", "list", "tuple",
        "dict", "module", "create_dataset", "get_dataset", "list_datasets", "create_user",
        "list_users"]  # fmt: skip
OPS = ["torch.add", "Tensor.sum", "torch.cat", "Tensor.__getitem__", "Tensor.__setitem__",
       "Tensor.add_", "Tensor.view", "Tensor.to", "F.relu", "os.system"]  # fmt: skip
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.sampled_from(TAGS + OPS + sorted(DTYPES)),
    st.text(max_size=8),
    st.binary(max_size=16),
)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS), children, max_size=5),
    ),
    max_leaves=25,
)


@st.composite
def plausible_calls(draw: Any) -> bytes:
    """msgpack maps shaped like veil messages: real field names, tags and op names."""
    msg = draw(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=5))
    msg["type"] = draw(st.sampled_from(TAGS))
    if draw(st.booleans()):
        msg["op"] = draw(st.sampled_from(OPS))
    body: dict[str, Any] = {"msg": msg}
    if draw(st.booleans()):
        body["release"] = draw(st.lists(st.integers(0, 2**63), max_size=3))
    return HEADER + msgspec.msgpack.encode(body)


@FUZZ
@given(frame=plausible_calls())
def test_node_answers_structured_garbage(served: Any, frame: bytes) -> None:
    node, session, owner = served

    reply = _answers(node, session, frame)

    assert type(reply).__module__ == "veil.serde.messages"
    _still_serving(node, session)
    assert owner.datasets["d"].private.shape == torch.Size([4, 3])


def test_node_answers_deep_nesting_and_huge_lengths(served: Any) -> None:
    node, session, _ = served
    frames = [_nested(d) for d in (33, 200, 100_000)] + [HEADER + h for h in HUGE_HEADERS]
    frames.append(HEADER + b"\x81\xa3msg\x82\xa4type\xa2op\xa2op\xa3\xed\xa0\x80")  # not UTF-8
    for frame in frames:
        reply = _answers(node, session, frame)
        assert isinstance(reply, ErrorReply) and reply.code in ("serde_error", "message_too_large")
    _still_serving(node, session)


def test_node_answers_version_mismatch(served: Any) -> None:
    node, session, _ = served
    frame = codec.encode(Call(GetInfo()), version=WIRE_VERSION + 1)

    reply = _answers(node, session, frame)

    assert isinstance(reply, ErrorReply) and reply.code == "version_mismatch"
    assert f"v{WIRE_VERSION + 1}" in reply.message and f"v{WIRE_VERSION}" in reply.message
    _still_serving(node, session)


def test_node_answers_an_unencodable_module_spec(served: Any) -> None:
    node, session, _ = served
    spec = ModuleSpec(cls="Linear", config={"in_features": -5, "out_features": 2})

    reply = _answers(node, session, codec.encode(Call(SendObject(spec))))

    assert isinstance(reply, ErrorReply)
    _still_serving(node, session)
