"""`flexip calibrate` on the tiny kit, offline: a new adapter folder (the same weights, the config with its
calibration, its models still found), never the old one; an existing --out refused; an interrupted calibration
rerun resumes to the same calibration bit for bit; a calibrated adapter is measured again on the raw gate."""

import json
import shutil

import pytest

from flexip.calibration.calibrate import calibrate_adapter
from flexip.calibration.calibrated_adapter import write_calibrated_copy
from flexip.calibration.pairs import read_pairs
from flexip.calibration.plan import CalibrationPlan
from flexip.calibration.scorers import MetricScorer
from flexip.cli import main
from flexip.models.adapter import FlexIPAdapter
from flexip.models.config_file import CONFIG_NAME, WEIGHTS_NAME

# Two pairs, one seed, the five starting gates, two steps: ten tiny images a calibration.
SEEDS, POINTS, PAIRS, STEPS = [0], 5, 2, 2


def calibrate(tiny_models, adapter, out, *extra: str) -> int:
    return main(["calibrate", "--adapter", str(adapter), "--data", str(tiny_models.benchmark), "--out", str(out),
                 "--clip-model", str(tiny_models.clip_model), "--dino-model", str(tiny_models.dino_model),
                 "--seeds", ",".join(map(str, SEEDS)), "--points", str(POINTS), "--pairs", str(PAIRS),
                 "--steps", str(STEPS), *extra])  # fmt: skip


def calibration(adapter) -> dict:
    return json.loads((adapter / CONFIG_NAME).read_text())["calibration"]


@pytest.fixture(scope="module")
def calibrated(tiny_models, tmp_path_factory):
    """The tiny kit's adapter calibrated by the command (read only), and the kit's adapter files' bytes."""
    before = {name: (tiny_models.adapter / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}
    out = tmp_path_factory.mktemp("calibrate") / "calibrated"
    assert calibrate(tiny_models, tiny_models.adapter, out) == 0
    return out, before


def test_calibrate_writes_a_new_adapter_folder_and_never_the_old_one(tiny_models, calibrated, capsys):
    out, before = calibrated
    assert {name: (tiny_models.adapter / name).read_bytes() for name in before} == before
    assert (out / WEIGHTS_NAME).read_bytes() == before[WEIGHTS_NAME]
    assert sorted(path.name for path in out.parent.iterdir()) == ["calibrated"]  # the work folder is gone

    old, new = FlexIPAdapter.from_pretrained(tiny_models.adapter), FlexIPAdapter.from_pretrained(out)
    assert new.config.base_model != old.config.base_model  # "../base" is named from the new folder
    for name in ("base_model", "image_encoder", "dino_encoder"):
        assert new.resolve_model(getattr(new.config, name)) == old.resolve_model(getattr(old.config, name))
    assert new.config.calibration is not None and old.config.calibration is None
    record = calibration(out)
    assert [point["gate"] for point in record["points"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert record["gate"] == [0.0, 0.25, 0.5, 0.75, 1.0] and record["dial"][0] == 0.0 and record["dial"][-1] == 1.0
    assert (record["pairs"], record["seeds"], record["images"]) == (PAIRS, SEEDS, PAIRS * len(SEEDS) * POINTS)
    assert record["identity_scorer"] == f"DINO-I {tiny_models.dino_model}"
    assert record["prompt_scorer"] == f"CLIP-T {tiny_models.clip_model}"
    assert str(tiny_models.benchmark) in record["pair_set"]

    assert calibrate(tiny_models, tiny_models.adapter, out) == 2
    assert "already exists" in capsys.readouterr().err


class Interrupted(MetricScorer):
    """The evaluation's scorer, stopped as Ctrl-C would stop it after `units` units."""

    def __init__(self, scorer: MetricScorer, units: int):
        super().__init__(scorer.clip, scorer.dino)
        self.units = units

    def prompt(self, images, prompts):
        if self.units == 0:
            raise KeyboardInterrupt
        self.units -= 1
        return super().prompt(images, prompts)


def test_an_interrupted_calibration_rerun_resumes_to_the_same_calibration(tiny_models, calibrated, tmp_path, capsys):
    out, work = tmp_path / "calibrated", tmp_path / "calibrated.partial"
    metrics = MetricScorer.from_pretrained(str(tiny_models.clip_model), str(tiny_models.dino_model))
    scorer = Interrupted(metrics, units=1)
    plan = CalibrationPlan(SEEDS, POINTS, STEPS)
    with pytest.raises(KeyboardInterrupt):
        calibrate_adapter(tiny_models.adapter, read_pairs(tiny_models.benchmark, PAIRS), scorer, plan, out=out)
    assert not out.exists() and len((work / "part-0.jsonl").read_text().splitlines()) == 1

    assert calibrate(tiny_models, tiny_models.adapter, out, "--seeds", "0,1") == 2
    assert "seeds: [0] before, [0, 1] now" in capsys.readouterr().err  # other settings: refused, kept

    assert calibrate(tiny_models, tiny_models.adapter, out) == 0
    assert f"({POINTS} generated now" in capsys.readouterr().out  # the first pair's images were not made again
    assert calibration(out) == calibration(calibrated[0])
    assert not work.exists()


def test_a_calibrated_adapter_is_measured_again_on_the_raw_gate(tiny_models, calibrated, tmp_path):
    twice = tmp_path / "twice"
    old = FlexIPAdapter.from_pretrained(calibrated[0]).config.calibration
    odd = type(old)(dial=[0.0, 0.9, 1.0], gate=[0.0, 0.1, 1.0])
    write_calibrated_copy(calibrated[0], tmp_path / "odd", odd)

    assert calibrate(tiny_models, tmp_path / "odd", twice) == 0

    assert calibration(twice) == calibration(calibrated[0])  # the raw gate measured, the odd map replaced
    shutil.rmtree(tmp_path / "odd")
