"""veil.device.Predictor: loads only what has the right hash, predicts like torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import veil
from veil.device import Predictor, sha256_of
from veil.errors import IntegrityError, InvalidRequest


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    path = tmp_path_factory.mktemp("m") / "mlp.onnx"
    veil.export(model, path, torch.randn(1, 6))
    return model, path


def test_predicts_from_a_path_or_bytes_like_torch(model_file: tuple[nn.Module, Path]) -> None:
    model, path = model_file
    x = torch.randn(4, 6)
    expected = model(x).detach().numpy()

    for p in (Predictor(path), Predictor(path.read_bytes()), Predictor(str(path), threads=2)):
        assert np.abs(p.predict(x.numpy()) - expected).max() <= 1e-5
        assert np.abs(p(x.numpy()) - expected).max() <= 1e-5


def test_inputs_are_converted_to_the_models_dtype(model_file: tuple[nn.Module, Path]) -> None:
    model, path = model_file
    x = np.random.default_rng(0).standard_normal((2, 6))  # float64, and as lists

    got64, got_list = Predictor(path).predict(x), Predictor(path).predict(x.tolist())

    expected = model(torch.from_numpy(x).float()).detach().numpy()
    assert got64.dtype == np.float32
    assert np.abs(got64 - expected).max() <= 1e-5 and np.array_equal(got64, got_list)


def test_the_right_hash_loads_and_a_wrong_one_refuses(model_file: tuple[nn.Module, Path]) -> None:
    _, path = model_file
    data = path.read_bytes()
    digest = sha256_of(data)

    assert Predictor(data, sha256=digest).sha256 == digest
    assert Predictor(data, sha256=digest.upper()).sha256 == digest  # hex in either case
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0x01  # one bit of one weight
    with pytest.raises(IntegrityError, match="altered or corrupted"):
        Predictor(bytes(tampered), sha256=digest)


def test_bytes_that_are_not_a_model_are_refused_clearly() -> None:
    with pytest.raises(InvalidRequest, match="onnxruntime cannot load this model"):
        Predictor(b"not an onnx file at all")
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        Predictor(b"", threads=0)


def test_bad_inputs_name_what_the_model_takes(model_file: tuple[nn.Module, Path]) -> None:
    p = Predictor(model_file[1])

    with pytest.raises(InvalidRequest, match=r"input: tensor\(float\) of shape \['batch', 6\]"):
        p.predict(np.zeros((2, 5)))
    with pytest.raises(InvalidRequest, match=r"\['x'\] are not the model's and \['input'\]"):
        p.predict({"x": np.zeros((2, 6))})


def test_repr_and_names(model_file: tuple[nn.Module, Path]) -> None:
    p = Predictor(model_file[1])

    assert (p.input_names, p.output_names) == (["input"], ["output"])
    assert repr(p) == f"Predictor(sha256={p.sha256[:16]!r}, inputs=['input'], outputs=['output'])"
