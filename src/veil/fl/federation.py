"""``Federation``: train one model on data spread over many nodes; only aggregates leave.

The clients are node servers (``veil.connect``) or VirtualWorkers holding a dataset, or
simulated clients (``(x, y)`` tensors in this process, trained as one batched cohort, or
on Ray with ``backend="ray"``). On nodes, every round is one approved training plan run per
node (one message), and each update leaves its node only as its owner approved when the
node was enrolled: inside a secure aggregate (SecAgg+ with at least ``min_clients``
members), clipped and noised on the node (central DP, its ε charged to each node's budget
ledger), both, or as a private object the owner approves a request for each round.

Example:
    >>> import torch, veil
    >>> from veil.fl import Federation, FedAvg
    >>> data = [(torch.randn(30, 4), torch.randint(0, 2, (30,))) for _ in range(4)]
    >>> fed = Federation(data, torch.nn.Linear(4, 2), strategy=FedAvg(), rounds=2,
    ...                  progress=False)
    >>> [row["round"] for row in fed.fit()]
    [1, 2]
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.nn.utils import parameters_to_vector

from veil.dp.calibration import zcdp_to_epsilon
from veil.errors import BudgetExceeded, UnsupportedError, VeilError
from veil.fl.history import History
from veil.fl.members import Member, _ok, _parallel, identity, secure_round, training_plan
from veil.fl.simulation import simulate
from veil.fl.strategies import DPFedAvg, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum, Strategy
from veil.fl.strategies.base import FitRes
from veil.serde.fl import Enrol
from veil.serde.fl import Member as MemberKey
from veil.serde.keras_torch import is_keras, keras_to_torch, torch_to_keras

__all__ = ["CentralDP", "Federation", "LocalDP"]

Loss = Callable[..., torch.Tensor]


@dataclass(frozen=True, slots=True)
class CentralDP:
    """DP-FedAvg (McMahan et al. 2018) enforced by the nodes: each update is clipped to
    ``clip`` (L2) on its node and Gaussian noise of ``noise_multiplier * clip`` is added
    there (split over the ``min_clients`` members of a secure aggregate, whose sum then
    carries it all). With ``adaptive=True`` the clip follows the ``target_quantile`` of the
    update norms (Andrew et al. 2021), from a count noised with ``count_noise``. Each round
    costs ``1 / (2 z^2)``-zCDP (+ the count's), charged to each node's ledger at ``delta``.

    Example:
        >>> CentralDP(noise_multiplier=1.0, clip=1.0).epsilon(rounds=10)  # doctest: +ELLIPSIS
        19.04...
    """

    noise_multiplier: float
    clip: float
    delta: float = 1e-5
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise: float = 0.0

    def epsilon(self, rounds: int) -> float:
        """ε after ``rounds`` rounds at ``delta``."""
        rho = 1 / (2 * self.noise_multiplier**2)
        if self.adaptive:
            rho += 1 / (2 * max(self.count_noise, 1e-12) ** 2)
        return zcdp_to_epsilon(rounds * rho, self.delta)


@dataclass(frozen=True, slots=True)
class LocalDP:
    """DP-SGD on each node (Abadi et al. 2016): the node trains the model itself with
    ``veil.dp.make_private`` (per-example gradients clipped to ``max_grad_norm``, Gaussian
    noise of ``noise_multiplier`` times that, Poisson batches of ``batch_size`` on average)
    instead of running the scientist's plan, so each update is DP for each record of the
    node's data; its ε (RDP accountant, at ``delta``) is charged to the node's ledger.

    Example:
        >>> LocalDP(noise_multiplier=1.0, max_grad_norm=1.0).delta
        1e-05
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5


def _loss_fn(loss: str | Loss) -> Loss:
    if callable(loss):
        return loss
    table: dict[str, Loss] = {"cross_entropy": F.cross_entropy, "mse": F.mse_loss}
    if loss not in table:
        raise ValueError(f"loss must be a function or one of {sorted(table)}, got {loss!r}")
    return table[loss]


class Federation:
    """Train ``model`` over ``nodes`` with ``strategy`` (see the module's docstring).

    Args:
        nodes: node servers / VirtualWorkers (each holding ``dataset``), or simulated
            clients as ``(x, y)`` pairs.
        model: the global model (it holds the last round's parameters after :meth:`fit`).
        strategy: FedAvg (default), FedOpt...; robust ones (median, trimmed mean, Krum) need
            individual updates, so not secure aggregation.
        rounds / local_epochs / batch_size: the training schedule.
        optimizer: ``params -> torch.optim.Optimizer`` for local training (default SGD at
            ``lr``; simulated clients always use SGD at ``lr``).
        loss: ``"cross_entropy"``, ``"mse"`` or a torch functional loss.
        dataset / inputs: on nodes, the dataset and its two assets (features, labels).
        secure_aggregation: updates leave nodes only inside a SecAgg+ sum.
        dp: a :class:`CentralDP` or :class:`LocalDP`, enforced by the nodes (local DP
            releases each node's update on its own: it is used without secure aggregation).
        min_clients: the fewest members a secure aggregate may sum (default: all but a
            third, at least 2). ``threshold``: SecAgg's share threshold (default: a majority).
        approval_timeout: without secure aggregation or DP, each round's update leaves a
            node when its owner approves a request for it: wait this long for that.
        evaluate: ``model -> metrics`` run on the global model after each round (e.g.
            accuracy on your own test set); or ``test_data=(x, y)`` for loss and accuracy.
        backend: ``"inprocess"`` or ``"ray"`` (simulated clients only).
        deadline: on nodes, seconds each step of a round waits for the members; those that
            have not answered by then are stragglers, dropped from the round (secure
            aggregation recovers the others' sum while enough remain).
        progress: show a progress bar.
    """

    def __init__(self, nodes: Sequence[Any], model: nn.Module, *, strategy: Strategy | None = None,
                 rounds: int = 10, local_epochs: int = 1, batch_size: int = 32,
                 optimizer: Callable[[Any], torch.optim.Optimizer] | None = None, lr: float = 0.1,
                 loss: str | Loss = "cross_entropy", dataset: str = "",
                 inputs: Sequence[str] = ("x", "y"), secure_aggregation: bool = True,
                 dp: CentralDP | LocalDP | None = None, min_clients: int | None = None,
                 threshold: int | None = None, approval_timeout: float = 300.0,
                 evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                 test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                 backend: str = "inprocess", seed: int | None = None, progress: bool = True,
                 deadline: float | None = None,
                 reason: str = "federated training") -> None:  # fmt: skip
        if rounds < 1 or local_epochs < 1 or batch_size < 1:
            raise ValueError("rounds, local_epochs and batch_size must be >= 1")
        if not nodes:
            raise ValueError("a federation needs clients: nodes, or (x, y) pairs to simulate")
        self.nodes = list(nodes)
        self.simulated = all(isinstance(n, tuple | list) and len(n) == 2 for n in self.nodes)
        #: A Keras model federated over nodes: its layers train as the torch layers they
        #: compute (keras_to_torch), whose weights go back into it after every fit.
        self.keras_model = model if is_keras(model) and not self.simulated else None
        if self.keras_model is not None:
            model = keras_to_torch(model).train()
            for p in model.parameters():
                p.requires_grad_(True)
        self.model = model
        self.strategy = strategy if strategy is not None else FedAvg(min_fit_clients=1,
                                                                     min_available_clients=1)  # fmt: skip
        self.rounds, self.local_epochs, self.batch_size = int(rounds), local_epochs, batch_size
        self.optimizer = optimizer or (lambda ps: torch.optim.SGD(ps, lr=lr))
        self.lr, self.loss_fn, self.loss_name = lr, _loss_fn(loss), loss
        self.dataset, self.inputs = dataset, list(inputs)
        self.secure_aggregation, self.dp = bool(secure_aggregation), dp
        self.approval_timeout, self.reason = approval_timeout, reason
        self.evaluate_fn, self.test_data = evaluate, test_data
        self.backend, self.progress, self.deadline = backend, progress, deadline
        self.seed = secrets.randbits(62) if seed is None else int(seed)
        if backend not in ("inprocess", "ray"):
            raise ValueError(f"backend must be 'inprocess' or 'ray', got {backend!r}")
        if not self.simulated:
            self._check_node_settings(min_clients, threshold)
        self.history = History()
        self.members: list[Member] = []
        self._round = 0
        self._clip = dp.clip if isinstance(dp, CentralDP) else 0.0
        self._terms: Enrol | None = None

    # ----------------------------------------------------------------------------- set-up
    def _check_node_settings(self, min_clients: int | None, threshold: int | None) -> None:
        if self.backend == "ray":
            raise UnsupportedError("backend='ray' runs simulated clients; nodes train themselves")
        if not self.dataset:
            raise ValueError("on nodes, name the dataset to train on: dataset='...'")
        if isinstance(self.strategy, DPFedAvg):
            raise UnsupportedError(
                "DPFedAvg adds noise on the server, which nodes cannot trust: pass "
                "dp=veil.fl.CentralDP(...) and the nodes clip and noise their own updates"
            )
        if isinstance(self.strategy, FedProx):
            raise UnsupportedError(
                "FedProx's proximal term is not in the node training plan yet; use FedAvg or "
                "FedOpt on nodes (FedProx runs in simulation)"
            )
        robust = (FedMedian, FedTrimmedAvg, Krum)
        if self.secure_aggregation and isinstance(self.strategy, robust):
            raise UnsupportedError(
                f"{type(self.strategy).__name__} needs each client's update; secure "
                "aggregation reveals only their sum (use secure_aggregation=False with dp=...)"
            )
        m = len(self.nodes)
        if self.secure_aggregation and m < 2:
            raise ValueError("secure aggregation needs at least 2 nodes")
        self.min_clients = min_clients or max(2, m - m // 3)
        self.threshold = threshold or (m - 1) // 2 + 1
        if isinstance(self.dp, LocalDP):
            if self.secure_aggregation:
                raise ValueError(
                    "LocalDP makes each node's update DP on its own: pass "
                    "secure_aggregation=False with it (or CentralDP with secure aggregation)"
                )
            if not isinstance(self.loss_name, str):
                raise ValueError("LocalDP trains with a named loss: 'cross_entropy' or 'mse'")
        elif self.dp is not None and self.dp.adaptive and self.dp.count_noise <= 0:
            raise ValueError("adaptive clipping needs count_noise > 0 (e.g. len(nodes) / 20)")

    @property
    def mode(self) -> str:
        """How updates leave the nodes: ``secagg``, ``dp``, ``secagg+dp`` or ``approval``."""
        if isinstance(self.dp, LocalDP):
            return "local-dp"
        if self.secure_aggregation:
            return "secagg+dp" if self.dp is not None else "secagg"
        return "dp" if self.dp is not None else "approval"

    def request(self) -> list[Any]:
        """Enrol every node: send each its training plan (traced for its dataset's size) and
        the model, and ask its owner to approve the federation's terms once for all rounds.
        Returns the requests (``status`` tells which owners have approved)."""
        if self.simulated:
            return []
        if self.members:
            return [m.request for m in self.members]
        ids = [identity(node) for node in self.nodes]
        federation = secrets.token_hex(8)
        keys = [MemberKey(i.node, i.key) for i in ids]
        for cid, (node, ident) in enumerate(zip(self.nodes, ids)):
            ds = node.datasets[self.dataset]
            mocks = [ds[name].mock for name in self.inputs]
            opt = self.optimizer(self.model.parameters())
            plan = training_plan(self.model, opt, self.loss_fn, mocks, epochs=self.local_epochs,
                                 batch_size=self.batch_size)  # fmt: skip
            plan.send(node)
            dep = plan._deployments[id(node)]
            m = Member(node, ident.node, ident.key, int(mocks[0].shape[0]), plan,
                       [int(getattr(p, "id", 0)) for p in dep.state], client_id=cid)  # fmt: skip
            terms = self._enrol_terms(federation, m, keys)
            m.enrol(terms, self.reason)
            self.members.append(m)
        self._terms = self._enrol_terms(federation, self.members[0], keys)
        return [m.request for m in self.members]

    def _enrol_terms(self, federation: str, m: Member, keys: list[MemberKey]) -> Enrol:
        assert m.plan is not None
        dp, secure = self.dp, self.secure_aggregation
        local = isinstance(dp, LocalDP)
        central = dp if isinstance(dp, CentralDP) else None
        return Enrol(
            federation, m.plan.hash, self.dataset, self.inputs, m.state_ids, self.rounds,
            self.mode, keys if secure else [], m.client_id,
            self.min_clients if secure else 2, self.threshold if secure else 0,
            dp.max_grad_norm if isinstance(dp, LocalDP) else (central.clip if central else 0.0),
            dp.noise_multiplier if dp else 0.0, dp.delta if dp else 0.0,
            bool(central and central.adaptive), central.count_noise if central else 0.0,
            m.examples, self.batch_size if local else 0,
            self.loss_name if local and isinstance(self.loss_name, str) else "",
        )  # fmt: skip

    # ------------------------------------------------------------------------------ rounds
    def fit(self, rounds: int | None = None) -> History:
        """Train for ``rounds`` more rounds (default: the federation's ``rounds``) and return
        the history. Stops early, saying whose, when a node refuses a round because a
        privacy budget would be exceeded (``history.stopped``)."""
        todo = self.rounds if rounds is None else int(rounds)
        if self.simulated:
            return self._simulate(todo)
        self.request()
        bar, task = self._bar(todo)
        try:
            for _ in range(todo):
                try:
                    row = self._node_round(self._round + 1)
                except BudgetExceeded as exc:
                    self.history.stopped = str(exc)
                    break
                self._round += 1
                self.history.rows.append(row)
                if bar is not None:
                    bar.update(task, advance=1, description=self._describe(row))
        finally:
            if bar is not None:
                bar.stop()
            if self.keras_model is not None:
                torch_to_keras(self.model, self.keras_model)
        return self.history

    def _bar(self, total: int) -> tuple[Any, Any]:
        if not self.progress:
            return None, None
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        return bar, bar.add_task("federated rounds", total=total)

    @staticmethod
    def _describe(row: dict[str, Any]) -> str:
        parts = [f"round {row['round']}"]
        for k in ("loss", "accuracy", "epsilon"):
            if k in row and math.isfinite(row[k]):
                parts.append(f"{k} {row[k]:.3f}")
        return ", ".join(parts)

    def _simulate(self, todo: int) -> History:
        kw: dict[str, Any] = {}
        if self.backend == "ray":
            kw["backend"] = "ray"
        rows = simulate(
            self.model, [(x, y) for x, y in self.nodes], strategy=self.strategy, rounds=todo,
            local_epochs=self.local_epochs, batch_size=self.batch_size, lr=self.lr,
            loss_fn=self.loss_fn, seed=self.seed + self._round, evaluate=self._evaluate_model,
            progress=self.progress, **kw,
        )  # fmt: skip
        for row in rows:
            row["round"] += self._round
        self._round += todo
        self.history.rows += rows
        return self.history

    def _evaluate_model(self, model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.test_data is not None:
            x, y = self.test_data
            with torch.no_grad():
                logits = model(x)
                out["test_loss"] = float(self.loss_fn(logits, y))
                if logits.dim() == 2 and y.dim() == 1 and not y.dtype.is_floating_point:
                    out["accuracy"] = float((logits.argmax(1) == y).float().mean())
        if self.evaluate_fn is not None:
            out.update(self.evaluate_fn(model))
        return out

    def _node_round(self, r: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        assert self._terms is not None
        params = [p.detach().clone() for p in self.model.parameters()]
        flat = parameters_to_vector(params).detach().float()
        chosen = [m for m, _ in self.strategy.configure_fit(r, params, self.members)]
        blob = flat.numpy().astype("<f4").tobytes()
        seed = (self.seed * 1_000_003 + r) & (2**62 - 1)
        got = _parallel(chosen, lambda m: m.fit(r, blob, seed + m.client_id, self._clip),
                        self.deadline)  # fmt: skip
        replies = _ok(got)
        failures = [v for v in got.values() if isinstance(v, BaseException)]
        for exc in failures:
            if isinstance(exc, BudgetExceeded):
                raise exc
        if not replies:
            raise VeilError(f"round {r}: every node failed: {failures[0]}")
        moved = len(blob) * len(chosen)
        row: dict[str, Any] = {"round": r, "clients": len(replies), "dropped": len(failures)}
        size = flat.numel()
        if "secagg" in self.mode:
            adaptive = bool(isinstance(self.dp, CentralDP) and self.dp.adaptive)
            length = size + (2 if self.mode == "secagg" else int(adaptive))
            total, survivors, more = secure_round(self.members, self._terms, r, replies, length,
                                                  self.deadline)  # fmt: skip
            moved += more
            row["clients"], row["dropped"] = len(survivors), len(chosen) - len(survivors)
            if self.mode == "secagg":
                count = max(total[size], 1.0)
                mean = torch.from_numpy(total[:size] / count)
                row["loss"] = float(total[size + 1] / count)
                results = [FitRes(self._add(params, mean), int(round(count)))]
            else:
                mean = torch.from_numpy(total[:size] / len(survivors))
                results = [FitRes(self._add(params, mean), len(survivors))]
                self._adapt(total[size:], len(survivors))
        elif self.mode in ("dp", "local-dp"):
            updates = [np.frombuffer(rep.update, dtype="<f4") for rep in replies.values()]
            moved += sum(len(rep.update) for rep in replies.values())
            results = []
            for u in updates:
                delta = torch.from_numpy(u[:size].astype(np.float64))
                results.append(FitRes(self._add(params, delta), 1))
            if isinstance(self.dp, CentralDP) and self.dp.adaptive:
                self._adapt(np.array([sum(float(u[size]) for u in updates)]), len(updates))
        else:
            results, losses = [], []
            for cid, rep in replies.items():
                m = self.members[cid]
                vec = m.approved_update(rep.update_id, f"{self.reason}: round {r} update",
                                        self.approval_timeout).double()  # fmt: skip
                moved += vec.numel() * 4
                results.append(FitRes(self._add(params, vec[:size]), rep.examples))
                losses.append((float(vec[size]), rep.examples))
            total_n = sum(n for _, n in losses)
            row["loss"] = sum(v * n for v, n in losses) / max(total_n, 1)
        new = self.strategy.aggregate_fit(r, results, failures)
        with torch.no_grad():
            for p, v in zip(self.model.parameters(), new):
                p.copy_(v)
        if self.dp is not None:
            row["epsilon"] = max((rep.epsilon for rep in replies.values()), default=0.0)
        if isinstance(self.dp, CentralDP):
            row["epsilon_accountant"] = self.dp.epsilon(r)
        row.update(self._evaluate_model(self.model))
        row["bytes"] = float(moved)
        row["seconds"] = time.perf_counter() - t0
        return row

    @staticmethod
    def _add(params: list[torch.Tensor], delta: torch.Tensor) -> list[torch.Tensor]:
        out, i = [], 0
        for p in params:
            n = p.numel()
            out.append((p.double() + delta[i : i + n].reshape(p.shape)).to(p.dtype))
            i += n
        return out

    def _adapt(self, count: Any, members: int) -> None:
        """Adaptive clipping: move the clip towards the target quantile of update norms."""
        if not isinstance(self.dp, CentralDP) or not self.dp.adaptive or not len(count):
            return
        frac = float(count[0]) / max(members, 1)
        self._clip *= math.exp(-self.dp.clip_lr * (frac - self.dp.target_quantile))

    # ---------------------------------------------------------------------------- results
    def plot(self, path: str | None = None) -> Any:
        """The history's curves (matplotlib; saved to ``path`` if given)."""
        return self.history.plot(path)

    def __repr__(self) -> str:
        kind = "simulated clients" if self.simulated else "nodes"
        return (
            f"Federation({len(self.nodes)} {kind}, {type(self.strategy).__name__}, "
            f"{self._round}/{self.rounds} rounds, mode={self.mode})"
        )
