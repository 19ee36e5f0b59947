"""Calibrating an adapter: measure its raw gate on a set of pairs, fit the dial's map, write it with the adapter.

    from flexip.calibration.calibrate import calibrate_adapter, processes
    from flexip.calibration.pairs import read_pairs
    from flexip.calibration.scorers import MetricScorer

    scorer = MetricScorer.from_pretrained(device=processes().device)
    calibrate_adapter("runs/a/adapter", read_pairs("data/val.jsonl", 32), scorer, out="runs/a/calibrated")

What `flexip calibrate` runs (and a training run with `calibrate: true`, in place). Every process of a launch
calls it: the work is split between them and the main process writes. The measurement is on the raw gate, so an
adapter calibrated before is measured afresh and its calibration replaced.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from accelerate import PartialState

from .. import __version__
from ..errors import FlexIPError
from ..models.config_file import WEIGHTS_NAME, read_config
from ..pipeline.front_end import load_pipeline
from ..settings.generation import ModelSettings
from .calibrated_adapter import write_calibrated_copy, write_calibration
from .measure import Measurement, measure
from .pairs import PairSet
from .plan import CalibrationPlan
from .scorers import Scorer
from .work import WorkFolder, work_folder


def processes() -> PartialState:
    """This launch's processes (one without a launcher), on their devices."""
    # accelerate spreads processes without a GPU (over gloo) only when told they are CPU processes.
    return PartialState(cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)


def calibrate_adapter(
    adapter: str | os.PathLike, pairs: PairSet, scorer: Scorer, plan: CalibrationPlan | None = None,
    out: str | os.PathLike | None = None, base: str | None = None,
) -> Measurement:  # fmt: skip
    """Calibrate the adapter folder `adapter` on `pairs` with `scorer`, into the new folder `out` (None: into
    `adapter`'s own config), as `plan` says (default: `CalibrationPlan()`). `base` is the base model to generate
    with (default: the one the adapter records).

    Measurements go to `<out>.partial/` (or `<adapter>.partial/`) as they are made: after an interruption the
    same call resumes there; that folder is removed once the adapter is written. Returns the calibration and how
    many images this process generated.
    """
    adapter, _ = read_config(adapter)
    plan = plan or CalibrationPlan()
    target = adapter if out is None else Path(out)
    if out is not None and target.exists():
        raise FlexIPError(f"{target} already exists; calibrate into a new folder")
    state = processes()
    dtype = "float16" if state.device.type == "cuda" else "float32"  # as `flexip generate` loads it there
    settings = {
        "flexip_version": __version__, "adapter_weights": _digest(adapter / WEIGHTS_NAME), "base": base,
        "pairs": pairs.fingerprint(), "seeds": list(plan.seeds), "points": plan.points, "steps": plan.steps,
        "guidance": plan.guidance, "identity_scorer": scorer.identity_name, "prompt_scorer": scorer.prompt_name,
        "device": state.device.type, "dtype": dtype,
    }  # fmt: skip
    work = WorkFolder(work_folder(target), settings)
    work.check()
    loaded = load_pipeline(
        ModelSettings(adapter=str(adapter), base=base, device=str(state.device), dtype=dtype)
    )
    loaded.pipe.set_progress_bar_config(disable=True)
    if state.is_main_process:
        work.create()
    measurement = measure(loaded.pipe, pairs, scorer, plan, work, state)
    if state.is_main_process:
        if out is None:
            write_calibration(adapter, measurement.calibration)
        else:
            write_calibrated_copy(adapter, target, measurement.calibration)
        work.remove()
    state.wait_for_everyone()
    return measurement


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
