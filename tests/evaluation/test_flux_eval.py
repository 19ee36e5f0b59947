"""`flexip eval generate` on a FLUX.1 base: FlexIP as `flexip sweep` makes it, the base alone, and IP-Adapter in
XLabs' layout through diffusers' own `FluxPipeline.load_ip_adapter`; FLUX.1's guidance and sampler, the family
in the results, and an IP-Adapter of the other kind refused before the base loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fixtures import picture, pixels, rows, save_tiny_flux_ip_adapter, save_tiny_ip_adapter
from flexip.cli import main


def generate(models, out: Path, *extra: str) -> list[str]:
    """One case (the tiny benchmark's first prompt), one seed, two steps."""
    return ["eval", "generate", "--benchmark", "jsonl", "--data", str(models.benchmark), "--subjects",
            "red_circle", "--max-prompts", "1", "--seeds", "1", "--steps", "2", "--out", str(out),
            *extra]  # fmt: skip


def test_every_method_runs_on_flux_with_its_guidance_and_sampler(tmp_path, tiny_flux_models, capsys):
    models = tiny_flux_models
    xlabs = save_tiny_flux_ip_adapter(tmp_path / "flux-ip-adapter")
    runs = {name: tmp_path / name for name in ("flexip", "ip-adapter", "base")}
    assert main(generate(models, runs["flexip"], "--method", "flexip", "--adapter", str(models.adapter),
                         "--preservation", "0,1")) == 0  # fmt: skip
    assert main(generate(models, runs["ip-adapter"], "--method", "ip-adapter", "--base", str(models.base),
                         "--ip-adapter", str(xlabs), "--ip-adapter-image-encoder", str(xlabs / "image_encoder"),
                         "--scale", "0,1")) == 0  # fmt: skip
    assert main(generate(models, runs["base"], "--method", "base", "--base", str(models.base))) == 0

    for name, run in runs.items():  # FLUX.1's guidance embedding at 3.5 and its flow-matching Euler, recorded
        settings = json.loads((run / "generation.json").read_text())
        recorded = (settings["family"], settings["guidance"], settings["scheduler"])
        assert recorded == ("flux", 3.5, "FlowMatchEulerDiscreteScheduler"), name
    settings = json.loads((runs["ip-adapter"] / "generation.json").read_text())
    assert (settings["ip_adapter_subfolder"], settings["ip_adapter_weight"]) == ("", "ip_adapter.safetensors")
    assert settings["ip_adapter_image_encoder"] == str(xlabs / "image_encoder")

    image = Path("red_circle/00/0.png")
    plain = pixels(runs["base"] / "images" / "base" / image)
    assert plain.shape == (256, 256, 3)  # FluxPipeline's default size on the tiny VAE
    # XLabs' IP-Adapter, loaded by diffusers: at scale 0 the base exactly, at scale 1 another image.
    assert np.array_equal(pixels(runs["ip-adapter"] / "images" / "scale-0" / image), plain)
    assert not np.array_equal(pixels(runs["ip-adapter"] / "images" / "scale-1" / image), plain)

    # FlexIP's images are the ones `flexip sweep` makes with the same adapter, prompt, reference and seed.
    case = rows(runs["flexip"] / "manifest.jsonl")[0]
    capsys.readouterr()
    sweep = tmp_path / "sweep"
    assert main(["sweep", "--adapter", str(models.adapter), "--reference", case["reference"], "--prompt",
                 case["prompt"], "--preservation", "0,1", "--steps", "2", "--out", str(sweep)]) == 0  # fmt: skip
    swept = sorted(path for path in sweep.glob("*.png") if path.name != "contact_sheet.png")
    made = [pixels(runs["flexip"] / "images" / f"preservation-{value}" / image) for value in ("0", "1")]
    assert len(swept) == 2 and all(np.array_equal(pixels(a), b) for a, b in zip(swept, made))
    assert not np.array_equal(*made)

    # The family reaches the scores and the summary's title.
    assert main(["eval", "score", str(runs["base"]), "--clip-model", str(models.clip_model), "--iqa-model",
                 str(models.clip_model), "--aesthetic-model", str(models.clip_model), "--dino-model",
                 str(models.dino_model), "--aesthetic-head", str(models.aesthetic_head)]) == 0  # fmt: skip
    assert [row["family"] for row in rows(runs["base"] / "scores.jsonl")] == ["flux"]
    assert (runs["base"] / "summary.md").read_text().startswith("# base (base, flux base) on jsonl")

    # Results recorded without a family (an older flexip's) are continued by the same command.
    settings = json.loads((runs["base"] / "generation.json").read_text())
    del settings["family"]
    (runs["base"] / "generation.json").write_text(json.dumps(settings))
    capsys.readouterr()
    assert main(generate(models, runs["base"], "--method", "base", "--base", str(models.base))) == 0
    assert "made 0 images" in capsys.readouterr().out


def test_an_ip_adapter_for_the_other_kind_of_base_is_refused_before_the_base_loads(tmp_path, capsys):
    """Each base here is only its model_index.json: the family is read from it, and loading it would fail."""
    flux_base, sd_base = tmp_path / "flux-base", tmp_path / "sd-base"
    for base, index in ((flux_base, {"_class_name": "FluxPipeline", "transformer": ["diffusers",
                                                                                  "FluxTransformer2DModel"]}),
                        (sd_base, {"_class_name": "StableDiffusionPipeline"})):  # fmt: skip
        base.mkdir()
        (base / "model_index.json").write_text(json.dumps(index))
    h94 = save_tiny_ip_adapter(tmp_path / "h94")
    xlabs = save_tiny_flux_ip_adapter(tmp_path / "xlabs")
    picture(0).save(tmp_path / "dog.png")
    benchmark = tmp_path / "benchmark.jsonl"
    benchmark.write_text(json.dumps({"subject": "dog", "reference": "dog.png", "prompt": "a dog"}) + "\n")

    def refused(base: Path, *extra: str) -> str:
        capsys.readouterr()
        argv = ["eval", "generate", "--benchmark", "jsonl", "--data", str(benchmark), "--seeds", "1",
                "--steps", "1", "--out", str(tmp_path / "out"), "--method", "ip-adapter", "--base", str(base),
                *extra]  # fmt: skip
        assert main(argv) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and not (tmp_path / "out").exists()
        return errors[0]

    line = refused(flux_base, "--ip-adapter", str(h94), "--ip-adapter-subfolder", "models",
                   "--ip-adapter-weight", "ip-adapter_sd15.safetensors")  # fmt: skip
    assert "ip-adapter_sd15.safetensors is an IP-Adapter for a Stable Diffusion UNet" in line
    assert "is FLUX.1; give one made for FLUX.1 (such as XLabs-AI/flux-ip-adapter)" in line
    line = refused(sd_base, "--ip-adapter", str(xlabs), "--ip-adapter-subfolder", "", "--ip-adapter-weight",
                   "ip_adapter.safetensors")  # fmt: skip
    assert "ip_adapter.safetensors is an IP-Adapter for FLUX.1" in line and "(such as h94/IP-Adapter)" in line
    # On FLUX.1 the weight file defaults to XLabs' name, which h94's repository lacks.
    assert "has no ip_adapter.safetensors" in refused(flux_base, "--ip-adapter", str(h94))
    line = refused(
        sd_base, "--ip-adapter", str(h94), "--ip-adapter-image-encoder", str(xlabs / "image_encoder")
    )
    assert "--ip-adapter-image-encoder is for a FLUX.1 base" in line
