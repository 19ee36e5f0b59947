"""`flexip eval generate` on an SDXL base: FlexIP, SDXL alone (`--method base`) and IP-Adapter through diffusers'
own `load_ip_adapter`, whose files default to h94/IP-Adapter's `sdxl_models/` layout on an SDXL base."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures import DREAMBENCH, pixels, save_tiny_ip_adapter
from flexip.cli import main
from flexip.families.registry import SDXL

pytestmark = pytest.mark.usefixtures("dreambench")


def generate(models, out: Path, *extra: str) -> list[str]:
    return ["eval", "generate", "--data", str(DREAMBENCH), "--subjects", "dog", "--max-prompts", "1",
            "--base", str(models.base), "--seeds", "1", "--steps", "2", "--out", str(out), *extra]  # fmt: skip


def test_every_method_generates_on_sdxl_and_ip_adapter_at_scale_zero_is_plain_sdxl(tmp_path, tiny_xl_models):
    ip_adapter = save_tiny_ip_adapter(tmp_path / "ip-adapter", family=SDXL)
    assert (ip_adapter / "sdxl_models" / "ip-adapter_sdxl.safetensors").is_file()
    runs = {name: tmp_path / name for name in ("flexip", "ip-adapter", "base")}
    assert main(generate(tiny_xl_models, runs["flexip"], "--method", "flexip", "--adapter",
                         str(tiny_xl_models.adapter), "--preservation", "0,1")) == 0  # fmt: skip
    assert main(generate(tiny_xl_models, runs["ip-adapter"], "--method", "ip-adapter", "--ip-adapter",
                         str(ip_adapter), "--scale", "0,1")) == 0  # fmt: skip
    assert main(generate(tiny_xl_models, runs["base"], "--method", "base")) == 0

    settings = json.loads((runs["ip-adapter"] / "generation.json").read_text())
    files = (settings["ip_adapter_subfolder"], settings["ip_adapter_weight"])
    assert files == ("sdxl_models", "ip-adapter_sdxl.safetensors")
    image = Path("dog/00/0.png")
    plain = pixels(runs["base"] / "images" / "base" / image)
    assert plain.shape == (32, 32, 3)  # SDXL's default size on the tiny base
    assert np.array_equal(pixels(runs["ip-adapter"] / "images" / "scale-0" / image), plain)
    assert not np.array_equal(pixels(runs["ip-adapter"] / "images" / "scale-1" / image), plain)
    keep, edit = (pixels(runs["flexip"] / "images" / f"preservation-{g}" / image) for g in ("0", "1"))
    assert not np.array_equal(keep, edit)
