"""Shared fixtures: one tiny model set per test session, built offline and loaded through the real paths."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before any Hugging Face import: tests never reach a hub

import pytest

from flexip.tiny import ModelSet, save_tiny_model_set


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
