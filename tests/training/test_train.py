"""Training runs in-process on the tiny models: learning, frozen weights, run folder, signals, exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fixtures import losses
from flexip.cli import main
from flexip.contact_sheet import MARGIN
from flexip.models.adapter import FlexIPAdapter
from flexip.tiny import ModelSet
from flexip.training.components import load_frozen_models
from flexip.training.config import load_config
from flexip.training.trainer import _build_adapter, train

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml"



def tiny_overrides(models, manifest: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "model.tiny_models=''", f"model.base={models.base}", f"model.image_encoder={models.image_encoder}",
        f"model.dino_encoder={models.dinov2}", f"data.manifest={manifest}", f"output_dir={output_dir}",
        "log_with=[]", "log_every=1", "validation.every=1000", "learning_rate=1e-2", *extra,
    ]  # fmt: skip


def test_tiny_config_from_a_fresh_directory_overfits_the_kits_pairs_and_touches_only_the_adapter(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(
        tmp_path
    )  # tiny.yaml's relative paths: the models and data are written here on first use
    overrides = [
        "max_steps=40", "log_every=1", "checkpoint_every=20", "validation.every=40", "learning_rate=1e-2",
    ]  # fmt: skip
    config = load_config(CONFIG, overrides)
    result = train(config, resume="latest")  # no checkpoint yet: a job script may always pass it
    run = tmp_path / "runs" / "tiny"
    # It trained on the tiny kit's own data set, written with the models: 4 image pairs and 4 video pairs.
    kit = ModelSet(tmp_path / "runs" / "tiny-models")
    assert Path(config.data.manifest).resolve() == kit.manifest.resolve()
    pairs = [json.loads(line) for line in kit.manifest.read_text().splitlines()]
    assert sorted(pair["modality"] for pair in pairs) == ["image"] * 4 + ["video"] * 4

    # It learns: the loss falls clearly within a few dozen steps.
    history = losses(run)
    first, last = [history[s] for s in range(1, 6)], [history[s] for s in range(31, 41)]
    assert sum(last) / len(last) < 0.85 * sum(first) / len(first), history

    # Frozen models are bit-identical to the files; every adapter tensor moved from its initial value.
    fresh = load_frozen_models(config.model, torch.float32)
    for used, loaded in zip(result.models.modules(), fresh.modules(), strict=True):  # text encoder, VAE, UNet, encoders
        trained, original = used.state_dict(), loaded.state_dict()
        assert trained.keys() == original.keys()
        assert all(torch.equal(trained[key], original[key]) for key in original), type(used).__name__
        assert not any(p.requires_grad for p in used.parameters())
    set_seed(config.seed)
    initial = _build_adapter(config, fresh.unet, fresh.encoder).state_dict()
    unchanged = [k for k, v in result.adapter.state_dict().items() if torch.equal(v, initial[k])]
    assert not unchanged

    # The run folder: resolved config, metrics, TensorBoard, contact sheet, kept checkpoints, exported adapter.
    assert load_config(run / "config.yaml") == config
    assert sorted(history) == list(range(1, 41))
    assert {"lr", "g_image", "g_video", "samples_per_second", "skipped_samples"} <= set(
        json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    )
    # The gate's coverage per tenth of the dial, each modality's shares summing to one
    # (docs/decisions/training.md).
    for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        for modality in ("image", "video"):
            shares = record[f"gate_coverage_{modality}"]
            assert len(shares) == 10 and sum(shares) == pytest.approx(1.0, abs=1e-3), record
    events = list((run / "logs").rglob("events.out.tfevents.*"))
    assert events
    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert {"loss", "g_video", "gate_coverage_video/0.0-0.1", "gate_coverage_image/0.9-1.0"} <= set(tags)
    with Image.open(run / "samples" / "step-00000040.png") as sheet:
        # 4 columns (reference + 3 values of g) of 128 px tiles; 2 references x 2 prompts rows.
        assert sheet.width == MARGIN + 4 * (128 + MARGIN)
        assert 4 * (128 + MARGIN) < sheet.height < 4 * (128 + MARGIN) + 200
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "checkpoint-00000020",
        "checkpoint-00000040",
    ]
    exported = FlexIPAdapter.from_pretrained(run / "adapter")
    assert all(torch.equal(v, result.adapter.state_dict()[k]) for k, v in exported.state_dict().items())
    assert Path(
        exported.resolve_model(exported.config.image_encoder)
    ).is_dir()  # absolute: works from anywhere

    # An older checkpoint, resumed into another folder by its path, replays the same steps.
    branch = tmp_path / "branch"
    train(
        load_config(CONFIG, [*overrides, "max_steps=23", f"output_dir={branch}"]),
        resume=str(run / "checkpoints" / "checkpoint-00000020"),
    )
    assert losses(branch) == {s: history[s] for s in (21, 22, 23)}


def _interrupt_when(path: Path, lines: int) -> threading.Thread:
    def wait_then_signal():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if path.is_file() and len(path.read_text().splitlines()) >= lines:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=wait_then_signal, daemon=True)
    thread.start()
    return thread


def test_sigint_saves_a_checkpoint_and_resume_continues_exactly(tmp_path, tiny_models, four_pairs, capsys):
    def run(output_dir: Path, max_steps: int, *extra: str) -> int:
        overrides = tiny_overrides(tiny_models, four_pairs, output_dir, "gradient_accumulation_steps=2",
                                   "checkpoint_every=1000", "batch_size=2")  # fmt: skip
        argv = ["train", "--config", str(CONFIG), "--max-steps", str(max_steps), *extra]
        return main(argv + [a for o in overrides for a in ("--set", o)])

    interrupted = tmp_path / "interrupted"
    thread = _interrupt_when(interrupted / "metrics.jsonl", lines=2)
    assert run(interrupted, 1000) == 130
    thread.join()
    assert "interrupted at step" in capsys.readouterr().out
    (checkpoint,) = (interrupted / "checkpoints").iterdir()
    state = json.loads((checkpoint / "training_state.json").read_text())
    stopped = state["step"]
    assert 2 <= stopped < 1000 and state["samples"] == stopped * 2 * 2  # accumulation: 2 micro-batches of 2
    assert (interrupted / "adapter" / "flexip_adapter.safetensors").is_file()

    assert run(interrupted, stopped + 3, "--resume", "latest") == 0
    reference = tmp_path / "reference"
    assert run(reference, stopped + 3) == 0
    expected, resumed = losses(reference), losses(interrupted)
    assert [resumed[s] for s in range(1, stopped + 4)] == [expected[s] for s in range(1, stopped + 4)]


def test_gradient_checkpointing_changes_memory_not_results(tmp_path, tiny_models, four_pairs):
    runs = {}
    for checkpointing in (False, True):
        output = tmp_path / str(checkpointing)
        overrides = tiny_overrides(
            tiny_models, four_pairs, output, "max_steps=2", f"gradient_checkpointing={checkpointing}"
        )
        result = train(load_config(CONFIG, overrides))
        assert result.models.unet.is_gradient_checkpointing == checkpointing
        runs[checkpointing] = losses(output)
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)


def test_bf16_mixed_precision_keeps_the_adapter_in_float32(tmp_path, tiny_models, four_pairs):
    AcceleratorState._reset_state(True)  # the precision of an in-process accelerate state is fixed once set
    try:
        overrides = tiny_overrides(tiny_models, four_pairs, tmp_path, "max_steps=2", "mixed_precision=bf16")
        result = train(load_config(CONFIG, overrides))
    finally:
        AcceleratorState._reset_state(True)
    assert all(math.isfinite(loss) for loss in losses(tmp_path).values())
    assert {p.dtype for p in result.adapter.parameters()} == {torch.float32}
    assert result.models.unet.dtype == torch.bfloat16


def test_subject_loss_weight_counts_the_subjects_error_more_and_keeps_the_scale():
    from flexip.training.objective import per_sample_mse

    noise = torch.zeros(3, 4, 8, 8)
    subject = torch.zeros(3, 1, 8, 8)
    subject[:, :, 2:4, 2:4] = 1.0  # 4 of 64 latent pixels
    inside, outside = torch.zeros_like(noise), torch.zeros_like(noise)
    inside[:, :, 2:4, 2:4] = 1.0
    outside[:, :, 5:7, 5:7] = 1.0  # the same amount of error, off the subject
    plain = per_sample_mse(inside, noise)
    torch.testing.assert_close(per_sample_mse(outside, noise), plain)
    weighted_in, weighted_out = per_sample_mse(inside, noise, subject, 4.0), per_sample_mse(outside, noise, subject, 4.0)
    assert torch.all(weighted_in > 3 * plain) and torch.all(weighted_out < plain)
    torch.testing.assert_close(per_sample_mse(noise + 1.0, noise, subject, 4.0), torch.ones(3))  # uniform error: as is
    torch.testing.assert_close(per_sample_mse(inside, noise, subject, 0.0), plain)
    torch.testing.assert_close(per_sample_mse(inside, noise, torch.zeros_like(subject), 4.0), plain)


def test_subject_loss_weight_reaches_the_training_loss(tmp_path, tiny_models, four_pairs):
    first = {}
    for weight in (0.0, 50.0):
        output = tmp_path / str(weight)
        overrides = tiny_overrides(tiny_models, four_pairs, output, "max_steps=1", f"subject_loss_weight={weight}")
        train(load_config(CONFIG, overrides))
        first[weight] = losses(output)[1]
    # The same batch, noise and timesteps (masks draw no randomness): only the weighting differs.
    assert first[50.0] != pytest.approx(first[0.0], rel=1e-3)
