"""Training's speed and stability switches on the tiny kit: learning-rate warm-up, gradient clipping, the
8-bit optimizer's checks, TF32, a compiled UNet and DataLoader prefetching."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fixtures import train_on_the_kit as train
from flexip.training import optimization
from flexip.training.config import load_config
from flexip.training.optimization import learning_rate

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_warm_up_rises_linearly_then_holds_and_a_resume_continues_it(tmp_path, tiny_models):
    assert [learning_rate(load_config(CONFIG, ["lr_warmup_steps=4", "learning_rate=0.01"]), s) for s in range(6)] == (
        pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])
    )
    run = tmp_path / "run"
    settings = ["--set", "lr_warmup_steps=4", "--set", "learning_rate=0.01", "--set", "data.num_workers=1",
                "--set", "data.prefetch_factor=1"]  # fmt: skip
    assert train(tiny_models, run, "--max-steps", "3", *settings) == 0
    assert train(tiny_models, run, "--max-steps", "6", "--resume", "latest", *settings) == 0
    lrs = {record["step"]: record["lr"] for record in metrics(run)}
    assert [lrs[s] for s in range(1, 7)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])


def test_gradient_clipping_bounds_the_norm_the_optimizer_sees(tmp_path, tiny_models, monkeypatch):
    norms = []
    build = optimization.build_optimizer

    def recording(adapter, config):
        optimizer = build(adapter, config)

        def measure(*_):
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

        optimizer.register_step_pre_hook(measure)
        return optimizer

    monkeypatch.setattr("flexip.training.trainer.build_optimizer", recording)
    assert train(tiny_models, tmp_path / "free", "--max-steps", "2") == 0
    free = list(norms)
    norms.clear()
    assert train(tiny_models, tmp_path / "clipped", "--max-steps", "2", "--set", f"max_grad_norm={min(free) / 10}") == 0
    assert min(free) > 0 and all(norm <= min(free) / 10 * 1.001 for norm in norms), (free, norms)


def test_a_compiled_unet_trains_to_the_same_losses(tmp_path, tiny_models, monkeypatch):
    compiled = []
    original = torch.nn.Module.compile

    def compile_eagerly(module, *args, **kwargs):  # dynamo's tracing without inductor: seconds, same numbers
        compiled.append(type(module).__name__)
        return original(module, backend="eager")

    assert train(tiny_models, tmp_path / "plain", "--max-steps", "2") == 0
    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    assert train(tiny_models, tmp_path / "compiled", "--max-steps", "2", "--set", "compile_unet=true") == 0
    assert compiled == ["UNet2DConditionModel"]
    plain, fast = ([r["loss"] for r in metrics(tmp_path / name)] for name in ("plain", "compiled"))
    assert fast == pytest.approx(plain, rel=1e-5)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("optimizer=adamw8bit", "adamw8bit .* needs a CUDA GPU"),
        ("optimizer=sgd", "optimizer: 'sgd' is not one of adamw, adamw8bit"),
        ("lr_warmup_steps=-1", "lr_warmup_steps: -1 must be 0"),
        ("max_grad_norm=nan", "max_grad_norm must be a finite number, got 'nan'"),
        ("data.prefetch_factor=0", "prefetch_factor: 0 must be at least 1"),
    ],
)
def test_bad_switches_fail_in_one_line_before_any_model_loads(tmp_path, tiny_models, capsys, setting, message):
    assert train(tiny_models, tmp_path / "run", "--set", setting) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flexip ")]
    assert len(error) == 1
    assert re.search(message, error[0]), error[0]


@pytest.fixture
def tf32_off():
    """TF32 switched off for the test and put back as it was after it.

    Saved and restored by hand: the switches are properties computed by torch's backend modules, which
    `monkeypatch.setattr` cannot undo on every pytest (it may try to delete an attribute that never existed).
    """
    switches = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = [switch.allow_tf32 for switch in switches]
    for switch in switches:
        switch.allow_tf32 = False
    yield
    for switch, value in zip(switches, saved):
        switch.allow_tf32 = value


def test_tf32_is_switched_on_only_when_asked(tmp_path, tiny_models, tf32_off):
    assert train(tiny_models, tmp_path / "off", "--max-steps", "1") == 0
    assert not torch.backends.cuda.matmul.allow_tf32
    assert train(tiny_models, tmp_path / "on", "--max-steps", "1", "--set", "tf32=true") == 0
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
