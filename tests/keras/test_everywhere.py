"""Keras models across veil: DP-SGD, federated learning, MPC and CKKS inference, ONNX export,
each checked against the same computation done locally in Keras / plain torch."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import DataLoader, TensorDataset

import veil
from veil.dp import RDPAccountant, make_private, validate
from veil.dp.sgd import GradSampleModule
from veil.errors import UnsupportedError
from veil.fl import FedAvg, Federation
from veil.serde.keras_torch import keras_to_torch

#: Sets KERAS_BACKEND=torch before Keras loads; skips this module where Keras is missing.
keras = pytest.importorskip(
    "veil.keras", reason="Keras is not installed: pip install 'veil[keras]'"
).keras
L = keras.layers


def _mlp(seed: int = 1, inputs: int = 6, outputs: int = 3) -> Any:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((inputs,)), L.Dense(8, activation="relu"), L.Dense(outputs)]
    )


def _cnn(seed: int = 2) -> Any:
    """Functional, channels_last: Conv2D (looped per example), LayerNormalization, Dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(3, 3, activation="relu", padding="same")(inputs)
    x = L.LayerNormalization()(x)
    x = L.Flatten()(x)
    x = L.Dense(5, activation="tanh")(x)
    return keras.Model(inputs, L.Dense(3)(x))


def _per_sample_loop(model: Any, x: torch.Tensor, y: torch.Tensor) -> list[list[torch.Tensor]]:
    """Each example's gradient, one backward pass per example (the slow reference)."""
    params = list(model.parameters())
    return [
        list(torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params))
        for i in range(len(y))
    ]


# ------------------------------------------------------------------------------- DP-SGD
@pytest.mark.parametrize("build,shape", [(_mlp, (6,)), (_cnn, (6, 6, 2))], ids=["mlp", "cnn"])
def test_per_sample_gradients_of_a_keras_model_match_a_per_example_loop(build, shape) -> None:
    model, reference = build(), build()
    x, y = torch.randn(5, *shape), torch.randint(0, 3, (5,))
    private = GradSampleModule(model)

    F.cross_entropy(private(x), y).backward()
    got = private.per_sample_gradients()

    expected = _per_sample_loop(reference, x, y)
    assert len(got) == len(list(model.parameters()))
    for j, p in enumerate(model.parameters()):
        for i in range(5):
            torch.testing.assert_close(got[p][i], expected[i][j], atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in model.parameters())  # no non-private batch gradient


def _private(model: Any, n: int = 64, batch: int = 16, sigma: float = 0.0, clip: float = 0.5):
    data = TensorDataset(torch.randn(n, 6), torch.randint(0, 3, (n,)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return make_private(module=model, optimizer=opt, data_loader=DataLoader(data, batch_size=batch),
                        noise_multiplier=sigma, max_grad_norm=clip)  # fmt: skip


def test_without_noise_a_dp_step_is_the_mean_of_the_clipped_per_example_gradients() -> None:
    model, reference = _mlp(), _mlp()
    clip, lr, expected_batch = 0.5, 0.1, 16
    private, opt, _ = _private(model, clip=clip)
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    before = [p.detach().clone() for p in model.parameters()]

    opt.zero_grad()
    F.cross_entropy(private(x), y).backward()
    opt.step()

    per = _per_sample_loop(reference, x, y)
    norms = [math.sqrt(sum(float(g.pow(2).sum()) for g in gs)) for gs in per]
    assert max(norms) > clip  # the bound binds for some examples
    factors = [min(1.0, clip / (nrm + 1e-6)) for nrm in norms]
    for j, (p, p0) in enumerate(zip(model.parameters(), before)):
        total = sum(f * gs[j] for f, gs in zip(factors, per))
        torch.testing.assert_close(
            p.detach(), p0 - lr * total / expected_batch, atol=1e-6, rtol=1e-5
        )
    torch.testing.assert_close(opt.last_norms, torch.tensor(norms), atol=1e-5, rtol=1e-4)


def test_the_noise_has_std_sigma_times_clip_over_the_batch_size() -> None:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6,)), L.Dense(400), L.Dense(3)])
    sigma, clip, batch = 2.0, 0.5, 16
    private, opt, _ = _private(model, sigma=sigma, clip=clip, batch=batch)

    opt.zero_grad()
    (private(torch.randn(8, 6)) * 0.0).sum().backward()  # every per-example gradient is 0
    opt.step()

    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert grads.numel() > 4000
    assert float(grads.std()) == pytest.approx(sigma * clip / batch, rel=0.05)
    assert abs(float(grads.mean())) < 4 * sigma * clip / batch / math.sqrt(grads.numel())


def test_the_accountant_charges_a_keras_model_as_a_torch_model() -> None:
    sigma, steps = 1.1, 3
    k_private, k_opt, loader = _private(_mlp(), sigma=sigma)
    torch_model = keras_to_torch(_mlp()).train().requires_grad_(True)
    t_private, t_opt, _ = _private(torch_model, sigma=sigma)
    for private, opt in ((k_private, k_opt), (t_private, t_opt)):
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(private(torch.randn(16, 6)), torch.randint(0, 3, (16,))).backward()
            opt.step()

    reference = RDPAccountant()
    reference.step(noise_multiplier=sigma, sample_rate=loader.sample_rate, steps=steps)
    assert k_private.get_epsilon(1e-5) == pytest.approx(reference.get_epsilon(1e-5))
    assert k_private.get_epsilon(1e-5) == pytest.approx(t_private.get_epsilon(1e-5))


def test_keras_layers_without_per_example_gradients_are_all_named() -> None:
    model = keras.Sequential(
        [keras.Input((4, 3)), L.BatchNormalization(), L.SimpleRNN(4), L.Dense(2)]
    )
    problems = validate(model)
    assert len(problems) == 2
    assert "BatchNormalization" in problems[0] and "GroupNormalization" in problems[0]
    assert "SimpleRNN" in problems[1] and "Dense" in problems[1]
    with pytest.raises(UnsupportedError, match="SimpleRNN"):
        _private(model)


# -------------------------------------------------------------------- federated learning
def test_a_simulated_federation_of_a_keras_model_is_fedavg_computed_by_hand() -> None:
    gen = torch.Generator().manual_seed(0)
    clients = [(torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen))
               for n in (12, 20, 8)]  # fmt: skip
    model, lr, rounds = _mlp(), 0.3, 2
    fed = Federation(clients, model, strategy=FedAvg(), rounds=rounds, batch_size=32, lr=lr,
                     progress=False)  # fmt: skip

    hist = fed.fit()

    # by hand: one full-batch SGD step per client, then the mean weighted by examples
    glob = [p.detach().clone() for p in _mlp().parameters()]
    local = _mlp()
    params = list(local.parameters())
    for _ in range(rounds):
        updates = []
        for x, y in clients:
            with torch.no_grad():
                for p, v in zip(params, glob):
                    p.copy_(v)
            grads = torch.autograd.grad(F.cross_entropy(local(x), y), params)
            updates.append([p.detach() - lr * g for p, g in zip(params, grads)])
        total = sum(len(y) for _, y in clients)
        glob = [sum(u[j] * len(y) / total for u, (_, y) in zip(updates, clients))
                for j in range(len(params))]  # fmt: skip
    for p, expected in zip(model.parameters(), glob):
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-5)
    assert [row["clients"] for row in hist] == [3, 3]


def test_a_keras_model_federated_over_nodes_is_centralized_gradient_descent() -> None:
    """Secure FedAvg over three nodes with one full-batch step each is gradient descent on
    the union; the Keras model ends with the weights the same model gets trained locally."""
    from tests.fl.conftest import make_hospitals

    h = make_hospitals([60, 40, 100])
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((64,)), L.Dense(16, activation="relu"), L.Dense(10)])
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    fed = Federation(h.scientist, model, strategy=FedAvg(), rounds=2, batch_size=100, lr=0.5,
                     dataset="digits", progress=False)  # fmt: skip
    h.approve(fed.request())
    hist = fed.fit()

    x = torch.cat([p[0] for p in h.parts])
    y = torch.cat([p[1] for p in h.parts])
    params = list(reference.parameters())
    for _ in range(2):
        grads = torch.autograd.grad(F.cross_entropy(reference(x), y), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= 0.5 * g
    for got, want in zip(model.get_weights(), reference.get_weights()):
        torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(want), atol=2e-5,
                                   rtol=1e-4)  # fmt: skip
    assert [r["clients"] for r in hist] == [3, 3]
    with pytest.raises(UnsupportedError, match="LSTM|lstm"):  # what does not translate
        Federation(h.scientist, keras.Sequential([keras.Input((3, 2)), L.LSTM(2)]),
                   dataset="digits", progress=False)  # fmt: skip


# ------------------------------------------------------------------------------- MPC
#: Fixed point with 16 fractional bits: each truncation is exact to 2**-16; a 2-layer MLP
#: on unit-scale inputs stays well inside 1e-3 (about 65 units in the last place).
MPC_ATOL = 1e-3


def _parties() -> tuple[Any, Any, Any]:
    return veil.VirtualWorker("alice"), veil.VirtualWorker("bob"), veil.VirtualWorker("carol")


def test_a_shared_keras_mlp_predicts_what_keras_predicts() -> None:
    model = _mlp()
    alice, bob, carol = _parties()
    x = torch.randn(7, 6)

    shared = model.share(alice, bob, crypto_provider=carol)
    out = shared(x.share(alice, bob, crypto_provider=carol)).reconstruct()

    assert type(shared).__name__ == "SharedSequential"
    torch.testing.assert_close(out, model(x).detach(), atol=MPC_ATOL, rtol=0)


def test_encrypt_model_takes_a_functional_keras_cnn_in_torch_layout() -> None:
    keras.utils.set_random_seed(4)
    inputs = keras.Input((1, 6, 6))
    h = L.Conv2D(2, 3, activation="relu", data_format="channels_first")(inputs)
    h = L.MaxPooling2D(2, data_format="channels_first")(h)
    h = L.Dense(3)(L.Flatten()(h))
    model = keras.Model(inputs, h)
    alice, bob, carol = _parties()
    x = torch.randn(3, 1, 6, 6)

    shared = veil.mpc.encrypt_model(model, [alice, bob], carol)
    out = shared(x.share(alice, bob, crypto_provider=carol)).reconstruct()

    torch.testing.assert_close(out, model(x).detach(), atol=MPC_ATOL, rtol=0)


def test_a_keras_layer_mpc_cannot_run_is_named_with_what_is_supported() -> None:
    model = keras.Sequential([keras.Input((4,)), L.Dense(4), L.LayerNormalization(), L.Dense(2)])
    alice, bob, carol = _parties()
    with pytest.raises(
        UnsupportedError, match=r"layer_normalization.*supported: InputLayer, Dense"
    ):
        model.share(alice, bob, crypto_provider=carol)
    tanh = keras.Sequential([keras.Input((4,)), L.Dense(4, activation="tanh")])
    with pytest.raises(UnsupportedError, match="Tanh cannot be shared"):
        veil.mpc.encrypt_model(tanh, [alice, bob], carol)


# ------------------------------------------------------------------------------- CKKS
needs_tenseal = pytest.mark.skipif(
    importlib.util.find_spec("tenseal") is None,
    reason="TenSEAL is not installed: pip install 'veil[he]'",
)


@needs_tenseal
def test_ckks_inference_of_a_keras_model_matches_its_polynomial_twin() -> None:
    from veil.he import ckks
    from veil.he.ckks_models import levels_needed, predict

    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, activation="sigmoid"), L.Dense(2)])
    x = torch.randn(3, 4)
    ctx = ckks.context(16384, depth=levels_needed(model))

    out = predict(model, ckks.encrypt(x, ctx)).decrypt().float()

    # the same model with the same polynomial in place of the sigmoid, in plaintext: CKKS's
    # own error only (~2**-20 relative)
    dense1, dense2 = model.layers
    coeffs = ckks.sigmoid_coefficients(3)
    h = x @ dense1.kernel.value + dense1.bias.value
    h = sum(c * h**k for k, c in enumerate(coeffs))
    twin = h @ dense2.kernel.value + dense2.bias.value
    torch.testing.assert_close(out, twin.detach(), atol=1e-3, rtol=0)
    # and Keras itself within the approximation's bound (sigmoid error <= 0.11 on [-8, 8])
    bound = 0.11 * float(dense2.kernel.value.detach().abs().sum(0).max()) + 1e-3
    assert float((out - model(x)).abs().max()) <= bound


@needs_tenseal
def test_ckks_refuses_a_keras_relu_and_says_which_activations_work() -> None:
    from veil.he import ckks
    from veil.he.ckks_models import predict

    x = ckks.encrypt(torch.randn(2, 6), ckks.context())
    with pytest.raises(UnsupportedError, match="use sigmoid or linear activations"):
        predict(_mlp(), x)


# ------------------------------------------------------------------------------ export
needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="ONNX export needs onnx, onnxscript and onnxruntime: pip install 'veil[export]'",
)


@needs_onnx
@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_an_exported_keras_model_predicts_on_device_what_keras_predicts(kind, tmp_path) -> None:
    from veil.device import Predictor

    if kind == "sequential":
        keras.utils.set_random_seed(6)
        model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu"),
                                  L.Dropout(0.5), L.Dense(3, activation="softmax")])  # fmt: skip
        shape: tuple[int, ...] = (6,)
    else:
        model, shape = _cnn(), (6, 6, 2)

    path = veil.export(model, tmp_path / "model.onnx", torch.randn(2, *shape))
    x = torch.randn(5, *shape)
    got = Predictor(path).predict(x.numpy())

    np.testing.assert_allclose(np.asarray(got), model(x).detach().numpy(), atol=1e-5)
