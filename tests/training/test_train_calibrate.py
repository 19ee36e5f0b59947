"""`calibrate: true`: a training run calibrates its exported adapter in place on its validation pairs when it
ends, and a run resumed after its last step calibrates it then (what an interrupted calibration does)."""

import json
from pathlib import Path

from fixtures import train_on_the_kit
from flexip.models.config_file import CONFIG_NAME, WEIGHTS_NAME
from flexip.tiny import ModelSet
from flexip.training.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


def test_a_run_resumed_with_calibrate_calibrates_its_export_on_its_validation_pairs(tmp_path, tiny_models):
    run = tmp_path / "run"
    assert train_on_the_kit(tiny_models, run, "--max-steps", "1") == 0
    weights = (run / "adapter" / WEIGHTS_NAME).read_bytes()
    assert "calibration" not in json.loads((run / "adapter" / CONFIG_NAME).read_text())

    calibrate = ["calibrate=true", "calibration.pairs=2", "calibration.seeds=[0]", "calibration.points=5",
                 "calibration.steps=2", f"calibration.clip_model={tiny_models.clip_model}",
                 f"calibration.dino_model={tiny_models.dino_model}"]  # fmt: skip
    extra = [argument for setting in calibrate for argument in ("--set", setting)]
    assert train_on_the_kit(tiny_models, run, "--max-steps", "1", "--resume", "latest", *extra) == 0

    config = json.loads((run / "adapter" / CONFIG_NAME).read_text())
    assert (run / "adapter" / WEIGHTS_NAME).read_bytes() == weights  # nothing trained again, nothing rewritten
    record = config["calibration"]
    assert (record["pairs"], record["seeds"], len(record["points"])) == (2, [0], 5)
    assert record["pair_set"].startswith(f"the validation pairs of the training run {run.resolve()}: 2 of 4")
    assert config["format_version"] == 2 and not (run / "adapter.partial").exists()


def test_the_tiny_recipes_score_with_their_kits_metric_backbones():
    for name in ("tiny", "tiny-sdxl"):
        config = load_config(CONFIGS / f"{name}.yaml")
        kit = ModelSet(Path(config.model.tiny_models))
        assert config.calibration.clip_model == str(kit.clip_model)
        assert config.calibration.dino_model == str(kit.dino_model)
