"""One federated round on a node: train with the approved plan, then keep or release the update.

:func:`fit` answers ``fl.fit``. It loads the global parameters (public: the scientist sent
them) into the plan's model, runs the approved training plan once on the enrolled dataset
(through :func:`veil.plans.running.run_plan`, so every privacy rule and the approval's run
count apply), and computes the update. What leaves is decided here, by the enrolment's
mode, never by the scientist:

* ``"secagg"``: the vector ``[n * update, n, n * loss]`` enters a SecAgg+ session and
  leaves only masked (:mod:`veil.fl.node.secure`);
* ``"dp"``: the update clipped to the norm and noised here with the full noise, charged to
  the scientist's budget first;
* ``"secagg+dp"``: clipped, noised with ``1 / min_clients`` of the variance (the sum of at
  least ``min_clients`` members carries all of it), then securely aggregated;
* ``"approval"``: a private object; it leaves through a request the owner approves.

Whatever the data, the reply has the same form and the same size, and a failure on
private data is the same failure whatever the values (values are clamped into the
aggregation ring rather than refused).
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch.nn.utils import parameters_to_vector

from veil.dp.accountants.rdp import RDPAccountant
from veil.dp.calibration import zcdp_to_epsilon
from veil.dp.ledger import Release
from veil.errors import InvalidRequest
from veil.fl.node.enrolment import terms_of
from veil.fl.node.state import ADVERTISE_TAG, ROUNDS, FLState, Round
from veil.fl.secagg import messages as wire
from veil.fl.secagg.client import SecAggClient
from veil.fl.secagg.config import SecAggConfig
from veil.node.extension import OpContext
from veil.node.users import Session
from veil.plans.running import run_plan
from veil.serde.fl import Enrol, FitReply, FitRound
from veil.serde.messages import ObjectInfo

__all__ = ["fit", "round_release", "secagg_config"]


def secagg_config(t: Enrol, server_round: int, length: int) -> SecAggConfig:
    """The SecAgg+ parameters of a round (every member derives the same ones)."""
    return SecAggConfig(
        session=f"{t.federation}:{server_round}",
        vector_length=length,
        threshold=t.threshold,
        min_survivors=t.min_clients,
    )


def round_release(t: Enrol) -> Release:
    """What one round costs the scientist's budget under a DP mode: the Gaussian mechanism
    on the (sum of) clipped updates with noise multiplier ``z`` is ``1 / (2 z^2)``-zCDP,
    plus the adaptive-clipping count's ``1 / (2 sigma_b^2)``.

    Example:
        >>> from veil.serde.fl import Enrol
        >>> t = Enrol("f", "h", "d", ["x"], [1], 3, "dp", clip=1.0, noise_multiplier=1.0,
        ...           delta=1e-5)
        >>> round_release(t).rho
        0.5
    """
    rho = 1 / (2 * t.noise_multiplier**2)
    if t.adaptive:
        rho += 1 / (2 * t.count_noise**2)
    return Release(zcdp_to_epsilon(rho, t.delta), t.delta, rho, "gaussian")


def _noise() -> torch.Generator:
    """A generator for DP noise seeded from the OS's CSPRNG (never torch's default seed,
    which a scientist could know, and never a seed from the wire)."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def _clip(update: torch.Tensor, clip: float) -> tuple[torch.Tensor, float]:
    norm = float(update.norm())
    if not math.isfinite(norm):
        return torch.zeros_like(update), 0.0  # a diverged update counts as nothing
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return update * scale, 1.0 if norm <= clip else 0.0


def fit(state: FLState, session: Session, msg: FitRound) -> FitReply:
    """``fl.fit``: one round of training and the update's release (see the module)."""
    node: Any = state.node
    row, frozen = state.enrolment(session, msg.enrolment)
    t = terms_of(frozen)
    done = state.rounds_done(row.id)
    if msg.round != done + 1 or msg.round > t.rounds:
        raise InvalidRequest(
            f"enrolment {row.id} on node {node.name!r} has trained {done} of {t.rounds} "
            f"rounds; the next is {done + 1}, not {msg.round}"
        )
    dp = "dp" in t.mode
    epochs = node.capability_state("plans").program(t.plan).inputs[-1].shape[0]
    if dp:
        node.capability_state("dp").check_budget(
            session.user_id, t.dataset, _sgd_release(t, msg.round, epochs) if t.mode == "local-dp"
            else round_release(t),
        )  # fmt: skip
    recs = [node.record(session, oid) for oid in t.state]
    model = next(r.value for r in recs if isinstance(r.value, torch.nn.Module))
    params = [p for p in model.parameters()]
    size = sum(p.numel() for p in params)
    if len(msg.params) != 4 * size:
        raise InvalidRequest(f"params must be {size} float32 values ({4 * size} bytes)")
    start = torch.from_numpy(np.frombuffer(msg.params, dtype="<f4").astype(np.float32))
    if not bool(torch.isfinite(start).all()):
        raise InvalidRequest("params must be finite")
    with torch.no_grad():
        i = 0
        for p in params:  # in place: the optimizer and the node's records hold these tensors
            p.copy_(start[i : i + p.numel()].view_as(p))
            i += p.numel()
    for r in recs:
        if isinstance(r.value, torch.optim.Optimizer):
            r.value.state.clear()  # each round starts its local optimizer afresh
    inputs = [node.record_by_id(node.asset_id(t.dataset, name)) for name in t.inputs]
    n = int(inputs[0].value.shape[0])
    gen = torch.Generator().manual_seed(int(msg.seed) & (2**63 - 1))
    order = torch.stack([torch.randperm(n, generator=gen) for _ in range(epochs)])
    if t.mode == "local-dp":
        release = _dp_sgd(node, t, msg.round, model, recs, inputs, epochs)
        epsilon = node.capability_state("dp").charge(
            session.user_id, t.dataset, release,
            {"object_id": 0, "what": f"fl {t.federation} round {msg.round} (DP-SGD)"},
        )  # fmt: skip
    else:
        ctx = OpContext(node, session, [*inputs, *recs])
        reply = run_plan(ctx, t.plan, [r.value for r in recs], [*(r.value for r in inputs), order])
        loss = _take_loss(node, session, reply)
    with torch.no_grad():
        update = (parameters_to_vector(params).detach().double() - start.double()).cpu()
    node.put_row(str(row.id), ROUNDS, {"done": msg.round})
    node.write_audit(session, "fl.fit", f"{t.federation} round {msg.round} ({t.mode})")
    if t.mode == "approval":
        vec = torch.cat([update, torch.tensor([loss], dtype=torch.float64)]).float()
        rec = node.store_value(session, vec, private=True, sources=frozenset({t.dataset}),
                               label=f"fl.update:{row.id}:{msg.round}")  # fmt: skip
        return FitReply(examples=n, update_id=rec.id)
    if t.mode == "local-dp":
        data = update.float().numpy().astype("<f4").tobytes()
        return FitReply(examples=n, update=data, epsilon=epsilon)
    epsilon = 0.0
    if dp:
        clip = msg.clip if (t.adaptive and msg.clip > 0) else t.clip
        clipped, under = _clip(update, clip)
        share = 1.0 if t.mode == "dp" else float(t.min_clients)
        sigma = t.noise_multiplier * clip / math.sqrt(share)
        gen = _noise()
        noisy = clipped + torch.randn(clipped.shape, dtype=torch.float64, generator=gen) * sigma
        parts = [noisy]
        if t.adaptive:
            b = under + float(torch.randn((), generator=gen) * t.count_noise / math.sqrt(share))
            parts.append(torch.tensor([b], dtype=torch.float64))
        vec = torch.cat(parts)
        epsilon = node.capability_state("dp").charge(
            session.user_id, t.dataset, round_release(t),
            {"object_id": 0, "l2": clip, "what": f"fl {t.federation} round {msg.round}"},
        )  # fmt: skip
        if t.mode == "dp":
            return FitReply(examples=n, update=vec.float().numpy().astype("<f4").tobytes(),
                            epsilon=epsilon)  # fmt: skip
    else:
        vec = torch.cat([update * n, torch.tensor([float(n), n * loss], dtype=torch.float64)])
    cfg = secagg_config(t, msg.round, vec.numel())
    bound = cfg.encoding.max_abs / max(len(t.members), 1)
    safe = torch.nan_to_num(vec, nan=0.0, posinf=bound, neginf=-bound).clamp(-bound, bound)
    client = SecAggClient(t.client_id, cfg)
    state.rounds = {k: v for k, v in state.rounds.items() if k[0] != row.id}  # older rounds
    state.rounds[(row.id, msg.round)] = Round(client, safe.numpy())
    adv = wire.encode(client.advertise())
    return FitReply(
        examples=n, advertise=adv, signature=state.key.sign(ADVERTISE_TAG + adv), epsilon=epsilon
    )


def _take_loss(node: Any, session: Session, reply: Any) -> float:
    """The plan's loss (its single result), read here and dropped from the caller's objects."""
    if not isinstance(reply, ObjectInfo):
        raise InvalidRequest("a training plan returns its loss, one scalar tensor")
    rec = node.record_by_id(reply.id)
    value = rec.value if rec is not None else None
    node.release(session, [reply.id])
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or rec.error:  # type: ignore[union-attr]
        return float("nan")
    return float(value.detach().reshape(()))


#: A zCDP parameter so large that the ledger's zCDP bound never wins: DP-SGD's rounds are
#: composed by their (epsilon, delta) from the RDP accountant (basic composition).
_NO_ZCDP = 1e12


def _sgd_epsilon(t: Enrol, rounds: int, epochs: int) -> float:
    if rounds <= 0:
        return 0.0
    acc = RDPAccountant()
    acc.step(noise_multiplier=t.noise_multiplier, sample_rate=t.batch_size / t.examples,
             steps=rounds * epochs * _steps_per_epoch(t))  # fmt: skip
    return acc.get_epsilon(t.delta)


def _steps_per_epoch(t: Enrol) -> int:
    """Steps of a Poisson epoch (as :class:`veil.dp.sgd.engine.PoissonLoader` counts them)."""
    return max(1, round(t.examples / t.batch_size))


def _sgd_release(t: Enrol, server_round: int, epochs: int) -> Release:
    """Round ``server_round``'s charge under local DP: the growth of the RDP accountant's ε
    over the enrolment's DP-SGD steps so far; δ is charged once, with the first round, so
    the ledger's sum after ``r`` rounds is the accountant's (ε_r, δ)."""
    eps = _sgd_epsilon(t, server_round, epochs) - _sgd_epsilon(t, server_round - 1, epochs)
    return Release(eps, t.delta if server_round == 1 else 0.0, _NO_ZCDP, "dp-sgd")


def _dp_sgd(node: Any, t: Enrol, server_round: int, model: torch.nn.Module, recs: list[Any],
            inputs: list[Any], epochs: int) -> Release:  # fmt: skip
    """Train ``model`` on the dataset with veil.dp's DP-SGD (the node's own loop, not the
    scientist's code); the per-example clip, noise and sampling rate are the enrolment's."""
    from torch.utils.data import DataLoader, TensorDataset

    from veil.dp.sgd.engine import make_private

    opt = next(r.value for r in recs if isinstance(r.value, torch.optim.Optimizer))
    x, y = (r.value for r in inputs[:2])
    loader = DataLoader(TensorDataset(x, y), batch_size=t.batch_size)
    loss_fn = F.cross_entropy if t.loss == "cross_entropy" else F.mse_loss
    private, popt, batches = make_private(module=model, optimizer=opt, data_loader=loader,
                                          noise_multiplier=t.noise_multiplier,
                                          max_grad_norm=t.clip)  # fmt: skip
    try:
        with torch.enable_grad():
            for _ in range(epochs):  # a Poisson epoch: examples / batch_size steps
                for xb, yb in batches:
                    popt.zero_grad()
                    loss_fn(private(xb), yb).backward()
                    popt.step()
    finally:
        private.remove_hooks()
        for p in model.parameters():  # per-example gradients never stay on the node's model
            p.grad = None
            if hasattr(p, "grad_sample"):
                del p.grad_sample
    return _sgd_release(t, server_round, epochs)
