"""The web page's service on FLUX.1, unchanged: a request on the tiny FLUX.1 kit gives its image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")  # the app extra

from flexip.app.page import build_page
from flexip.app.service import Service
from flexip.pipeline.front_end import load_pipeline
from flexip.settings.generation import ModelSettings


def test_the_service_generates_on_flux(tiny_flux_models, tmp_path):
    models = ModelSettings(adapter=str(tiny_flux_models.adapter), device="cpu")
    loaded = load_pipeline(models)
    loaded.pipe.set_progress_bar_config(disable=True)
    service = Service(loaded, models, tmp_path)
    # The page's guidance starts at FLUX.1's own (3.5), as `flexip generate`'s does, not the SD families' 7.5.
    page = build_page(service)
    (guidance,) = [block for block in page.blocks.values() if getattr(block, "elem_id", None) == "guidance"]
    assert guidance.value == 3.5
    request = service.request(
        str(tiny_flux_models.data / "image0.png"), "image0.png", prompt="a dog", preservation=0.5, sweep=None,
        seed=0, randomize=False, steps=2, guidance=3.5, scheduler="ddim", scale=1.0, negative_prompt="",
    )  # fmt: skip
    result = service.run(request)
    with Image.open(result.images[0]) as image:
        assert image.size == (256, 256) and np.asarray(image).std() > 0  # FLUX's default size on the tiny kit
