"""Arguments of the MPC node ops (veil.mpc.node_ops), written as attacks and as misuse.

A data scientist calls every ``mpc.*`` op with whatever it likes. A private object (a
dataset, or anything derived from one) is accepted only where an op declares it
(``PRIVATE_ARGS``: the shares an op computes with, a data owner's own data); anywhere else
the node refuses it *before the op runs*, naming only the argument, so no refusal can print
it or depend on its value. Missing and mistyped arguments get an ``InvalidRequest`` naming
the argument, never an internal error.
"""

from __future__ import annotations

import inspect
import logging
import re
from typing import Any

import pytest
import torch

import veil
from veil.errors import InvalidRequest, PermissionDenied
from veil.mpc import node_ops, seal
from veil.mpc import session as msession
from veil.node import Node

DS_EMAIL, DS_PASSWORD = "ds@lab.org", "ds-password-123"
#: The private dataset: 1,000 distinctive values (271828.25, 271845.25, ...).
SECRET = 271828 + 17 * torch.arange(1000, dtype=torch.float32) + 0.25
SECRET_INTS = {int(v) for v in SECRET.tolist()}

KEY = torch.arange(32, dtype=torch.uint8)
SID = "0123456789abcdef0123456789abcdef"
I64 = torch.zeros(2, dtype=torch.int64)


def _mpc_node_ops() -> list[str]:
    reg = veil.ops.default_registry()
    return sorted(n for n in reg if n.startswith("mpc.") and reg.get(n).effect == "node")


def _is_node(op: str) -> bool:
    return veil.ops.default_registry().get(op).effect == "node"


def _params(op: str) -> list[inspect.Parameter]:
    """The arguments a caller passes (a node op's first parameter is its context)."""
    sig = inspect.signature(veil.ops.default_registry().get(op).fn)
    return list(sig.parameters.values())[1 if _is_node(op) else 0 :]


#: A well-formed value for each argument name (the ops' signatures), so every position can
#: be tried with something else.
def _sample(name: str) -> Any:
    item = {"gid": 1, "kind": "beaver", "params": {"x": [2], "y": [2], "op": "mul", "trunc": 0},
            "inputs": [I64, I64], "delta": I64, "opened": [I64, I64], "rho": [I64],
            "extra": [I64]}  # fmt: skip
    samples: dict[str, Any] = {
        "sid": SID, "index": 0, "n": 2, "owner": 0, "holder": 0, "gid": 1, "tag": "tag-123", "counter": 1,
        "keys": [KEY, KEY], "dealer": KEY, "sender": KEY, "box": KEY, "groups": [["beaver", item["params"]]],
        "items": [item], "finish": [item], "open_": [item], "x": I64, "c": I64, "y": I64,
        "rho": I64, "d": I64, "delta": I64, "shape": [2], "name": "carol", "key": "ab" * 32,
        "url": "",
    }  # fmt: skip
    return samples[name]


@pytest.fixture(scope="module")
def scientist() -> tuple[Any, Any, Any]:
    """alice (a node with a 1,000-value private dataset) as its owner and as a scientist,
    and the scientist's pointer to the dataset."""
    owner = veil.VirtualWorker(node=Node("alice", owner_password="owner-password-1"))
    owner.create_user(DS_EMAIL, DS_PASSWORD)
    owner.datasets.create("secret", private=SECRET, mock=torch.zeros(1000))
    ds = owner.login(DS_EMAIL, DS_PASSWORD)
    return owner, ds, ds.datasets["secret"].private


def _positions(op: str) -> list[tuple[str, ...]]:
    """Every argument position of ``op`` that must be public: each top-level argument, and
    each field of the items of list-of-dict arguments."""
    allowed = veil.ops.default_registry().get(op).facts.private_args or ()
    out: list[tuple[str, ...]] = []
    for p in _params(op):
        value = _sample(p.name)
        paths = [(p.name,)]
        if isinstance(value, list) and value and isinstance(value[0], dict):
            paths += [(p.name, "0", k) for k in value[0]]
            paths += [(p.name, "0", "inputs", "0")] if "inputs" in value[0] else []
        out += [path for path in paths if not _allowed(path, allowed)]
    return out


def _allowed(path: tuple[str, ...], patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        parts = pattern.split(".")
        if len(parts) == len(path) and all(a in ("*", b) for a, b in zip(parts, path, strict=True)):
            return True
    return False


def _args_with(op: str, path: tuple[str, ...], value: Any) -> list[Any]:
    args = []
    for p in _params(op):
        v = _sample(p.name)
        if p.name == path[0]:
            if len(path) == 1:
                v = value
            else:
                v = [dict(v[0])]
                if len(path) == 3:
                    v[0][path[2]] = value
                else:
                    v[0]["inputs"] = [value, value]
        args.append(v)
    return args


def _every_public_position() -> list[tuple[str, tuple[str, ...]]]:
    return [(op, path) for op in _mpc_node_ops() for path in _positions(op)]


def _quotes_the_secret(message: str) -> bool:
    return any(int(tok) in SECRET_INTS for tok in re.findall(r"\d+", message))


@pytest.mark.parametrize(("op", "path"), _every_public_position(),
                         ids=lambda v: v if isinstance(v, str) else ".".join(v))  # fmt: skip
def test_a_private_tensor_in_a_public_argument_is_refused_unread(
    scientist: Any, op: str, path: tuple[str, ...]
) -> None:
    _, ds, secret = scientist
    for private in (secret, (secret * 65536).long(), secret[:32].long().to(torch.uint8)):
        with pytest.raises(PermissionDenied) as info:
            msession.node_call(ds, op, *_args_with(op, path, private))
        message = str(info.value)
        assert ".".join(path) in message and "must be public" in message, message
        assert not _quotes_the_secret(message), message


def test_the_finish_that_returned_a_dataset_is_refused(scientist: Any) -> None:
    """Issue 10: ``mpc.finish`` with the dataset as a group id answered 'no opened group
    tensor([271828.2500, ...])': all 1,000 values."""
    _, ds, secret = scientist
    with pytest.raises(PermissionDenied) as info:
        msession.node_call(ds, "mpc.finish", SID, [{"gid": secret, "opened": []}])
    assert "items.0.gid" in str(info.value) and not _quotes_the_secret(str(info.value))


def test_a_private_dealer_key_is_refused_before_any_other_check(scientist: Any) -> None:
    """Issue 10: ``mpc.join`` took any private 32-byte tensor as a dealer key, and a node
    with pinned dealers answered with its SHA-256 fingerprint: a byte-guessing oracle (two
    dataset values in 16 joins). The key must be public; the refusal comes first and says
    nothing about its value."""
    owner, ds, secret = scientist
    guess = (secret[:32] - 271828).long().to(torch.uint8)  # 32 private bytes
    truth = bytes(((SECRET[:32] - 271828).long() % 256).to(torch.uint8).tolist())
    for args in (
        (SID, 0, [KEY, KEY], guess, KEY),
        ("bad", -1, "not keys", guess, "not a box"),  # other arguments wrong too: still first
    ):
        with pytest.raises(PermissionDenied) as info:
            msession.node_call(ds, "mpc.join", *args)
        message = str(info.value)
        assert "dealer" in message and "must be public" in message
        assert seal.fingerprint(truth) not in message and not _quotes_the_secret(message)


# ----------------------------------------------------------------- missing and mistyped arguments


def _every_op() -> list[str]:
    reg = veil.ops.default_registry()
    return sorted(n for n in reg if n.startswith("mpc."))


def _wrong_value(op: str, p: inspect.Parameter) -> Any:
    """A value of the wrong type for parameter ``p`` of ``op`` (from its annotation)."""
    ann = str(p.annotation)
    if "Tensor" in ann:
        return "a string"
    if ann.startswith("list"):
        return "a string"
    if ann == "bool":
        return "yes"
    if ann.startswith("int"):
        return "seven"
    return 12345  # str


def _call(worker: Any, op: str, args: list[Any]) -> None:
    spec = veil.ops.default_registry().get(op)
    if spec.effect == "node":
        msession.node_call(worker, op, *args)
    else:
        worker.run_op(op, *args)
        worker.flush()


@pytest.mark.parametrize(
    "op", [o for o in _every_op() if any(p.default is inspect.Parameter.empty for p in _params(o))]
)
def test_missing_arguments_are_named(scientist: Any, op: str, caplog: Any) -> None:
    owner, ds, _ = scientist
    required = [p for p in _params(op) if p.default is inspect.Parameter.empty]
    caplog.set_level(logging.ERROR, logger="veil.node")
    for worker in (owner, ds):
        want = rf"{re.escape(op)}: missing (a required )?argument:? '{required[0].name}'"
        with pytest.raises(InvalidRequest, match=want):
            _call(worker, op, [])
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


@pytest.mark.parametrize("op", [o for o in _every_op() if _params(o)])
def test_mistyped_arguments_are_named(scientist: Any, op: str, caplog: Any) -> None:
    owner, ds, _ = scientist
    params = _params(op)
    caplog.set_level(logging.ERROR, logger="veil.node")
    for i, p in enumerate(params):
        assert p.annotation not in (inspect.Parameter.empty, "Any"), (
            f"{op}: annotate argument {p.name!r} with its type"
        )
        args = [_sample(q.name) if _is_node(op) else _pure_sample(op, q) for q in params]
        args[i] = _wrong_value(op, p)
        for worker in (owner, ds):
            want = rf"{re.escape(op)}: argument '{p.name}' must be"
            with pytest.raises(InvalidRequest, match=want):
                _call(worker, op, args)
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


def _pure_sample(op: str, p: inspect.Parameter) -> Any:
    """Well-formed arguments of the local (torch-path) MPC ops."""
    ann = str(p.annotation)
    if "Tensor" in ann:
        return torch.zeros(4, 2, 2, dtype=torch.int64)
    if "bool" in ann:
        return False
    if "str" in ann:
        return "matmul"
    return 1


def test_private_argument_declarations_name_real_arguments() -> None:
    """``PRIVATE_ARGS`` names, for each op that takes a share or a data owner's data, the
    parameter (and the path inside it) that may hold one; a pattern naming no parameter
    would silently refuse the op's shares, one naming too much would let data in."""
    reg = veil.ops.default_registry()
    for op, patterns in node_ops.PRIVATE_ARGS.items():
        names = [p.name for p in _params(op)]
        for pattern in patterns:
            assert pattern.split(".")[0] in names, (op, pattern)
    shares_in = {op for op in _mpc_node_ops() if reg.get(op).facts.private_args}
    assert shares_in == set(node_ops.PRIVATE_ARGS)


def test_mistyped_fields_inside_items_are_named(caplog: Any) -> None:
    """Inside ``items``/``groups``, a field of the wrong type is named by its position."""
    alice, bob, carol = (veil.VirtualWorker(n) for n in ("alice", "bob", "carol"))
    sess = veil.mpc.MPCSession([alice, bob], carol)
    x = torch.tensor([1.0, 2.0]).share(session=sess)
    params = {"x": [2], "y": [2], "op": "mul", "trunc": 0}
    call = msession.node_call
    caplog.set_level(logging.ERROR, logger="veil.node")

    def opening(worker: Any, share: Any, **bad: Any) -> dict[str, Any]:
        ((gid, delta),) = sess.deal([("beaver", params)])
        item = {"gid": gid, "kind": "beaver", "params": params, "inputs": [share, share],
                "delta": delta, **bad}  # fmt: skip
        return item

    for worker, share, field, value in [
        (alice, x.shares[0], "gid", "one"),
        (alice, x.shares[0], "kind", 7),
        (alice, x.shares[0], "kind", "identity"),
        (alice, x.shares[0], "params", [1, 2]),
        (alice, x.shares[0], "inputs", "shares"),
        (bob, x.shares[1], "delta", "a delta"),
        (bob, x.shares[1], "delta", torch.zeros(3, dtype=torch.int64)),
    ]:
        item = opening(worker, share, **{field: value})
        with pytest.raises(InvalidRequest, match=rf"items\.0\.{field}"):
            call(worker, "mpc.open", sess.sid, [item])
    with pytest.raises(InvalidRequest, match=r"items\.0\.params: beaver op must be"):
        call(alice, "mpc.open", sess.sid, [opening(alice, x.shares[0], params={**params, "op": 3})])
    with pytest.raises(InvalidRequest, match=r"items\.0\.inputs\.1: beaver takes an int64 share"):
        call(
            alice,
            "mpc.open",
            sess.sid,
            [opening(alice, x.shares[0], inputs=[x.shares[0], torch.zeros(3, dtype=torch.int64)])],
        )
    item = opening(alice, x.shares[0])
    e = msession.reply_tensor(call(alice, "mpc.open", sess.sid, [item]))
    for field, value in [("gid", [item["gid"]]), ("opened", "e"), ("extra", 3)]:
        fin = {"gid": item["gid"], "opened": [e[:2], e[2:]], field: value}
        with pytest.raises(InvalidRequest, match=rf"items\.0\.{field}"):
            call(alice, "mpc.finish", sess.sid, [fin])
    for groups in ([("beaver",)], [("beaver", "params")], [(3, params)]):
        with pytest.raises(InvalidRequest, match=r"groups\.0"):
            call(carol, "mpc.deal", sess.sid, groups)
    # Empty shapes no tensor can stride (0 elements, so no size limit stops them): refused as
    # requests, not left to fail inside torch as an internal error
    huge = 2**31 - 1
    for op, x, y in [("matmul", [0, huge, huge, huge, 2, 3], [0, huge, huge, huge, 3, 4]),
                     ("mul", [0, huge, huge, huge], [0, huge, huge, huge])]:  # fmt: skip
        with pytest.raises(InvalidRequest, match=r"groups\.0.*over 2\^62 elements"):
            call(carol, "mpc.deal", sess.sid, [("beaver", {**params, "op": op, "x": x, "y": y})])
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


def test_local_truncation_leaves_the_stored_share_as_it_was(two: Any) -> None:
    """Truncation after a public product runs on the parties' stored shares: it makes new
    tensors and never rewrites a share a pointer still names."""
    from veil.mpc.node.local_ops import op_trunc_local

    x = torch.tensor([4 << 16, -(4 << 16)])
    assert op_trunc_local(x, 16, 1).tolist() == [4, -4]
    assert x.tolist() == [4 << 16, -(4 << 16)]
    v = torch.tensor([1.5, -2.25, 3.0])
    sx = v.share(*two.parties, crypto_provider=two.provider)
    for _ in range(3):
        torch.testing.assert_close((sx * 0.5).reconstruct(), v * 0.5, atol=1e-3, rtol=0)
        torch.testing.assert_close(sx.reconstruct(), v, atol=1e-4, rtol=0)
