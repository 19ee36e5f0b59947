"""The gate an adapter learned per data modality, read from its weights file without torch: training's g for
still images (invariant pairs) and for video frames (variant pairs), which front ends show as suggested
starting points for the dial. At inference the user sets the dial; these values are only what training
settled on (`gate.DynamicWeightGate`)."""

from __future__ import annotations

import math
import os

from ..errors import FlexIPError
from ..settings.dial_map import DialMap
from .config import MODALITIES, FlexIPConfig
from .config_file import WEIGHTS_NAME, read_config

GATE_LOGITS = "gate.logits"  # shape (len(MODALITIES),), in MODALITIES' order


def learned_points(directory: str | os.PathLike) -> dict[str, dict[str, float]] | None:
    """{modality: {"gate": g, "preservation": u}} of the adapter in `directory`: the g it learned for each
    modality, and on a calibrated adapter the dial value u that stands for it (`preservation`, absent without
    a calibration); None for weights numpy cannot read (bfloat16)."""
    from safetensors import safe_open

    directory, config = read_config(directory)
    path = directory / WEIGHTS_NAME
    try:
        with safe_open(path, framework="numpy") as weights:
            logits = weights.get_tensor(GATE_LOGITS)
    except TypeError:  # a dtype numpy lacks: no suggestion rather than torch before the command starts
        return None
    except Exception as e:  # safetensors raises its own error types for corrupt files and missing tensors
        raise FlexIPError(f"{path}: cannot read its {GATE_LOGITS} ({e}); re-export the adapter") from e
    points = {name: {"gate": round(1 / (1 + math.exp(-float(logit))), 4)} for name, logit in zip(MODALITIES, logits)}
    dial = _inverse(config)
    if dial is not None:
        for point in points.values():
            point["preservation"] = round(dial(point["gate"]), 4)
    return points


def _inverse(config: FlexIPConfig) -> DialMap | None:
    """The calibration's map read backwards, g -> u: the same knots with the axes swapped, since the map is
    piecewise linear and strictly increasing from (0, 0) to (1, 1)."""
    if config.calibration is None:
        return None
    return DialMap(tuple(config.calibration.gate), tuple(config.calibration.dial))
