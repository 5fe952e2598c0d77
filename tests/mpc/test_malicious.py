"""security="malicious": SPDZ2k MACs catch a party that alters its share or its messages."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from veil.mpc.authenticated import AuthenticatedTensor

import veil
from veil.errors import MACCheckFailed
from veil.mpc import node_ops


@pytest.fixture(params=[2, 3], ids=["2-party", "3-party"])
def parties(request: pytest.FixtureRequest) -> tuple[list[Any], Any]:
    names = ["alice", "bob", "dave"][: request.param]
    return [veil.VirtualWorker(n) for n in names], veil.VirtualWorker("carol")


def _share(t: torch.Tensor, p: tuple[list[Any], Any]) -> AuthenticatedTensor:
    return t.share(*p[0], crypto_provider=p[1], security="malicious")  # type: ignore[no-any-return]


def test_malicious_ops_match_plaintext(parties: Any) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(3, 4) * 3, torch.randn(3, 4) * 3
    w = torch.randn(4, 2)
    sx, sy, sw = _share(x, parties), _share(y, parties), _share(w, parties)
    assert isinstance(sx, AuthenticatedTensor) and "AuthenticatedTensor(shape=3x4" in repr(sx)
    assert torch.allclose((sx + sy - 1.5).reconstruct(), x + y - 1.5, atol=1e-4)
    assert torch.allclose((sx * sy).reconstruct(), x * y, atol=2e-3)
    assert torch.allclose((sx * 0.25).reconstruct(), x * 0.25, atol=1e-4)
    assert torch.allclose((sx @ sw).reconstruct(), x @ w, atol=2e-3)
    assert torch.allclose(sx.t().reconstruct(), x.t())
    assert torch.allclose(sx.sum(1).reconstruct(), x.sum(1), atol=1e-4)
    assert torch.equal((sx < sy).reconstruct(), (x < y).float())
    assert torch.equal((sx >= y).reconstruct(), (x >= y).float())
    assert torch.allclose(sx.relu().reconstruct(), x.relu(), atol=1e-4)
    img, k = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    got = _share(img, parties).conv2d(_share(k, parties), padding=1).reconstruct()
    assert torch.allclose(got, torch.nn.functional.conv2d(img, k, padding=1), atol=5e-3)


def _tamper(worker: Any, ptr: Any, word: int, delta: int) -> None:
    """The party's node adds ``delta`` to one word of its stored share (value low = 0,
    value high = 1, MAC low = 2, MAC high = 3)."""
    stored = worker.node._objects[ptr.id].value
    stored[word].view(-1)[0] += delta


@pytest.mark.parametrize("op", ["mul", "matmul", "comparison"])
def test_a_party_that_alters_its_share_is_caught_on_the_next_opening(parties: Any, op: str) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(3, 3), torch.randn(3, 3)
    sx, sy = _share(x, parties), _share(y, parties)
    _tamper(parties[0][-1], sx.shares[-1], 0, 1)  # one unit in the last place of one element
    with pytest.raises(MACCheckFailed):
        if op == "mul":
            _ = sx * sy
        elif op == "matmul":
            _ = sx @ sy
        else:
            _ = sx < sy


def test_the_z_2_64_attack_on_mac_keys_is_caught(parties: Any) -> None:
    # Adding 2^63 to the value and the MAC share passes a Z_2^64 MAC check whenever the key
    # is odd; in Z_2^128 the MAC error would have to be alpha * 2^63, which the party cannot
    # guess.
    sx, sy = _share(torch.ones(4), parties), _share(torch.ones(4), parties)
    w = parties[0][0]
    stored = w.node._objects[sx.shares[0].id].value
    stored[0] += -(2**63)  # value += 2^63 (mod 2^64 in the low word)
    stored[2] += -(2**63)  # MAC += 2^63
    with pytest.raises(MACCheckFailed):
        sx * sy


def test_a_party_that_alters_an_opening_or_a_result_is_caught(
    parties: Any, monkeypatch: Any
) -> None:
    sx, sy = _share(torch.tensor([1.0, 2.0]), parties), _share(torch.tensor([3.0, -1.0]), parties)
    orig = node_ops.op_open
    cheater = parties[0][0].node

    def lying_open(ctx: Any, sid: Any, items: Any) -> Any:
        reply = orig(ctx, sid, items)
        if ctx.node is cheater:  # a malicious node shifts the masked value it sends
            t = veil.serde.tensors.tensor_from_data(reply.value, copy=True)
            t[0] += 7
            return ctx.value(t)
        return reply

    monkeypatch.setitem(veil.ops.default_registry()._by_name, "mpc.open",
                        veil.ops.OpSpec("mpc.open", lying_open, effect="node"))  # fmt: skip
    with pytest.raises(MACCheckFailed):
        sx * sy
    monkeypatch.undo()
    z = sx * sy  # honest again: works
    _tamper(parties[0][0], z.shares[0], 2, 5)  # a corrupted MAC share of a result
    with pytest.raises(MACCheckFailed):
        z.reconstruct()


def test_semi_honest_mode_does_not_notice_the_same_tampering() -> None:
    a, b, c = (veil.VirtualWorker(n) for n in ("alice", "bob", "carol"))
    sx = torch.ones(3).share(a, b, crypto_provider=c)
    a.node._objects[sx.shares[0].id].value[0] += 65536
    assert (sx * 2).reconstruct()[0] == 4.0  # a wrong answer, silently: why malicious mode exists


def test_owner_side_sharing_with_macs(parties: Any) -> None:
    workers, provider = parties
    secret = torch.tensor([[1.5, -2.0], [0.25, 3.0]])
    ptr = secret.send(workers[-1])  # the data lives on the last party's node
    sx = ptr.fix_precision().share(*workers, crypto_provider=provider, security="malicious")
    assert isinstance(sx, AuthenticatedTensor)
    y = _share(torch.tensor([2.0, -1.0]), parties)
    assert torch.allclose(
        (sx * y).relu().reconstruct(), (secret * torch.tensor([2.0, -1.0])).relu(), atol=1e-3
    )
    _tamper(workers[0], sx.shares[0], 2, 1)  # a party alters the MAC of its input share
    with pytest.raises(MACCheckFailed):
        _ = sx * y


def test_a_driver_that_relays_a_different_masked_input_to_one_party_is_caught(
    monkeypatch: Any,
) -> None:
    from veil.mpc import authenticated

    a, b, c = (veil.VirtualWorker(n) for n in ("alice", "bob", "carol"))
    orig = authenticated.node_call

    def lying(worker: Any, op: str, *args: Any) -> Any:
        if op == "mpc.a128.input_share" and worker is b:
            d = args[2].clone()
            d[0].view(-1)[0] += 1 << 16  # bob's copy of d = x - R is one unit off
            args = (*args[:2], d, *args[3:])
        return orig(worker, op, *args)

    monkeypatch.setattr(authenticated, "node_call", lying)
    sx = torch.ones(3).send(a).fix_precision().share(a, b, crypto_provider=c, security="malicious")
    monkeypatch.undo()
    with pytest.raises(MACCheckFailed):
        sx.reconstruct()


# ----------------------------------------------------------------- the rest of the op surface


@pytest.fixture(scope="module")
def two_malicious() -> tuple[list[Any], Any]:
    return [veil.VirtualWorker("alice"), veil.VirtualWorker("bob")], veil.VirtualWorker("carol")


def test_malicious_mode_covers_the_semi_honest_surface() -> None:
    parties = (
        [veil.VirtualWorker(n) for n in ("alice", "bob", "dave")],
        veil.VirtualWorker("carol"),
    )
    torch.manual_seed(2)
    x, y = torch.randn(2, 3) * 3, torch.randn(2, 3) * 3
    sx, sy = _share(x, parties), _share(y, parties)

    def close(got: AuthenticatedTensor, want: torch.Tensor, atol: float = 1e-3) -> None:
        assert isinstance(got, AuthenticatedTensor)
        assert torch.allclose(got.reconstruct(), want, atol=atol), (got.reconstruct(), want)

    close(sx.mean(), x.mean())
    close(sx.mean(1, keepdim=True), x.mean(1, keepdim=True))
    close(sx.sum(), x.sum())
    close(sx / 4, x / 4)
    close(sx.div(torch.tensor([2.0, -8.0, 0.5])), x / torch.tensor([2.0, -8.0, 0.5]))
    close(sx.square(), x * x, 5e-3)
    close(sx.flatten(), x.flatten())
    close(sx.view(3, 2).permute(1, 0), x.view(3, 2).permute(1, 0))
    close(sx.unsqueeze(1).squeeze(1), x)
    close(sx[0:1].expand(2, 3), x[0:1].expand(2, 3))
    close(sx + sy[0], x + y[0])  # broadcasting a row
    close(AuthenticatedTensor.cat([sx, sy], 1), torch.cat([x, y], 1))
    close(AuthenticatedTensor.stack([sx, sy], 0), torch.stack([x, y], 0))
    cond = sx < sy
    close(sx.where(cond, sy), torch.where(x < y, x, y))
    close(sx.where(cond, 0.5), torch.where(x < y, x, torch.tensor(0.5)))
    z = sx.view(-1)[0:3].reshape(1, 3)
    close(AuthenticatedTensor.cat([z, z], 0).eq(sx.view(-1)[0:3]), torch.ones(2, 3))
    close(sx.eq(sy), torch.zeros(2, 3))
    w = torch.randn(3, 4)
    close(sx @ w, x @ w, 2e-3)
    close(w.t() @ sx.t(), w.t() @ x.t(), 2e-3)
    img, k, bias = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), torch.randn(3)
    want = torch.nn.functional.conv2d(img, k, bias, stride=2, padding=1)
    simg = _share(img, parties)
    close(simg.conv2d(k, bias, stride=2, padding=1), want, 5e-3)
    close(simg.conv2d(_share(k, parties), _share(bias, parties), stride=2, padding=1), want, 5e-3)
    assert torch.equal(sx.get().float_precision(), sx.reconstruct())


def test_malicious_max_argmax_and_pooling(two_malicious: Any) -> None:
    parties = two_malicious
    torch.manual_seed(3)
    x = torch.randn(3, 5)
    sx = _share(x, parties)
    F = torch.nn.functional
    v, hot = sx.max(1)
    assert torch.allclose(v.reconstruct(), x.max(1).values, atol=1e-4)
    assert torch.equal(hot.reconstruct(), F.one_hot(x.argmax(1), 5).float())
    assert torch.equal(
        sx.argmax(0, one_hot=True).reconstruct(), F.one_hot(x.argmax(0), 3).t().float()
    )
    assert torch.equal(sx.argmax(1, keepdim=True).reconstruct(), x.argmax(1, keepdim=True).float())
    img = torch.randn(1, 2, 4, 4)
    simg = _share(img, parties)
    assert torch.allclose(simg.max_pool2d(2).reconstruct(), F.max_pool2d(img, 2), atol=1e-4)
    assert torch.allclose(simg.avg_pool2d(2).reconstruct(), F.avg_pool2d(img, 2), atol=1e-4)


def _errors(p: Any, fn: Any, ref: Any, *ranges: tuple[float, float],
            n: int = 100) -> list[tuple[float, float]]:  # fmt: skip
    """(max absolute, max relative) error of ``fn`` on a grid of each range, in one call."""
    grids = [torch.linspace(lo, hi, n, dtype=torch.float64) for lo, hi in ranges]
    got = fn(_share(torch.cat(grids).float(), p)).reconstruct().double().split(n)
    out = []
    for g, y in zip(grids, got, strict=True):
        err = (y - ref(g)).abs()
        out.append((float(err.max()), float((err / ref(g).abs().clamp_min(1e-12)).max())))
    return out


def test_malicious_approximations_keep_the_semi_honest_bounds(two_malicious: Any) -> None:
    # the bounds of tests/mpc/test_approx.py (docs/mpc.md), on coarser grids
    from veil.mpc import approx

    p = two_malicious
    ex = _errors(p, approx.exp, torch.exp, (-4, 4), (-16, 0))
    assert ex[0][1] <= 0.04 and ex[1][0] <= 5e-3
    one = _share(torch.ones(200), p)
    rec = _errors(p, lambda d: one / d, torch.reciprocal, (0.1, 100), (-100, -0.1))
    assert rec[0][1] <= 0.01 and rec[1][1] <= 0.01  # division by a shared value: reciprocal
    assert _errors(p, approx.sqrt, torch.sqrt, (0.1, 100))[0][1] <= 0.01
    lg = _errors(p, approx.log, torch.log, (0.1, 10), (10, 100))
    assert lg[0][0] <= 2e-2 and lg[1][0] <= 5e-2
    assert _errors(p, approx.sigmoid, torch.sigmoid, (-30, 30))[0][0] <= 2e-3
    assert _errors(p, approx.tanh, torch.tanh, (-15, 15))[0][0] <= 4e-3
    torch.manual_seed(0)
    z = torch.rand(4, 10) * 8 - 4
    got = _share(z, p).softmax(1)
    assert isinstance(got, AuthenticatedTensor)
    assert float((got.reconstruct() - z.softmax(1)).abs().max()) <= 1e-2


@pytest.mark.parametrize("op", ["max_pool2d", "exp"])
def test_a_party_that_alters_its_share_before_a_new_op_is_caught(op: str) -> None:
    workers = [veil.VirtualWorker(n) for n in ("alice", "bob", "dave")]
    p = (workers, veil.VirtualWorker("carol"))
    sx = _share(torch.randn(1, 1, 4, 4), p)
    _tamper(workers[1], sx.shares[1], 0, 1)
    with pytest.raises(MACCheckFailed):
        _ = sx.max_pool2d(2) if op == "max_pool2d" else sx.exp()


# ----------------------------------------------------------------- a party that sends a bogus check share


def _cheating_party(monkeypatch: Any, cheater: Any, check: str) -> None:
    """``cheater``'s node shifts every masked value it opens and answers its MAC check
    shares as ``check``: ``"empty"`` (a (2, 0) tensor), ``"missing"`` (no check share at
    all) or ``"wide"`` (zeros shaped like a batch, broadcast against the others)."""
    from veil.serde.messages import Results

    open_spec = veil.ops.default_registry().get("mpc.open")
    finish_spec = veil.ops.default_registry().get("mpc.finish")
    check_spec = veil.ops.default_registry().get("mpc.a128.check")

    def bogus(ctx: Any, like: torch.Tensor) -> Any:
        if check == "empty":
            return ctx.new(torch.zeros(like.shape[0], 0, dtype=torch.int64), private=False)
        return ctx.new(torch.zeros(like.shape[0], 5, dtype=torch.int64), private=False)

    def lying_open(ctx: Any, *args: Any) -> Any:
        reply = open_spec.fn(ctx, *args)
        if ctx.node is cheater:
            t = veil.serde.tensors.tensor_from_data(reply.value, copy=True)
            t[0] += 1 << 20
            return ctx.value(t)
        return reply

    def lying_finish(ctx: Any, sid: Any, items: Any) -> Any:
        reply = finish_spec.fn(ctx, sid, items)
        if ctx.node is not cheater or not isinstance(reply, Results):
            return reply
        out = list(reply.items)
        checks = [i for i, info in enumerate(out) if not info.private]  # the public check shares
        for i in reversed(checks):
            if check == "missing":
                del out[i]
            else:
                out[i] = bogus(ctx, ctx.node._objects[out[i].id].value)
        return Results(out, reply.tuple_type)

    def lying_check(ctx: Any, *args: Any) -> Any:
        reply = check_spec.fn(ctx, *args)
        if ctx.node is not cheater or check == "missing":
            return reply
        return bogus(ctx, ctx.node._objects[reply.id].value)

    reg = veil.ops.default_registry()._by_name
    for name, fn in (("mpc.open", lying_open), ("mpc.finish", lying_finish),
                     ("mpc.a128.check", lying_check)):  # fmt: skip
        spec = reg[name]
        monkeypatch.setitem(reg, name, veil.ops.OpSpec(name, fn, spec.effect, spec.facts))


_WORKLOADS = {
    "mul": lambda x, y: x * y,
    "lt": lambda x, y: x < y,
    "relu": lambda x, y: (x - y).relu(),
}


@pytest.mark.parametrize("check", ["empty", "missing", "wide"])
@pytest.mark.parametrize("op", sorted(_WORKLOADS))
def test_a_party_answering_a_bogus_check_share_is_caught(
    monkeypatch: Any, op: str, check: str
) -> None:
    a, b, c = (veil.VirtualWorker(n) for n in ("alice", "bob", "carol"))
    x, y = torch.tensor([1.0, -2.0, 3.5]), torch.tensor([0.5, 4.0, -1.0])
    sx = x.share(a, b, crypto_provider=c, security="malicious")
    sy = y.share(a, b, crypto_provider=c, security="malicious")
    _cheating_party(monkeypatch, b.node, check)
    with pytest.raises(MACCheckFailed):
        _WORKLOADS[op](sx, sy).reconstruct()


def test_a_bogus_check_share_is_caught_over_http(monkeypatch: Any) -> None:
    import contextlib

    from veil.node import Node
    from veil.node.server import serve_in_thread

    with contextlib.ExitStack() as stack:
        workers = []
        for name in ("alice", "bob", "carol"):
            node = Node(name, owner_email=f"o@{name}.org", owner_password="owner-password-1")
            url = stack.enter_context(serve_in_thread(node, bulk_port=None))
            w = veil.connect(url, email=f"o@{name}.org", password="owner-password-1")
            stack.callback(w.close)
            workers.append((node, w))
        (_, a), (bob, b), (_, c) = workers
        _approve_dealer([a, b], c)
        sx = torch.tensor([1.0, -2.0]).share(a, b, crypto_provider=c, security="malicious")
        sy = torch.tensor([3.0, 0.5]).share(a, b, crypto_provider=c, security="malicious")
        _cheating_party(monkeypatch, bob, "empty")
        for op in sorted(_WORKLOADS):
            with pytest.raises(MACCheckFailed):
                _WORKLOADS[op](sx, sy).reconstruct()


def _approve_dealer(parties: list[Any], provider: Any) -> None:
    """The parties' owners approve ``provider`` as a crypto provider (remote nodes)."""
    approve = getattr(veil.mpc, "dealers", None)
    if approve is not None:
        for p in parties:
            approve(p).add(provider.name, provider)


# ----------------------------------------------------------------- errors the MAC check must not miss


def _add_error(stored: torch.Tensor, half: int, bit: int) -> None:
    """Add 2^bit (mod 2^128) to the value (half 0) or the MAC share (half 1) of element 0."""
    from veil.mpc import r128

    e = torch.zeros_like(stored[0:2])
    e[bit // 64].view(-1)[0] = -(2**63) if bit % 64 == 63 else 1 << (bit % 64)
    stored[2 * half : 2 * half + 2] = r128.add(stored[2 * half : 2 * half + 2], e)


def _sub_error(stored: torch.Tensor, half: int, bit: int) -> None:
    from veil.mpc import r128

    e = torch.zeros_like(stored[0:2])
    e[bit // 64].view(-1)[0] = -(2**63) if bit % 64 == 63 else 1 << (bit % 64)
    stored[2 * half : 2 * half + 2] = r128.sub(stored[2 * half : 2 * half + 2], e)


def test_an_error_in_the_top_bit_of_a_value_and_its_mac_never_reaches_a_result() -> None:
    """The attack of issue 10: +2^127 on a party's value share and MAC share passes the
    check whenever the MAC key is odd; truncations used to move it into the result (about
    2^31 off after five products in most sessions)."""
    x = torch.tensor([1.25, -0.5, 2.0, 0.75])
    y = torch.tensor([65537.0, 70001.0, 59999.0, 66667.0]) / 65536  # odd encodings: the error
    want = x * y**5  # is not multiplied away
    for _ in range(8):
        a, b, c = (veil.VirtualWorker(n) for n in ("alice", "bob", "carol"))
        sx = x.share(a, b, crypto_provider=c, security="malicious")
        sy = y.share(a, b, crypto_provider=c, security="malicious")
        stored = a.node._objects[sx.shares[0].id].value
        _add_error(stored, 0, 127)
        _add_error(stored, 1, 127)
        try:
            z = sx
            for _ in range(5):
                z = z * sy
            got = z.reconstruct()
        except MACCheckFailed:
            continue
        assert torch.allclose(got, want, atol=1e-3), (got, want)


@pytest.fixture(scope="module")
def bits_parties() -> tuple[list[Any], Any]:
    return [veil.VirtualWorker("alice"), veil.VirtualWorker("bob")], veil.VirtualWorker("carol")


@pytest.mark.parametrize("how", ["consistent", "value", "mac"])
def test_an_error_at_any_bit_is_caught_or_cannot_reach_a_result(
    bits_parties: Any, how: str
) -> None:
    """An error 2^j, j = 0..127, on one party's value share and MAC share (``consistent``:
    the same error on both, which passes a MAC check exactly when alpha = 1 mod 2^(128-j)),
    on the value only, or on the MAC only. Every error below bit 64 (the data) is caught;
    an error at bit 64 or above may pass a check (a 128-bit MAC cannot bind those bits
    with 64 bits of security), and then it must never reach a result: truncations,
    comparisons and reconstruction read the low 64 bits only."""
    x = torch.tensor([1.5, -2.25, 0.75])
    y = torch.tensor([65537.0, -70001.0, 59999.0]) / 65536  # odd encodings (see above)
    sx, sy = _share(x, bits_parties), _share(y, bits_parties)
    stored = bits_parties[0][0].node._objects[sx.shares[0].id].value
    halves = {"consistent": (0, 1), "value": (0,), "mac": (1,)}[how]
    passed = []
    for bit in range(128):
        for h in halves:
            _add_error(stored, h, bit)
        try:  # four products: truncations would move an error from bit 127 down to bit 63
            z = sx
            for _ in range(4):
                z = z * sy
            got = z.reconstruct()
        except MACCheckFailed:
            continue
        finally:
            for h in halves:
                _sub_error(stored, h, bit)
        passed.append(bit)
        assert torch.allclose(got, x * y**4, atol=1e-3), (bit, got)
    assert all(bit >= 64 for bit in passed), f"errors at bits {passed} passed the MAC checks"
