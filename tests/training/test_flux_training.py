"""Training FlexIP on FLUX.1 (the tiny FLUX kit): the recipe from a fresh clone learns with flow matching and
its adapter generates; FLUX's VAE latents are shifted then scaled; the DDPM families' weighting is refused.
Resuming after SIGKILL and training from the feature cache are parametrised with the other families
(test_train_processes.py, test_train_cache.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from fixtures import losses
from flexip import FlexIPAdapter
from flexip.cli import main
from flexip.training.components import load_frozen_models
from flexip.training.config import load_config
from flexip.training.objective import denoiser_latents
from flexip.training.trainer import train

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny-flux.yaml"


def kit_overrides(models) -> list[str]:
    return [f"model.base={models.base}", f"model.image_encoder={models.image_encoder}",
            f"model.dino_encoder={models.dinov2}", "model.tiny_models=''"]  # fmt: skip


def test_tiny_flux_recipe_from_a_fresh_directory_learns_and_its_adapter_generates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # tiny-flux.yaml's relative paths: the FLUX kit is written here on first use
    overrides = ["max_steps=40", "log_every=1", "checkpoint_every=40", "validation.every=40", "log_with=[]",
                 "flow_matching.guidance=2.5"]  # fmt: skip
    train(load_config(CONFIG, overrides), resume=None)
    run = tmp_path / "runs" / "tiny-flux"
    history = losses(run)
    first, last = [history[s] for s in range(1, 6)], [history[s] for s in range(31, 41)]
    assert sum(last) / len(last) < 0.85 * sum(first) / len(first), history
    assert (run / "samples" / "step-00000040.png").is_file()  # validation sampled through FlexIPFluxPipeline
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["flow_matching"]["guidance"] == 2.5 and recorded["min_snr_gamma"] == 0.0

    adapter = FlexIPAdapter.from_pretrained(run / "adapter")
    assert adapter.config.base_family == "flux"
    reference = tmp_path / "runs" / "tiny-flux-models" / "data" / "image0.png"
    out = tmp_path / "dog.png"
    code = main(["generate", "--adapter", str(run / "adapter"), "--reference", str(reference), "--prompt", "a dog",
                 "--preservation", "0.7", "--steps", "2", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err[-2000:]
    with Image.open(out) as image:
        assert np.asarray(image).std() > 0


def test_flux_latents_are_shifted_then_scaled_and_sd_latents_only_scaled(tiny_flux_models, tiny_models):
    flux = load_frozen_models(load_config(CONFIG, kit_overrides(tiny_flux_models)).model, torch.float32)
    sample = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    shift, scale = flux.vae.config.shift_factor, flux.vae.config.scaling_factor
    assert shift and scale != 1
    torch.testing.assert_close(denoiser_latents(flux.vae, sample), (sample - shift) * scale, rtol=0, atol=0)
    sd = load_frozen_models(load_config(CONFIG.with_name("tiny.yaml"), kit_overrides(tiny_models)).model, torch.float32)
    assert sd.vae.config.shift_factor is None
    assert torch.equal(denoiser_latents(sd.vae, sample), sample * sd.vae.config.scaling_factor)


def test_min_snr_gamma_on_a_flux_base_is_refused_before_any_model_loads(tiny_flux_models, tmp_path, capsys):
    settings = [*kit_overrides(tiny_flux_models), f"data.manifest={tiny_flux_models.manifest}", "min_snr_gamma=5",
                "log_with=[]"]  # fmt: skip
    args = ["train", "--config", str(CONFIG), "--output-dir", str(tmp_path / "run"), *[a for s in settings for a in ("--set", s)]]
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flexip ")]
    assert len(lines) == 1 and "config min_snr_gamma: 5" in lines[0] and "flow_matching.weighting_scheme" in lines[0]
