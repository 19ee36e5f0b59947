"""Shared fixtures: one tiny model set per test session, built offline and loaded through the real paths; per
test module, an adapter and a pipeline on it, and the web page's service on the embedded demo model. The
helpers they use, and that tests call, are in fixtures.py."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before any Hugging Face import: tests never reach a hub
# One torch thread in this process and in every process a test starts: the models are tiny, so threads cost
# more than they give, and two test processes on a shared two-core machine would oversubscribe it.
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import (
    DEMO_MODEL,
    DREAMBENCH,
    TEST_ADAPTERS,
    TINY_MODELS,
    flexip_pipe,
    need_shared,
    picture,
    save_calibrated,
)
from flexip import FlexIPAdapter
from flexip.app.service import Service
from flexip.evaluation.tiny_backbones import save_tiny_backbones
from flexip.families.registry import SDXL
from flexip.pipeline.front_end import load_pipeline
from flexip.settings.generation import ModelSettings
from flexip.tiny import ModelSet, save_tiny_model_set

torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests that need real model weights present locally")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="needs real weights; opt in with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> ModelSet:
    """The tiny model set with random weights, every part `flexip tiny-models` writes (base, image_encoder,
    dinov2, adapter, data, benchmark, and the metrics' backbones). Treat it as read-only."""
    models = save_tiny_model_set(tmp_path_factory.mktemp("tiny-models"))
    save_tiny_backbones(models.root)
    return models


@pytest.fixture(scope="session")
def twelve_pair_shards(tmp_path_factory) -> Path:
    """Twelve pairs of the demo world (6 image pairs with masks, 6 video pairs) in 6 shards of 2
    (`flexip prep shards`), with their manifest beside them in `data/`. Treat it as read-only."""
    from flexip.cli import main
    from recipes.demo.manifest import ManifestConfig, write_manifest

    root = tmp_path_factory.mktemp("twelve-pairs")
    manifest = write_manifest(root / "data", ManifestConfig(num_images=6, num_clips=2, frames_per_clip=4, size=32))
    assert main(["prep", "shards", str(manifest), "--out", str(root / "shards"), "--shard-size", "2"]) == 0
    return root / "shards"


@pytest.fixture(scope="session")
def tiny_xl_models(tmp_path_factory) -> ModelSet:
    """The tiny model set on a tiny SDXL base (`flexip tiny-models --family sdxl`). Treat it as read-only."""
    return save_tiny_model_set(tmp_path_factory.mktemp("tiny-xl-models"), family=SDXL)


def with_random_personalization(adapter: FlexIPAdapter) -> FlexIPAdapter:
    """`adapter` with random Personalization residuals in place of its zero ones (see `load_test_adapter`)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in adapter.personalization.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return adapter


@pytest.fixture(scope="session")
def load_test_adapter(tiny_models):
    """A function giving a fresh copy of the tiny adapter whose Personalization residuals are random.

    The kit's Personalization adapter starts with S equal to the text (zero-initialised residuals, as every
    new adapter does); random residuals make S depend on the reference, as a trained one does, so that tests
    can tell the S branch from the text branch.
    """

    def load() -> FlexIPAdapter:
        return with_random_personalization(FlexIPAdapter.from_pretrained(tiny_models.adapter))

    return load


@pytest.fixture(scope="session")
def calibrated_adapter(tiny_models, load_test_adapter, tmp_path_factory) -> Path:
    """The directory of the test adapter (`load_test_adapter`) calibrated by hand (`fixtures.CALIBRATION`), on the
    tiny base. Treat it as read-only."""
    return save_calibrated(load_test_adapter(), tmp_path_factory.mktemp("calibrated") / "adapter", tiny_models)


@pytest.fixture(scope="session")
def calibrated_model(tiny_models, calibrated_adapter):
    """`calibrated_adapter` on the tiny base, loaded as the command line and the web page load it, no progress
    bar. Tests only generate with it."""
    loaded = load_pipeline(ModelSettings(adapter=str(calibrated_adapter), base=str(tiny_models.base), device="cpu"))
    loaded.pipe.set_progress_bar_config(disable=True)
    return loaded


@pytest.fixture(scope="session")
def tiny_flux_models(tmp_path_factory) -> ModelSet:
    """The tiny model set on a tiny FLUX.1 base, written by `flexip tiny-models --family flux` (metrics' backbones
    too). Treat it as read-only."""
    from flexip.cli import main

    root = tmp_path_factory.mktemp("tiny-flux-models")
    assert main(["tiny-models", str(root), "--family", "flux"]) == 0
    return ModelSet(root)


@pytest.fixture(scope="session")
def load_flux_test_adapter(tiny_flux_models):
    """`load_test_adapter` for the tiny FLUX.1 model set."""

    def load() -> FlexIPAdapter:
        return with_random_personalization(FlexIPAdapter.from_pretrained(tiny_flux_models.adapter))

    return load


@pytest.fixture(scope="session")
def load_xl_test_adapter(tiny_xl_models):
    """`load_test_adapter` for the tiny SDXL model set."""

    def load() -> FlexIPAdapter:
        return with_random_personalization(FlexIPAdapter.from_pretrained(tiny_xl_models.adapter))

    return load


@pytest.fixture(scope="session")
def images():
    """Inputs of the stock-pipeline tests, 32 px: two references, an init image, a control image and a mask."""
    generator = np.random.default_rng(0)

    def image():
        return Image.fromarray(generator.integers(0, 256, (32, 32, 3), dtype=np.uint8))

    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    return {"references": [image(), image()], "init": image(), "control": image(), "mask": mask}


@pytest.fixture(scope="module")
def family() -> str:
    """The family ("sd15", "sdxl" or "flux") of the tiny model set a module's `adapter` and `pipe` are on; a
    module on another family overrides it, one on several overrides it with params."""
    return "sd15"


@pytest.fixture(scope="module")
def adapter(request, family) -> FlexIPAdapter:
    """The module's test adapter (`load_test_adapter`) for `family`: its tests attach it, never change it."""
    return request.getfixturevalue(TEST_ADAPTERS[family])()


@pytest.fixture(scope="module")
def pipe(request, family, adapter):
    """The module's FlexIPPipeline on the tiny model set of `family` with the module's `adapter`."""
    return flexip_pipe(request.getfixturevalue(TINY_MODELS[family]).base, adapter)


@pytest.fixture(scope="session")
def reference() -> Image.Image:
    """A 48x40 reference image of random pixels (`fixtures.picture(0)`)."""
    return picture(0)


@pytest.fixture(scope="session")
def pictures() -> list[Image.Image]:
    """Three 48x40 images of random pixels, all different (the first is `reference`)."""
    generator = np.random.default_rng(0)
    return [Image.fromarray(generator.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]


@pytest.fixture(scope="module")
def four_pairs(tmp_path_factory) -> Path:
    """The manifest of two image pairs and two video pairs of the demo world."""
    from recipes.demo.manifest import ManifestConfig, write_manifest

    root = tmp_path_factory.mktemp("four-pairs")
    return write_manifest(root, ManifestConfig(num_images=2, num_clips=1, frames_per_clip=3, size=32))


@pytest.fixture(scope="session")
def dreambench() -> Path:
    """DreamBench from the project's shared data, or a skip (a failure under CI) where it is absent."""
    return need_shared(DREAMBENCH)


@pytest.fixture(scope="module")
def demo_model():
    """The embedded demo model, loaded as the web page loads it (`fixtures.DEMO_MODEL`), no progress bar."""
    loaded = load_pipeline(DEMO_MODEL)
    loaded.pipe.set_progress_bar_config(disable=True)
    return loaded


@pytest.fixture(scope="module")
def service(demo_model, tmp_path_factory):
    """The web page's service on `demo_model`, writing its results in a folder of the module's."""
    return Service(demo_model, DEMO_MODEL, tmp_path_factory.mktemp("results"))
