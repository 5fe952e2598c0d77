"""veil.export: ONNX (and ExecuTorch) files whose outputs agree with torch's."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import veil
from veil.device import Predictor
from veil.errors import UnsupportedError

ATOL = 1e-5


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet(nn.Module):
    """LeNet-5 on 28x28: conv2d, max_pool2d, relu, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x)
        return self.head(h[-1])


#: name -> (model factory, the shape of one example without its batch dimension)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (MLP, (784,)),
    "lenet": (LeNet, (1, 28, 28)),
    "lstm": (LSTMClassifier, (12, 16)),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    """Each model exported once, from a batch-1 example (the dynamic batch must survive it)."""
    torch.manual_seed(0)
    out = {}
    for name, (make, shape) in MODELS.items():
        model = make().eval()
        path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
        veil.export(model, path, torch.randn(1, *shape))
        out[name] = (model, path)
    return out


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_outputs_agree_with_torch(
    exported: dict[str, tuple[nn.Module, Path]], name: str, batch: int
) -> None:
    model, path = exported[name]
    x = torch.randn(batch, *MODELS[name][1])
    with torch.inference_mode():
        expected = model(x).numpy()

    got = Predictor(path).predict(x.numpy())

    err = float(np.abs(got - expected).max())
    print(f"{name} batch {batch}: max abs error {err:.2e}")  # shown with -s
    assert got.shape == expected.shape and got.dtype == np.float32
    assert err <= ATOL


def test_onnx_names_its_inputs_and_outputs_and_the_batch_dimension(
    exported: dict[str, tuple[nn.Module, Path]],
) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported["lenet"][1]), providers=["CPUExecutionProvider"])

    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input", "output")
    assert inp.shape == ["batch", 1, 28, 28] and out.shape == ["batch", 10]


def test_several_inputs_and_outputs_with_given_names(tmp_path: Path) -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(5, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            s = self.a(x) + self.b(y)
            return s, s.softmax(-1)

    model = Two().eval()
    path = veil.export(model, tmp_path / "two.onnx", (torch.randn(2, 3), torch.randn(2, 5)),
                       input_names=["vitals", "labs"], output_names=["logits", "probs"])  # fmt: skip
    p = Predictor(path)
    x, y = torch.randn(4, 3), torch.randn(4, 5)

    by_name = p.predict({"vitals": x.numpy(), "labs": y.numpy()})
    in_order = p.predict([x.numpy(), y.numpy()])

    assert (p.input_names, p.output_names) == (["vitals", "labs"], ["logits", "probs"])
    for got in (by_name, in_order):
        for g, e in zip(got, model(x, y)):
            assert np.abs(g - e.detach().numpy()).max() <= ATOL


def test_a_fixed_batch_when_asked(tmp_path: Path) -> None:
    path = veil.export(nn.Linear(4, 2), tmp_path / "fixed.onnx", torch.randn(3, 4),
                       dynamic_batch=False)  # fmt: skip
    p = Predictor(path)

    assert p.predict(np.zeros((3, 4))).shape == (3, 2)
    with pytest.raises(veil.errors.InvalidRequest, match="refused these inputs"):
        p.predict(np.zeros((7, 4)))


def test_a_plan_is_exported_through_its_module(tmp_path: Path) -> None:
    """Plans (veil.plans) give ``to_module()``; export takes anything that does."""
    inner = nn.Sequential(nn.Linear(4, 4), nn.Tanh()).eval()

    class FakePlan:
        def to_module(self) -> nn.Module:
            return inner

    path = veil.export(FakePlan(), tmp_path / "plan.onnx", torch.randn(1, 4))
    x = torch.randn(5, 4)

    assert np.abs(Predictor(path).predict(x.numpy()) - inner(x).detach().numpy()).max() <= ATOL


@pytest.mark.parametrize("kind", ["function", "module class"])
def test_a_veil_plan_exports_and_agrees_with_running_it(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    if kind == "function":

        @veil.plan
        def plan(x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(net(x) * 2 + 1, dim=-1)

    else:

        @veil.plan
        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.softmax(self.body(x) * 2 + 1, dim=-1)

        plan = Net()
    plan.build(torch.randn(1, 6))

    path = veil.export(plan, tmp_path / "plan.onnx", torch.randn(1, 6))

    for batch in (1, 7):
        x = torch.randn(batch, 6)
        expected = plan.run(x).detach().numpy()
        assert np.abs(Predictor(path).predict(x.numpy()) - expected).max() <= ATOL


def test_export_uses_eval_mode_and_restores_the_models_mode(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.BatchNorm1d(8)).train()
    model(torch.randn(16, 8))  # running statistics
    path = veil.export(model, tmp_path / "m.onnx", torch.randn(1, 8))
    x = torch.randn(6, 8)

    got = Predictor(path).predict(x.numpy())

    assert model.training
    assert np.abs(got - model.eval()(x).detach().numpy()).max() <= ATOL


def test_what_export_refuses_is_said_clearly(tmp_path: Path) -> None:
    lin = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="ending .onnx or .pte"):
        veil.export(lin, tmp_path / "m.tflite", torch.zeros(1, 2))
    with pytest.raises(TypeError, match="torch.nn.Module or a plan"):
        veil.export(lambda x: x, tmp_path / "m.onnx", torch.zeros(1, 2))
    with pytest.raises(TypeError, match="example_inputs must be a tensor"):
        veil.export(lin, tmp_path / "m.onnx", [[0.0, 1.0]])
    with pytest.raises(ValueError, match="common first dimension"):
        veil.export(
            nn.Bilinear(2, 3, 1), tmp_path / "m.onnx", (torch.zeros(1, 2), torch.zeros(2, 3))
        )
    with pytest.raises(ValueError, match="give 1 distinct names"):
        veil.export(lin, tmp_path / "m.onnx", torch.zeros(1, 2), output_names=["a", "b"])


def test_a_model_the_exporter_cannot_translate_raises_unsupported(tmp_path: Path) -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # Python control flow on a value: no graph can hold it
                return x * 2
            return x - 1

    with pytest.raises(UnsupportedError, match="torch.onnx could not export Branchy") as err:
        veil.export(Branchy(), tmp_path / "m.onnx", torch.randn(2, 3), dynamic_batch=False)
    assert "\x1b" not in str(err.value)


def test_veil_export_stays_the_function_after_the_module_is_imported() -> None:
    import importlib

    importlib.import_module("veil.export")
    import veil.models  # noqa: F401  (imports veil.export's module too)

    assert callable(veil.export) and veil.export.__name__ == "export"


# ------------------------------------------------------------------ ExecuTorch (.pte)
@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_pte_outputs_agree_with_torch(tmp_path: Path, name: str) -> None:
    pytest.importorskip("executorch", reason="ExecuTorch is not installed: pip install 'veil[pte]'")
    with warnings.catch_warnings():  # ExecuTorch's import warns of its own internals
        warnings.simplefilter("ignore")
        from executorch.runtime import Runtime

    torch.manual_seed(1)
    make, shape = MODELS[name]
    model = make().eval()
    path = veil.export(model, tmp_path / f"{name}.pte", torch.randn(1, *shape))
    method = Runtime.get().load_program(path).load_method("forward")

    for batch in (1, 7):
        x = torch.randn(batch, *shape)
        got = method.execute([x])[0]
        with torch.inference_mode():
            err = float((got - model(x)).abs().max())
        print(f"{name}.pte batch {batch}: max abs error {err:.2e}")
        assert err <= ATOL
