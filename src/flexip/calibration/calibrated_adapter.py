"""Writing a calibrated adapter: a new folder (`flexip calibrate --out`), or the config of a folder the caller
made (a training run's export).

A new folder holds the adapter's weights file copied byte for byte and its config with the calibration (an
earlier one replaced); it appears whole or not at all. Models the config names relative to the adapter
("./base", "../image_encoder") are named relative to the new folder, so they are the same models from there.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from ..atomic import atomic_directory, atomic_write_bytes
from ..models.config import FlexIPConfig
from ..models.config_file import CONFIG_NAME, WEIGHTS_NAME, read_config
from ..models.files import config_bytes
from ..settings.calibration import Calibration

MODEL_FIELDS = ("base_model", "image_encoder", "dino_encoder")


def write_calibrated_copy(
    adapter: str | os.PathLike, out: str | os.PathLike, calibration: Calibration
) -> None:
    """The adapter folder `adapter` copied to the new folder `out` with `calibration`; `adapter` is only read."""
    adapter, config = read_config(adapter)
    out = Path(out)
    moved = {name: _moved(getattr(config, name), adapter, out) for name in MODEL_FIELDS}
    config = dataclasses.replace(config, calibration=calibration, **moved)
    with atomic_directory(out) as tmp:
        shutil.copyfile(adapter / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
        (tmp / CONFIG_NAME).write_bytes(config_bytes(config))


def write_calibration(adapter: str | os.PathLike, calibration: Calibration) -> FlexIPConfig:
    """`calibration` into the config of the adapter folder `adapter`, its weights untouched; returns the
    config."""
    adapter, config = read_config(adapter)
    config = dataclasses.replace(config, calibration=calibration)
    atomic_write_bytes(adapter / CONFIG_NAME, config_bytes(config))
    return config


def _moved(reference: str, adapter: Path, out: Path) -> str:
    """A model named relative to `adapter` ("./x", "../x"), named relative to `out`; any other name as it is."""
    if not reference.startswith(("./", "../")):
        return reference
    target = (adapter / reference).resolve()
    relative = os.path.relpath(target, out.resolve())
    return relative if relative.startswith("../") else f"./{relative}"
