"""The feature cache: `flexip prep cache` over shards, and training from it (`data.cache`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_tensors

from fixtures import TINY_MODELS, losses
from flexip.cli import main
from flexip.models.config import MODALITIES
from flexip.training.components import load_frozen_models
from flexip.training.config import load_config
from flexip.training.data import load_pair
from flexip.training.feature_cache import FEATURES, feature_shapes, load_cached
from flexip.training.objective import FlexIPTrainingModel
from flexip.training.stream import key_number, pair_of, shard_samples, shard_urls

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"
# Training from the cache equals training from its shards up to the features' float16 rounding: measured on the
# tiny models, the losses of 8 steps differ by at most 7e-6 relative on SD1.5, 2.3e-4 on SDXL and 2.6e-5 on FLUX.1.
LOSS_TOLERANCE = 1e-3


@pytest.fixture
def shards(twelve_pair_shards) -> Path:
    return twelve_pair_shards


def model_overrides(models) -> list[str]:
    return [
        "model.tiny_models=''", f"model.base={models.base}", f"model.image_encoder={models.image_encoder}",
        f"model.dino_encoder={models.dinov2}",
    ]


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def train_args(models, config: Path, output_dir: Path, max_steps: int, *extra: str) -> list[str]:
    overrides = [
        *model_overrides(models), "log_with=[]", "log_every=1", "validation.every=1000", "learning_rate=1e-2",
        "batch_size=2", "data.lanes=2", "checkpoint_every=100", *extra,
    ]  # fmt: skip
    return ["train", "--config", str(config), "--output-dir", str(output_dir), "--max-steps", str(max_steps), *sets(overrides)]


@pytest.mark.parametrize(("family", "subject_weight"), [("sd15", 0), ("sd15", 1), ("sdxl", 0), ("flux", 1)])
def test_training_from_the_cache_matches_training_from_its_shards(
    tmp_path, request, shards, family, subject_weight, capsys
):
    models = request.getfixturevalue(TINY_MODELS[family])
    config = CONFIGS / {"sd15": "tiny.yaml", "sdxl": "tiny-sdxl.yaml", "flux": "tiny-flux.yaml"}[family]
    cache = tmp_path / "cache"
    args = ["prep", "cache", str(shards), "--config", str(config), "--out", str(cache), "--variants", "2",
            "--batch-size", "3", *sets(model_overrides(models))]  # fmt: skip
    assert main(args) == 0
    assert "6 shards -> 12 samples" in capsys.readouterr().out
    index = json.loads((cache / "cache.json").read_text())
    assert index["variants"] == 2 and index["settings"]["data.resolution"] == 32
    # 8 steps of 2: 16 positions, so some readers reach their second pass, which takes the second variant.
    extra = [f"subject_loss_weight={subject_weight}"]
    assert main(train_args(models, config, tmp_path / "images", 8, f"data.shards={shards}", *extra)) == 0
    assert main(train_args(models, config, tmp_path / "cached", 8, f"data.cache={cache}", *extra)) == 0
    from_images, from_cache = losses(tmp_path / "images"), losses(tmp_path / "cached")
    assert len(from_cache) == 8
    assert from_cache == pytest.approx(from_images, rel=LOSS_TOLERANCE)


def test_each_variant_holds_the_reference_features_of_the_draws_of_its_pass(tmp_path, tiny_models, shards):
    config = load_config(CONFIGS / "tiny.yaml", model_overrides(tiny_models))
    cache = tmp_path / "cache"
    assert main(["prep", "cache", str(shards), "--config", str(CONFIGS / "tiny.yaml"), "--out", str(cache),
                 "--variants", "2", *sets(model_overrides(tiny_models))]) == 0  # fmt: skip
    models = load_frozen_models(config.model, torch.float32)
    encoder = models.encoder
    shapes = feature_shapes(models, 32, torch.device("cpu"))  # what training checks each sample against
    images = differing = 0
    for url in shard_urls(str(cache)):
        for sample in shard_samples(url):
            pair = pair_of(sample)
            if pair.modality != MODALITIES.index("image"):
                assert len(load_tensors(sample[FEATURES])["clip_embeds"]) == 1  # not augmented: one variant
                continue
            images += 1
            for pass_ in range(3):  # pass k: variant k mod 2, drawn as training from the shards draws it
                rng = np.random.default_rng([config.seed, key_number(sample["__key__"]), pass_ % 2])
                expected = encoder([load_pair(pair, rng, 32)["reference"]])
                cached = load_cached(sample, pass_, None, variants=2, subject=True, shapes=shapes)
                torch.testing.assert_close(cached["clip_embeds"].float(), expected.clip_embeds[0], atol=2e-3, rtol=2e-3)
                torch.testing.assert_close(cached["dino_tokens"].float(), expected.dino_tokens[0], atol=2e-3, rtol=2e-3)
            variants = load_tensors(sample[FEATURES])["clip_embeds"]
            differing += not torch.equal(variants[0], variants[1])
    # Two draws can be the same picture (a cut-out by the mask, not flipped), but not for every pair.
    assert images == 6 and differing >= 2


def test_a_second_run_keeps_finished_cache_shards_and_a_config_mismatch_is_refused(
    tmp_path, tiny_models, shards, capsys
):
    config = CONFIGS / "tiny.yaml"
    cache = tmp_path / "cache"
    args = ["prep", "cache", str(shards), "--config", str(config), "--out", str(cache), *sets(model_overrides(tiny_models))]
    assert main(args) == 0
    (cache / "000003.tar").unlink()
    stamp = (cache / "000001.tar").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "(5 done by an earlier run)" in capsys.readouterr().out
    assert (cache / "000003.tar").is_file() and (cache / "000001.tar").stat().st_mtime_ns == stamp
    # Another resolution into the same folder, or training at another resolution than the cache's.
    assert main([*args, "--set", "data.resolution=64"]) == 2
    assert "holds a cache of other shards, encoders or settings" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(train_args(tiny_models, config, run, 1, f"data.cache={cache}", "data.resolution=64")) == 2
    err = capsys.readouterr().err
    assert "config data.resolution: 64, but the cache" in err and "was made with 32" in err
    assert len(err.strip().splitlines()) == 1
    other_dino = tmp_path / "dino"
    other_dino.mkdir()
    assert main(train_args(tiny_models, config, run, 1, f"data.cache={cache}", f"model.dino_encoder={other_dino}")) == 2
    assert "config model.dino_encoder" in capsys.readouterr().err


def test_a_folder_that_is_not_a_cache_is_refused(tmp_path, tiny_models, shards, capsys):
    config = CONFIGS / "tiny.yaml"
    assert main(train_args(tiny_models, config, tmp_path / "run", 1, f"data.cache={shards}")) == 2
    assert "is not a feature cache (cache.json is missing" in capsys.readouterr().err


def test_training_from_the_cache_moves_its_encoders_to_the_device_only_to_validate(
    tmp_path, tiny_models, shards, monkeypatch
):
    """Every frozen module goes to the device (`Module.to`) before the first step, but for the text and
    reference encoders, whose outputs the cache holds: they come only for the validation sweep (the last step's
    here), go back after it, and come again when the run ends, ready to generate from."""
    config = CONFIGS / "tiny.yaml"
    cache = tmp_path / "cache"
    assert main(["prep", "cache", str(shards), "--config", str(config), "--out", str(cache),
                 *sets(model_overrides(tiny_models))]) == 0  # fmt: skip
    events = []
    module_to, forward = torch.nn.Module.to, FlexIPTrainingModel.forward

    def spy_to(module, *args, **kwargs):
        events.append(type(module).__name__)
        return module_to(module, *args, **kwargs)

    def spy_forward(model, *args, **kwargs):
        events.append("step")
        return forward(model, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spy_to)
    monkeypatch.setattr(FlexIPTrainingModel, "forward", spy_forward)
    encoders = ["CLIPTextModel", "ReferenceEncoder"]
    assert main(train_args(tiny_models, config, tmp_path / "cached", 2, f"data.cache={cache}")) == 0
    first, last = events.index("step"), len(events) - 1 - events[::-1].index("step")
    assert {"AutoencoderKL", "UNet2DConditionModel"} <= set(events[:first])
    assert not set(encoders) & set(events[:last])
    assert sorted(events[last + 1 :]) == sorted(encoders * 3)  # to validate, back, and at the end

    events.clear()
    assert main(train_args(tiny_models, config, tmp_path / "shards", 2, f"data.shards={shards}")) == 0
    assert set(encoders) <= set(events[: events.index("step")])  # from shards they encode every batch
