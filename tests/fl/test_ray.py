"""simulate(backend="ray") on a local Ray cluster gives what the in-process backend gives.

The Ray tests skip when Ray is not installed: ``make test-ray`` installs the ``ray`` extra
and runs them (``ray.init(num_cpus=2, include_dashboard=False)``).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from veil.fl import FedAvg, dirichlet_partition, simulate

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason="Ray is not installed (make test-ray: pip install 'veil[ray]')"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _clients(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y)
    parts = dirichlet_partition(y, n, alpha=0.5, seed=3, min_size=3)
    return [(x[p], y[p]) for p in parts]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _run(backend: str, chunk_size: int | None, data: list) -> tuple[nn.Module, list[dict]]:
    model = _model()
    hist = simulate(model, data, strategy=FedAvg(fraction_fit=0.6, min_fit_clients=2, seed=1),
                    rounds=3, local_epochs=2, batch_size=16, lr=0.1, seed=7, dropout=0.2,
                    backend=backend, chunk_size=chunk_size)  # fmt: skip
    return model, hist


@needs_ray
def test_ray_equals_inprocess_exactly_for_the_same_seed_and_chunks(cluster: None) -> None:
    data = _clients(30)
    assert len({len(y) for _, y in data}) > 5  # uneven clients: padded, masked steps
    ray_model, ray_hist = _run("ray", 4, data)
    local_model, local_hist = _run("inprocess", 4, data)
    for a, b in zip(ray_model.parameters(), local_model.parameters()):
        assert torch.equal(a, b)
    keys = ("round", "clients", "dropped", "loss")
    assert [[h[k] for k in keys] for h in ray_hist] == [[h[k] for k in keys] for h in local_hist]
    assert sum(h["dropped"] for h in ray_hist) > 0


@needs_ray
def test_ray_default_chunks_match_one_inprocess_cohort(cluster: None) -> None:
    data = _clients(25)
    ray_model, ray_hist = _run("ray", None, data)  # one chunk per CPU: 2 tasks a round
    local_model, local_hist = _run("inprocess", None, data)  # the whole cohort at once
    for a, b in zip(ray_model.parameters(), local_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(abs(a["loss"] - b["loss"]) < 1e-6 for a, b in zip(ray_hist, local_hist))
    assert all(0 <= h["train_seconds"] <= h["seconds"] for h in ray_hist)


@needs_ray
def test_ray_cuts_cohorts_into_bounded_chunks(cluster: None) -> None:
    from veil.fl.ray_backend import RayCohort
    from veil.fl.simulation import fit_cohort

    data = _clients(10)
    cohort = RayCohort(_model(), data, fit=fit_cohort, chunk_size=3)
    assert cohort.cpus == 2
    assert cohort.chunks(list(range(10))) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert [len(c) for c in RayCohort(_model(), data, fit=fit_cohort).chunks(range(9))] == [5, 4]
    with pytest.raises(ValueError, match="chunk_size"):
        RayCohort(_model(), data, fit=fit_cohort, chunk_size=0)


@needs_ray
def test_ray_reuses_a_chunks_data_while_it_recurs_and_drops_it_after(cluster: None) -> None:
    import torch.nn.functional as F  # noqa: N812

    from veil.fl.ray_backend import RayCohort
    from veil.fl.simulation import fit_cohort

    model = _model()
    cohort = RayCohort(model, _clients(8), fit=fit_cohort, chunk_size=4)
    start = [p.detach() for p in model.parameters()]
    kw = dict(epochs=1, batch_size=8, lr=0.1, loss_fn=F.cross_entropy, seed=0, server_round=1)
    cohort.fit(start, range(8), **kw)
    first = dict(cohort._chunk_refs)
    cohort.fit(start, range(8), **kw)
    assert cohort._chunk_refs == first  # the same objects, not put again
    new, losses = cohort.fit(start, [1, 3, 5], **kw)
    assert list(cohort._chunk_refs) == [(1, 3, 5)] and len(new) == len(losses) == 3


def test_without_ray_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'veil\[ray\]'"):
        simulate(_model(), _clients(4), strategy=FedAvg(), rounds=1, backend="ray")


def test_backend_and_chunk_settings_are_checked_at_the_door() -> None:
    data = _clients(4)
    with pytest.raises(ValueError, match="backend must be"):
        simulate(_model(), data, strategy=FedAvg(), rounds=1, backend="dask")
    with pytest.raises(ValueError, match="chunk_size"):
        simulate(_model(), data, strategy=FedAvg(), rounds=1, chunk_size=0)
    with pytest.raises(ValueError, match="batched=False"):
        simulate(_model(), data, strategy=FedAvg(), rounds=1, backend="ray", batched=False)


def test_inprocess_chunks_give_the_whole_cohorts_numbers() -> None:
    data = _clients(12)
    chunked, chunked_hist = _run("inprocess", 5, data)
    whole, whole_hist = _run("inprocess", None, data)
    for a, b in zip(chunked.parameters(), whole.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(abs(a["loss"] - b["loss"]) < 1e-6 for a, b in zip(chunked_hist, whole_hist))
