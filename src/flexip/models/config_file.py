"""An adapter directory's config file, read and checked without torch (the command line checks an adapter
before it imports torch); `files.py` reads and writes the whole directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import recover_directory
from ..errors import FlexIPError
from .config import FlexIPConfig

CONFIG_NAME = "flexip_config.json"
WEIGHTS_NAME = "flexip_adapter.safetensors"


def read_config(directory: str | os.PathLike) -> tuple[Path, FlexIPConfig]:
    """(the directory, its checked config); both files must be there."""
    directory = recover_directory(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FlexIPError(
                f"{path} not found: an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                "(written by FlexIPAdapter.save_pretrained or `flexip train`)"
            )
    try:
        config_data = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FlexIPError(f"{config_path} is not valid JSON ({e}); re-export the adapter") from e
    if not isinstance(config_data, dict):
        raise FlexIPError(f"{config_path}: expected a JSON object of settings; re-export the adapter")
    return directory, FlexIPConfig.from_dict(config_data, source=str(config_path))
