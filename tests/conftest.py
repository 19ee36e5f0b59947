"""Shared fixtures: one tiny model set per test session, built offline and loaded through the real paths."""

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

from flexip import FlexIPAdapter
from flexip.families import SDXL
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
    """The tiny model set (base, image_encoder, dinov2, adapter) with random weights. Treat it as read-only."""
    return save_tiny_model_set(tmp_path_factory.mktemp("tiny-models"))


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
