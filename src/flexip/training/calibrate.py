"""`calibrate: true`: the run's exported adapter calibrated in place when training ends (`flexip.calibration`).

The pairs are the validation sheet's: each of its references with each of its prompts; the scorer is the
evaluation's DINO-I and CLIP-T on the config's backbones. The calibration keeps its measurements in
`adapter.partial/` as it goes, so an interrupted one continues on `--resume latest` (the run's last
checkpoint is its final step: nothing is trained again). An export of new weights drops the calibration and
those measurements (`discard_measurements`), and a run whose adapter is calibrated already is left as it is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger

from ..calibration.calibrate import calibrate_adapter
from ..calibration.pairs import Pair, PairSet, evenly
from ..calibration.scorers import MetricScorer
from ..calibration.work import work_folder
from ..models.config_file import read_config
from .config import TrainConfig
from .sources import Source, validation_pairs
from .validation import validation_references

logger = get_logger(__name__)


def calibrate_export(
    config: TrainConfig, accelerator: Accelerator, adapter_dir: Path, source: Source
) -> None:
    """Calibrate the exported adapter in `adapter_dir` (every process takes part), unless it is already."""
    accelerator.wait_for_everyone()  # the main process has exported it
    if read_config(adapter_dir)[1].calibration is not None:
        return
    references = validation_references(validation_pairs(source))
    if not references:
        logger.warning(f"{adapter_dir} is not calibrated: no training pair's reference could be read")
        return
    found = [Pair(image, prompt, f"validation reference {index}")
             for index, image in enumerate(references) for prompt in config.validation.prompts]  # fmt: skip
    chosen = evenly(found, config.calibration.pairs)
    pairs = PairSet(tuple(chosen), f"the validation pairs of the training run {adapter_dir.parent.resolve()}: "
                    f"{len(chosen)} of {len(found)} (its references x validation.prompts)")  # fmt: skip
    scorer = MetricScorer.from_pretrained(
        config.calibration.clip_model, config.calibration.dino_model, accelerator.device
    )
    logger.info(f"calibrating {adapter_dir} on {len(pairs)} validation pairs (calibrate: true)")
    calibrate_adapter(adapter_dir, pairs, scorer, config.calibration.plan())


def discard_measurements(adapter_dir: Path) -> None:
    """Forget an unfinished calibration of an adapter whose weights were just exported anew: it measured the old
    ones."""
    shutil.rmtree(work_folder(adapter_dir), ignore_errors=True)
