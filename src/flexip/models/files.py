"""An adapter directory on disk: `flexip_config.json` and `flexip_adapter.safetensors` (docs/formats.md).

Writes are atomic (a new directory appears whole; in an existing one each file is replaced on its own), and
reading checks every tensor against the adapter the config describes before any weight is used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from ..atomic import atomic_directory, atomic_write_bytes, recover_directory
from ..errors import FlexIPError
from .config import FORMAT_VERSION, FlexIPConfig
from .config_file import CONFIG_NAME, WEIGHTS_NAME


def write_adapter(directory: str | os.PathLike, state: dict[str, torch.Tensor], config: FlexIPConfig) -> None:
    """Write the config and the weights into `directory`; every other file in it is left alone.

    A new directory appears whole; in an existing one each file is replaced atomically, the weights first: a
    crash between the two leaves new weights under the old config, which is the same config while training,
    and otherwise a mismatch loading names.
    """
    directory = recover_directory(directory)
    files = {
        WEIGHTS_NAME: save(state, metadata={"format": "pt", "flexip_format_version": str(FORMAT_VERSION)}),
        CONFIG_NAME: config_bytes(config),
    }
    if directory.exists() and not directory.is_dir():
        raise FlexIPError(f"{directory} is a file; save the adapter into a folder")
    if directory.is_dir():
        for name, data in files.items():
            atomic_write_bytes(directory / name, data)
        return
    with atomic_directory(directory) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)


def config_bytes(config: FlexIPConfig) -> bytes:
    """The contents of `flexip_config.json` for `config`."""
    return (json.dumps(config.to_dict(), indent=2) + "\n").encode()


def read_weights(directory: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights file's tensors, each checked against `expected` (the state dict the config implies): the
    same names and shapes, floating point, finite."""
    weights_path = directory / WEIGHTS_NAME
    try:
        state = load_file(weights_path)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise FlexIPError(f"{weights_path} is not a readable safetensors file ({e}); re-export the adapter") from e
    for name, tensor in expected.items():
        if name not in state:
            raise FlexIPError(f"{weights_path}: tensor {name} is missing; the file does not match {CONFIG_NAME}")
        if not state[name].is_floating_point():  # loading would cast it silently into the float parameter
            raise FlexIPError(
                f"{weights_path}: tensor {name} holds {str(state[name].dtype).removeprefix('torch.')} values, not "
                "floating-point weights; the file is not a FlexIP adapter's: re-export the adapter"
            )
        if state[name].shape != tensor.shape:
            raise FlexIPError(
                f"{weights_path}: tensor {name} has shape {tuple(state[name].shape)}, "
                f"{CONFIG_NAME} implies {tuple(tensor.shape)}"
            )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise FlexIPError(f"{weights_path}: unexpected tensor {unexpected[0]} ({len(unexpected)} in all)")
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:
        raise FlexIPError(
            f"{weights_path}: tensor {broken[0]} holds NaN or infinite values ({len(broken)} tensors in all), "
            "which would give blank images; use an earlier checkpoint of the training run"
        )
    return state
