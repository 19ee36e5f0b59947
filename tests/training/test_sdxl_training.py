"""Training FlexIP on SDXL (the tiny SDXL kit): the recipe from a fresh clone, the text path and size
conditioning that training feeds the UNet, and the float16 VAE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from fixtures import losses
from flexip import FlexIPAdapter, FlexIPXLPipeline
from flexip.cli import main
from flexip.families.registry import SDXL
from flexip.training.components import load_frozen_models
from flexip.training.config import load_config
from flexip.training.data import size_conditioning
from flexip.training.trainer import train

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny-sdxl.yaml"


def test_size_conditioning_is_the_original_size_the_crop_and_the_target_size():
    # 60 x 40 (w x h) to 32 px: resized to 48 x 32, the centre square starts 8 px in from the left.
    assert size_conditioning(Image.new("RGB", (60, 40)), 32).tolist() == [40, 60, 0, 8, 32, 32]
    assert size_conditioning(Image.new("RGB", (40, 100)), 32).tolist() == [100, 40, 24, 0, 32, 32]


def kit_overrides(models) -> list[str]:
    return [f"model.base={models.base}", f"model.image_encoder={models.image_encoder}",
            f"model.dino_encoder={models.dinov2}", "model.tiny_models=''"]  # fmt: skip


def test_training_encodes_text_as_the_sdxl_pipeline_does(tiny_xl_models):
    models = load_frozen_models(load_config(CONFIG, kit_overrides(tiny_xl_models)).model, torch.float32)
    assert models.family is SDXL and set(models.text) == {"tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2"}
    captions = ["a red circle on a white background", ""]
    sizes = torch.tensor([[40, 60, 0, 8, 32, 32], [32, 32, 0, 0, 32, 32]])
    text = SDXL.encode_captions(models.text, captions, sizes, torch.device("cpu"))
    pipe = SDXL.assemble(models.vae, models.unet, models.noise_scheduler, models.text)
    embeds, _, pooled, _ = pipe.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(text.embeds, embeds) and text.embeds.shape[-1] == models.unet.config.cross_attention_dim
    assert torch.equal(text.added["text_embeds"], pooled)
    assert torch.equal(text.added["time_ids"], sizes.float())


def test_sdxl_vae_encodes_in_float32_under_fp16_unless_a_fixed_vae_is_named(tiny_xl_models, tmp_path):
    overrides = kit_overrides(tiny_xl_models)
    models = load_frozen_models(load_config(CONFIG, overrides).model, torch.float16)
    assert models.unet.dtype == torch.float16 and models.vae.dtype == torch.float32
    fixed = AutoencoderKL.from_pretrained(tiny_xl_models.base, subfolder="vae")
    fixed.register_to_config(force_upcast=False)
    fixed.save_pretrained(tmp_path / "fixed-vae")
    overrides.append(f"model.vae={tmp_path / 'fixed-vae'}")
    models = load_frozen_models(load_config(CONFIG, overrides).model, torch.float16)
    assert models.vae.dtype == torch.float16


def test_tiny_sdxl_recipe_from_a_fresh_directory_learns_and_its_adapter_generates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # tiny-sdxl.yaml's relative paths: the SDXL kit is written here on first use
    overrides = ["max_steps=40", "log_every=1", "checkpoint_every=40", "validation.every=40", "log_with=[]"]
    train(load_config(CONFIG, overrides), resume=None)
    run = tmp_path / "runs" / "tiny-sdxl"
    history = losses(run)
    first, last = [history[s] for s in range(1, 6)], [history[s] for s in range(31, 41)]
    assert sum(last) / len(last) < 0.85 * sum(first) / len(first), history
    assert (run / "samples" / "step-00000040.png").is_file()  # validation sampled through FlexIPXLPipeline

    adapter = FlexIPAdapter.from_pretrained(run / "adapter")
    assert adapter.config.base_family == "sdxl"
    reference = tmp_path / "runs" / "tiny-xl-models" / "data" / "image0.png"
    out = tmp_path / "dog.png"
    code = main(["generate", "--adapter", str(run / "adapter"), "--reference", str(reference), "--prompt", "a dog",
                 "--preservation", "0.7", "--steps", "2", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err[-2000:]
    with Image.open(out) as image:
        assert image.size == (32, 32) and np.asarray(image).std() > 0
    pipe = FlexIPXLPipeline.from_pretrained(adapter=adapter)  # the SDXL base the adapter records
    assert type(pipe) is FlexIPXLPipeline
