"""Federation on nodes, attacked by the scientist who runs the aggregation and routes every message.

What a node releases after a round is decided by the enrolment its owner approved, never by
the scientist: these tests drive the protocol by hand to try to get one node's update out.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.errors import InvalidRequest, PermissionDenied, ProtocolError, VeilError
from veil.fl import Federation
from veil.fl.node.rounds import secagg_config
from veil.fl.node.state import ADVERTISE_TAG
from veil.fl.secagg import messages as wire
from veil.fl.secagg.client import SecAggClient
from veil.fl.secagg.server import SecAggServer
from veil.node import capability
from veil.serde.fl import Enrol, EnrolInfo


def _federation(h, mlp, **kw):
    fed = Federation(h.scientist, mlp(0), rounds=kw.pop("rounds", 3), dataset="digits",
                     progress=False, **kw)  # fmt: skip
    return fed, fed.request()


def _params(fed) -> bytes:
    flat = torch.nn.utils.parameters_to_vector(fed.model.parameters()).detach().float()
    return flat.numpy().astype("<f4").tobytes()


def _true_vector(h, i: int, fed, r: int) -> np.ndarray:
    """White box: the vector node ``i`` holds for round ``r`` before masking."""
    st = h.owners[i].node.capability_state("fl")
    return st.rounds[(fed.members[i].enrolment, r)].vector.copy()


def test_no_round_runs_before_the_owner_approves_nor_after_a_denial(hospitals, mlp) -> None:
    h = hospitals([60, 60, 60])
    fed, reqs = _federation(h, mlp)
    with pytest.raises(PermissionDenied, match="pending, not approved"):
        fed.members[0].fit(1, _params(fed), 0, 0.0)
    h.owners[0].requests.deny(reqs[0].id)
    with pytest.raises(PermissionDenied, match="denied"):
        fed.members[0].fit(1, _params(fed), 0, 0.0)
    other = h.owners[1].node
    before = other.object_count()
    with pytest.raises(VeilError):  # another node's enrolment id names nothing of yours here
        fed.members[1].fit(1, _params(fed), 0, 0.0)
    assert other.object_count() == before


def test_rounds_run_once_each_in_order_and_only_as_many_as_approved(hospitals, mlp) -> None:
    h = hospitals([60, 60])
    fed, reqs = _federation(h, mlp, rounds=2)
    h.approve(reqs)
    m = fed.members[0]
    with pytest.raises(InvalidRequest, match="the next is 1, not 2"):
        m.fit(2, _params(fed), 0, 0.0)
    m.fit(1, _params(fed), 0, 0.0)
    with pytest.raises(InvalidRequest, match="the next is 2, not 1"):
        m.fit(1, _params(fed), 0, 0.0)  # a replay would release a second update of round 1
    m.fit(2, _params(fed), 0, 0.0)
    with pytest.raises(InvalidRequest, match="trained 2 of 2"):
        m.fit(3, _params(fed), 0, 0.0)


def test_the_plan_run_directly_under_an_enrolment_gives_only_private_results(
    hospitals, mlp
) -> None:
    h = hospitals([60, 60])
    fed, reqs = _federation(h, mlp)
    h.approve(reqs)
    m, sci = fed.members[0], h.scientist[0]
    ds = sci.datasets["digits"]
    loss = m.plan(ds["x"].private, ds["y"].private, torch.zeros(1, 60, dtype=torch.long))
    with pytest.raises(PermissionDenied):
        loss.get()


def test_a_member_the_owner_did_not_approve_cannot_join_the_aggregate(hospitals, mlp) -> None:
    h = hospitals([60, 60, 60])
    fed, reqs = _federation(h, mlp)
    h.approve(reqs)
    terms = fed._terms
    a, b = fed.members[0], fed.members[1]
    ra, rb = a.fit(1, _params(fed), 0, 0.0), b.fit(1, _params(fed), 0, 0.0)
    length = len(_params(fed)) // 4 + 2
    cfg = secagg_config(terms, 1, length)
    # the scientist's own client, posing as member 2 with a key of its own
    sybil_key = Ed25519PrivateKey.generate()
    sybil = SecAggClient(2, cfg)
    adv = wire.encode(sybil.advertise())
    server = SecAggServer(config=cfg)
    for rep in (ra, rb):
        server.receive(wire.decode(rep.advertise))
    server.receive(wire.decode(adv))
    keys = wire.encode(server.keys())
    sigs = {0: ra.signature, 1: rb.signature, 2: sybil_key.sign(ADVERTISE_TAG + adv)}
    with pytest.raises(ProtocolError, match="client 2 is not a member"):
        a.step(1, "share", keys, sigs)
    # nor may it drop the signature, or pass another member's off as its own
    with pytest.raises(ProtocolError):
        a.step(1, "share", keys, {0: ra.signature, 1: rb.signature, 2: rb.signature})


def _run_to_unmask(fed, h, r: int = 1):
    terms, members = fed._terms, fed.members
    length = len(_params(fed)) // 4 + 2
    server = SecAggServer(config=secagg_config(terms, r, length))
    reps = {m.client_id: m.fit(r, _params(fed), r, 0.0) for m in members}
    for rep in reps.values():
        server.receive(wire.decode(rep.advertise))
    keys = wire.encode(server.keys())
    sigs = {c: rep.signature for c, rep in reps.items()}
    for m in members:
        server.receive(wire.decode(m.step(r, "share", keys, sigs).payload))
    return server, reps


def test_the_scientist_cannot_call_a_member_dropped_to_some_and_alive_to_others(
    hospitals, mlp
) -> None:
    h = hospitals([60, 60, 60])
    fed, reqs = _federation(h, mlp)
    h.approve(reqs)
    server, _ = _run_to_unmask(fed, h)
    deliveries = server.deliveries()
    masked = {}
    for m in fed.members:
        masked[m.client_id] = m.step(1, "mask", wire.encode(deliveries[m.client_id])).payload
        server.receive(wire.decode(masked[m.client_id]))
    honest = server.unmask_request()
    # the lie: member 2 "dropped" (its mask key's shares would unmask its input, which the
    # scientist holds)
    lie = wire.UnmaskRequest(session=honest.session, survivors=[0, 1], dropped=[2])
    lie_b = wire.encode(lie)
    s0 = fed.members[0].step(1, "confirm", lie_b).signature
    s1 = fed.members[1].step(1, "confirm", lie_b).signature
    # only two confirmations of the lie, from members 0 and 1; member 2 confirms the truth
    honest_b = wire.encode(honest)
    s2 = fed.members[2].step(1, "confirm", honest_b).signature
    with pytest.raises(ProtocolError, match="confirmed another survivor list"):
        fed.members[0].step(1, "confirm", honest_b)
    # threshold is 2 of 3: the lie has 2 confirmations, so the scientist can get 0 and 1's
    # shares of 2's mask key... unless SecAgg's client refuses: 0 and 1 each hold a share
    # of 2's self-mask seed too, and reveal only one kind per peer per session.
    got = fed.members[0].step(1, "unmask", lie_b, {0: s0, 1: s1})
    resp = wire.decode(got.payload)
    assert set(resp.sk_shares) == {2} and 2 not in resp.b_shares
    with pytest.raises(ProtocolError, match="not the survivor list this node confirmed"):
        fed.members[0].step(1, "unmask", honest_b, {0: s0, 1: s1, 2: s2})
    with pytest.raises(ProtocolError, match="confirmed the survivor list"):
        fed.members[2].step(1, "unmask", honest_b, {2: s2})  # one confirmation of three


def test_unmasking_needs_threshold_confirmations(hospitals, mlp) -> None:
    h = hospitals([60, 60, 60])
    fed, reqs = _federation(h, mlp)
    h.approve(reqs)
    server, _ = _run_to_unmask(fed, h)
    deliveries = server.deliveries()
    for m in fed.members:
        server.receive(wire.decode(m.step(1, "mask", wire.encode(deliveries[m.client_id])).payload))
    req = wire.encode(server.unmask_request())
    s0 = fed.members[0].step(1, "confirm", req).signature
    forged = Ed25519PrivateKey.generate().sign(b"veil.fl.unmask|" + req)
    with pytest.raises(ProtocolError, match="1 members confirmed"):
        fed.members[0].step(1, "unmask", req, {0: s0, 1: forged})


def test_the_aggregator_holds_no_individual_update_and_recovers_the_exact_sum(
    hospitals, mlp
) -> None:
    h = hospitals([60, 90, 120])
    fed, reqs = _federation(h, mlp)
    h.approve(reqs)
    server, reps = _run_to_unmask(fed, h)
    truth = {i: _true_vector(h, i, fed, 1) for i in range(3)}
    seen: list[bytes] = [rep.advertise for rep in reps.values()]
    deliveries = server.deliveries()
    enc = server.config.encoding
    for m in fed.members:
        payload = m.step(1, "mask", wire.encode(deliveries[m.client_id])).payload
        seen.append(payload)
        server.receive(wire.decode(payload))
        words = np.frombuffer(wire.decode(payload).data, dtype="<u8")
        plain = enc.encode(truth[m.client_id]).astype(np.uint64)
        # masked words look nothing like the encoded update: equal in ~0 positions
        assert (words == plain).mean() < 0.01
    req = wire.encode(server.unmask_request())
    sigs = {m.client_id: m.step(1, "confirm", req).signature for m in fed.members}
    for m in fed.members:
        payload = m.step(1, "unmask", req, sigs).payload
        seen.append(payload)
        server.receive(wire.decode(payload))
    result = server.result()
    expected = sum(enc.encode(v).astype(np.uint64) for v in truth.values())
    assert np.array_equal(result.encoded, expected)  # exact in the ring
    np.testing.assert_allclose(result.total.numpy(), sum(truth.values()), atol=1e-5)
    # no message the scientist saw carries a node's update in the clear
    for v in truth.values():
        needle = v[:8].astype("<f4").tobytes()
        assert not any(needle in blob for blob in seen)


def test_dropouts_up_to_the_threshold_still_sum_exactly_and_past_it_fail_loudly(
    hospitals, mlp
) -> None:
    h = hospitals([60, 60, 60, 60, 60])
    fed, reqs = _federation(h, mlp, min_clients=3, threshold=3)
    h.approve(reqs)
    server, _ = _run_to_unmask(fed, h)
    truth = {i: _true_vector(h, i, fed, 1) for i in range(5)}
    deliveries = server.deliveries()
    alive = fed.members[:4]  # 4 drops after sharing keys (each seed: 3 of 4 holders answer)
    for m in alive:
        server.receive(wire.decode(m.step(1, "mask", wire.encode(deliveries[m.client_id])).payload))
    req = wire.encode(server.unmask_request())
    sigs = {m.client_id: m.step(1, "confirm", req).signature for m in alive}
    for m in alive:
        server.receive(wire.decode(m.step(1, "unmask", req, sigs).payload))
    np.testing.assert_allclose(
        server.result().total.numpy(), sum(truth[i] for i in range(4)), atol=1e-5
    )
    # round 2: three drop: fewer survivors than the owners' min_clients
    server, _ = _run_to_unmask(fed, h, 2)
    deliveries = server.deliveries()
    for m in fed.members[:2]:
        server.receive(wire.decode(m.step(2, "mask", wire.encode(deliveries[m.client_id])).payload))
    with pytest.raises(ProtocolError, match="at least 3 are needed"):
        server.unmask_request()
    forged = wire.encode(wire.UnmaskRequest(session=server.config.session, survivors=[0, 1],
                                            dropped=[2, 3, 4]))  # fmt: skip
    s0 = fed.members[0].step(2, "confirm", forged).signature
    s1 = fed.members[1].step(2, "confirm", forged).signature
    with pytest.raises(ProtocolError, match="2 members confirmed the survivor list, 3 must"):
        fed.members[0].step(2, "unmask", forged, {0: s0, 1: s1, 2: s1})


def test_federation_fit_survives_a_member_that_drops_mid_round(hospitals, mlp) -> None:
    h = hospitals([60, 60, 60, 60])
    fed, reqs = _federation(h, mlp, rounds=2, min_clients=3, threshold=2)
    h.approve(reqs)
    flaky = fed.members[3]
    real = flaky.step

    def drop(r, step, *a, **k):
        if step == "mask":
            raise ConnectionError("hospital3 went offline")
        return real(r, step, *a, **k)

    flaky.step = drop  # type: ignore[method-assign]
    hist = fed.fit()
    assert [(r["clients"], r["dropped"]) for r in hist] == [(3, 1), (3, 1)]


def test_fuzzed_protocol_messages_are_refused_and_the_round_goes_on(hospitals, mlp) -> None:
    h = hospitals([60, 60, 60])
    fed, reqs = _federation(h, mlp)
    h.approve(reqs)
    server, _ = _run_to_unmask(fed, h)
    rng = np.random.default_rng(0)
    m = fed.members[0]
    good = wire.encode(server.deliveries()[0])
    for i in range(40):
        blob = bytearray(good)
        for _ in range(1 + i % 4):
            blob[rng.integers(len(blob))] = rng.integers(256)
        junk = bytes(blob) if i % 2 else rng.bytes(int(rng.integers(0, 200)))
        with pytest.raises(VeilError):
            m.step(1, "mask" if i % 3 else "share", junk)
    with pytest.raises(VeilError):
        m.step(1, "bogus", good)
    assert wire.decode(m.step(1, "mask", good).payload).client_id == 0  # still in the round


def test_approval_mode_keeps_each_update_private_until_the_owner_approves(hospitals, mlp) -> None:
    h = hospitals([60, 60])
    fed, reqs = _federation(h, mlp, secure_aggregation=False, rounds=1)
    h.approve(reqs)
    rep = fed.members[0].fit(1, _params(fed), 0, 0.0)
    from veil.serde.messages import GetObject, RequestAccess

    with pytest.raises(PermissionDenied):
        h.scientist[0].call(GetObject(rep.update_id))
    req = h.scientist[0].call(RequestAccess(rep.update_id, "round 1 update"))
    h.owners[0].requests.approve(req.id)
    got = h.scientist[0].call(GetObject(rep.update_id))
    assert got.value is not None


def test_approval_mode_fit_waits_for_the_owners(hospitals, mlp) -> None:
    import threading

    h = hospitals([60, 60])
    fed, reqs = _federation(h, mlp, secure_aggregation=False, rounds=2, approval_timeout=60)
    h.approve(reqs)
    stop = threading.Event()

    def owners() -> None:
        while not stop.is_set():
            for o in h.owners:
                for r in o.requests.list():
                    if r.status == "pending" and r.kind == "object":
                        o.requests.approve(r.id)
            stop.wait(0.02)

    t = threading.Thread(target=owners)
    t.start()
    try:
        hist = fed.fit()
    finally:
        stop.set()
        t.join()
    assert [r["clients"] for r in hist] == [2, 2] and np.isfinite(hist.last["loss"])


def test_enrolment_terms_are_checked_by_the_node(hospitals, mlp) -> None:
    h = hospitals([60, 60, 60])
    fed, reqs = _federation(h, mlp)
    import msgspec

    t: Enrol = fed._enrol_terms(fed._terms.federation, fed.members[1], fed._terms.members)
    node = h.scientist[1]
    with pytest.raises(InvalidRequest, match="not this node's identity key"):
        capability.call(node, "fl", "enrol", msgspec.structs.replace(t, client_id=0), EnrolInfo)
    bad = msgspec.structs.replace(t, min_clients=1)
    with pytest.raises(InvalidRequest, match="min_clients"):
        capability.call(node, "fl", "enrol", bad, EnrolInfo)
    bad = msgspec.structs.replace(t, threshold=1)
    with pytest.raises(InvalidRequest, match="threshold"):
        capability.call(node, "fl", "enrol", bad, EnrolInfo)
    bad = msgspec.structs.replace(t, mode="everything")
    with pytest.raises(InvalidRequest, match="mode must be"):
        capability.call(node, "fl", "enrol", bad, EnrolInfo)
    bad = msgspec.structs.replace(t, examples=59)
    with pytest.raises(InvalidRequest, match="rows"):
        capability.call(node, "fl", "enrol", bad, EnrolInfo)
    # the owner reads the terms, the members' fingerprints and the plan's code
    from veil.serde.fl import ShowEnrolment

    text = capability.call(h.owners[0], "fl", "show", ShowEnrolment(reqs[0].id), EnrolInfo).text
    assert "secure aggregate of at least 2 members" in text and "(this node)" in text
    assert "F.cross_entropy" in text and "self.optimizer.step()" in text


def test_the_trained_model_left_on_a_node_is_private(hospitals, mlp) -> None:
    h = hospitals([60, 60])
    fed, reqs = _federation(h, mlp, rounds=1)
    h.approve(reqs)
    fed.fit()
    m = fed.members[0]
    model_ptr = m.plan._deployments[id(m.node)].state[0]
    with pytest.raises(PermissionDenied):
        model_ptr.get()  # it holds hospital0's locally trained weights
    with pytest.raises(PermissionDenied):
        m.plan.get()


def test_a_straggler_past_the_deadline_is_dropped_from_the_round(hospitals, mlp) -> None:
    import threading

    h = hospitals([60, 60, 60, 60])
    fed, reqs = _federation(h, mlp, rounds=1, min_clients=3, threshold=2, deadline=20.0)
    h.approve(reqs)
    slow, release = fed.members[3], threading.Event()
    real = slow.fit

    def late(*a, **k):
        release.wait(120)  # answers only after the round is over
        return real(*a, **k)

    slow.fit = late  # type: ignore[method-assign]
    try:
        hist = fed.fit()
    finally:
        release.set()
    assert (hist[0]["clients"], hist[0]["dropped"]) == (3, 1)


def test_what_the_scientist_sees_of_a_round_does_not_depend_on_the_values(mlp) -> None:
    """Noninterference for fl.fit and the SecAgg+ steps: two federations over data that differ
    only in values give replies of the same form and size, with the same failures, until the
    aggregate is unmasked."""
    import veil

    def observe(scale: float) -> list[tuple[str, int]]:
        gen = torch.Generator().manual_seed(7)
        sci = []
        for i in range(3):
            owner = veil.VirtualWorker(f"n{i}")
            x = torch.rand(40, 64, generator=gen) * scale
            y = torch.randint(0, 10, (40,), generator=gen) if scale == 1 else torch.zeros(40).long()
            owner.datasets.create("digits", private={"x": x, "y": y},
                                  mock={"x": torch.zeros(40, 64), "y": torch.zeros(40).long()})  # fmt: skip
            owner.create_user("s@x.org", "scientist-pw-1", role="data_scientist")
            sci.append((owner, owner.login("s@x.org", "scientist-pw-1")))
        fed = Federation([s for _, s in sci], mlp(0), rounds=1, dataset="digits", progress=False)
        for (owner, _), req in zip(sci, fed.request()):
            owner.requests.approve(req.id)
        seen: list[tuple[str, int]] = []
        length = len(_params(fed)) // 4 + 2
        server = SecAggServer(config=secagg_config(fed._terms, 1, length))
        reps = {m.client_id: m.fit(1, _params(fed), 1, 0.0) for m in fed.members}
        for rep in reps.values():
            seen += [
                ("fit", rep.examples),
                ("adv", len(rep.advertise)),
                ("sig", len(rep.signature)),
            ]
            server.receive(wire.decode(rep.advertise))
        keys = wire.encode(server.keys())
        sigs = {c: r.signature for c, r in reps.items()}
        for m in fed.members:
            payload = m.step(1, "share", keys, sigs).payload
            seen.append(("share", len(payload)))
            server.receive(wire.decode(payload))
        deliveries = server.deliveries()
        for m in fed.members:
            payload = m.step(1, "mask", wire.encode(deliveries[m.client_id])).payload
            seen.append(("mask", len(payload)))
        for m in fed.members:  # the failures a hostile scientist can provoke are the same too
            try:
                m.step(1, "mask", wire.encode(deliveries[m.client_id]))
            except VeilError as exc:
                seen.append((type(exc).__name__, 0))
        return seen

    assert observe(1.0) == observe(1e6)  # wildly different values, same observations
