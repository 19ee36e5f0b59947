"""`flexip sweep` on FLUX.1, unchanged: the tiny FLUX.1 kit's adapter, a base given as one transformer file with
`--base-config`, the front ends' default sampler (DDIM, on a flow-matching base its Euler sampler)."""

from __future__ import annotations

import numpy as np
from diffusers import FluxTransformer2DModel
from safetensors.torch import save_file

from fixtures import pixels, settings_of
from flexip.cli import main


def test_flexip_sweep_runs_on_flux(tiny_flux_models, tmp_path, capsys):
    transformer = tmp_path / "flux1-finetune.safetensors"
    save_file(FluxTransformer2DModel.from_pretrained(tiny_flux_models.base, subfolder="transformer").state_dict(),
              transformer)  # fmt: skip
    out = tmp_path / "sweep"
    code = main(["sweep", "--adapter", str(tiny_flux_models.adapter), "--base", str(transformer),
                 "--base-config", str(tiny_flux_models.base), "--reference", str(tiny_flux_models.data / "image0.png"),
                 "--prompt", "a dog", "--preservation", "0,1", "--steps", "2", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err[-2000:]
    images = sorted(path for path in out.glob("*.png") if path.name != "contact_sheet.png")
    assert len(images) == 2 and (out / "contact_sheet.png").is_file()
    assert pixels(images[0]).shape == (256, 256, 3)  # FLUX's default: 128 latents, 256 px on the tiny VAE
    assert np.abs(pixels(images[0]) - pixels(images[1])).max() > 0, "the dial must change the image"
    assert [settings_of(path)["scheduler"] for path in images] == ["ddim", "ddim"]
    # FLUX.1's own guidance without --guidance (FluxPipeline's 3.5), not the Stable Diffusion families' 7.5.
    assert [settings_of(path)["guidance"] for path in images] == [3.5, 3.5]


def test_a_flux_adapter_takes_its_own_block_names_on_the_command_line(tiny_flux_models, tmp_path, capsys):
    code = main(["generate", "--adapter", str(tiny_flux_models.adapter), "--reference",
                 str(tiny_flux_models.data / "image0.png"), "--prompt", "a dog", "--preservation", "down=0.5",
                 "--out", str(tmp_path / "x.png")])  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flexip ")]
    assert code == 2 and len(errors) == 1 and "unknown block 'down'; the keys are double" in errors[0]


def test_flux_runs_in_bfloat16_on_a_gpu_unless_told(tiny_flux_models, tiny_models):
    """The front ends' dtype on a GPU is the adapter's family's (this machine has none to load on)."""
    from flexip.pipeline.front_end import _gpu_dtype

    assert _gpu_dtype(str(tiny_flux_models.adapter)) == "bfloat16"
    assert _gpu_dtype(str(tiny_models.adapter)) == "float16" and _gpu_dtype(None) == "float16"
