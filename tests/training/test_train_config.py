"""Training config and early failures: typos, bad manifests and missing models stop at once, in one line."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest
import torch

from flexip.cli import main
from flexip.errors import FlexIPError
from flexip.settings.numbers import DTYPES
from flexip.training.config import PRECISION_DTYPES, TrainConfig, load_config
from flexip.training.objective import condition_dropout
from flexip.training.optimization import build_optimizer

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


@pytest.mark.parametrize("name", ["tiny.yaml", "sd15.yaml", "tiny-sdxl.yaml", "sdxl.yaml", "tiny-flux.yaml", "flux.yaml"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name)
    assert isinstance(config, TrainConfig)


def test_sd15_config_is_the_papers_recipe():
    config = load_config(CONFIGS / "sd15.yaml")
    assert (config.learning_rate, config.weight_decay, config.batch_size) == (1e-4, 0.01, 8)
    assert config.data.resolution == 512 and config.data.video_fraction == 0.5
    assert dataclasses.astuple(config.dropout) == (0.05, 0.05, 0.05, None)
    assert config.data.swap_captions == 0.0
    assert config.model.image_encoder == "h94/IP-Adapter/models/image_encoder"
    assert config.model.dino_encoder == "facebook/dinov2-large"
    assert (config.model.gate.image_init, config.model.gate.video_init) == (0.8, 0.2)


def test_the_accelerate_ddp_config_parses_as_multi_gpu_data_parallel():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS.parent / "accelerate" / "ddp.yaml"))
    assert config.distributed_type == "MULTI_GPU" and config.num_processes == 8 and not config.use_cpu


def test_sdxl_config_is_the_sd15_recipe_at_1024_px_with_the_same_encoders():
    xl, sd15 = load_config(CONFIGS / "sdxl.yaml"), load_config(CONFIGS / "sd15.yaml")
    assert xl.model.base == "stabilityai/stable-diffusion-xl-base-1.0" and xl.data.resolution == 1024
    assert (xl.model.image_encoder, xl.model.dino_encoder) == (sd15.model.image_encoder, sd15.model.dino_encoder)
    assert (xl.dropout, xl.model.gate, xl.learning_rate) == (sd15.dropout, sd15.model.gate, sd15.learning_rate)
    effective = xl.batch_size * xl.gradient_accumulation_steps
    assert effective == sd15.batch_size * sd15.gradient_accumulation_steps  # pairs per process and optimizer step


def test_flux_config_fits_the_memory_plan_in_its_header():
    """The header's plan assumes FSDP2-ready bf16, gradient checkpointing, 512 px and batch 4, and the
    flow-matching defaults of diffusers' FLUX examples."""
    flux = load_config(CONFIGS / "flux.yaml")
    assert flux.model.base == "black-forest-labs/FLUX.1-dev" and flux.min_snr_gamma == 0.0
    assert (flux.mixed_precision, flux.gradient_checkpointing) == ("bf16", True)
    assert (flux.data.resolution, flux.batch_size) == (512, 4) and flux.data.resolution % 16 == 0
    assert (flux.flow_matching.weighting_scheme, flux.flow_matching.guidance) == ("logit_normal", 3.5)
    header = (CONFIGS / "flux.yaml").read_text().split("\nmodel:")[0]
    assert "FSDP2" in header and "gradient checkpointing" in header and "batch 4 at 512 px" in header


def test_overrides_reach_nested_keys_and_parse_values(tmp_path):
    config = load_config(
        CONFIGS / "tiny.yaml",
        [
            "data.video_fraction=0.25",
            "validation.preservation=[0, 1]",
            "learning_rate=3e-4",
            "output_dir=x y",
        ],
    )
    assert config.data.video_fraction == 0.25
    assert config.validation.preservation == [0.0, 1.0]
    assert config.learning_rate == 3e-4  # PyYAML alone would read "3e-4" as a string
    assert config.output_dir == "x y"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.manifets=x.jsonl", "unknown key data.manifets (did you mean data.manifest?)"),
        ("batch_size=many", "batch_size must be an integer, got 'many'"),
        ("batch_size=0", "batch_size: 0 must be at least 1"),
        ("data.video_fraction=1.5", "data.video_fraction"),
        ("mixed_precision=fp8", "mixed_precision"),
        ("dropout.text=0.95", "dropout"),
        ("subject_loss_weight=-1", "subject_loss_weight: -1.0 must be 0 (off) or positive"),
        ("log_with=[mlflow]", "log_with"),
    ],
)
def test_config_mistakes_name_the_key(override, message):
    with pytest.raises(FlexIPError, match=re.escape(message)):
        load_config(CONFIGS / "tiny.yaml", [override])


def test_each_mixed_precision_stores_the_frozen_models_in_a_dtype_flexip_names():
    assert set(PRECISION_DTYPES.values()) <= set(DTYPES)


def test_unknown_key_in_yaml_file_is_an_error(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text((CONFIGS / "tiny.yaml").read_text().replace("learning_rate:", "learnig_rate:"))
    with pytest.raises(
        FlexIPError, match=re.escape(f"{path}: unknown key learnig_rate (did you mean learning_rate?)")
    ):
        load_config(path)


def _cli_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_cli_reports_config_typo_and_missing_config_in_one_line(capsys, tmp_path):
    err = _cli_error(capsys, ["train", "--config", str(CONFIGS / "tiny.yaml"), "--set", "max_step=3"])
    assert "unknown key max_step (did you mean max_steps?)" in err
    err = _cli_error(capsys, ["train", "--config", str(tmp_path / "nope.yaml")])
    assert "nope.yaml" in err and "cannot read" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read manifest"),
        ("", "has no training pairs"),
        ("{not json\n", ":1: not valid JSON"),
        ('{"reference": "a.png", "target": "a.png", "caption": ""}\n', ":1: missing field(s) modality"),
        (
            '{"reference": "a.png", "target": "a.png", "caption": "", "modality": "audio"}\n',
            "modality 'audio'",
        ),
        ('{"reference": "/abs.png", "target": "a.png", "caption": "", "modality": "image"}\n', "is absolute"),
    ],
)
def test_bad_manifest_fails_before_any_model_loads(capsys, tmp_path, content, message):
    manifest = tmp_path / "train.jsonl"
    if content is not None:
        manifest.write_text(content)
    overrides = [f"data.manifest={manifest}", "model.tiny_models=''", "model.base=./missing-base",
                 f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    argv = ["train", "--config", str(CONFIGS / "tiny.yaml"), *[a for o in overrides for a in ("--set", o)]]
    err = _cli_error(capsys, argv)
    assert message in err and str(manifest) in err


def test_missing_base_model_fails_at_once(capsys, tmp_path):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text('{"reference": "a.png", "target": "a.png", "caption": "", "modality": "image"}\n')
    overrides = [f"data.manifest={manifest}", "model.tiny_models=''", "model.base=./no/such/base",
                 "data.video_fraction=0", "batch_size=1", f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    err = _cli_error(
        capsys,
        ["train", "--config", str(CONFIGS / "tiny.yaml"), *[a for o in overrides for a in ("--set", o)]],
    )
    assert "model.base" in err and "./no/such/base" in err and "does not exist" in err


def test_a_modality_the_ratio_needs_but_the_manifest_lacks_is_an_error(capsys, tmp_path):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text('{"reference": "a.png", "target": "a.png", "caption": "", "modality": "image"}\n')
    overrides = [f"data.manifest={manifest}", f"output_dir={tmp_path / 'run'}", "model.tiny_models=''"]
    err = _cli_error(
        capsys,
        ["train", "--config", str(CONFIGS / "tiny.yaml"), *[a for o in overrides for a in ("--set", o)]],
    )
    assert "no video pairs" in err and "data.video_fraction" in err


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_asking_for_wandb_without_it_says_how_to_install(tmp_path):
    from flexip.training.trainer import train

    config = load_config(CONFIGS / "tiny.yaml", ["log_with=[tensorboard, wandb]", f"output_dir={tmp_path}"])
    with pytest.raises(FlexIPError, match="pip install wandb"):
        train(config)


def test_condition_dropout_probabilities_are_disjoint_and_as_configured():
    from flexip.training.config import DropoutConfig

    generator = torch.Generator().manual_seed(0)
    modality = torch.tensor([0, 1]).repeat(100_000)  # image, video, image, ...
    config = DropoutConfig(text=0.1, image=0.2, both=0.05, text_on_image_pairs=0.6)
    drop_text, drop_image = condition_dropout(modality, config, generator)
    for index, text_rate in ((0, 0.6), (1, 0.1)):  # image pairs drop their caption at their own rate
        text, image = drop_text[modality == index], drop_image[modality == index]
        assert abs((text & image).float().mean().item() - 0.05) < 0.005
        assert abs((text & ~image).float().mean().item() - text_rate) < 0.005
        assert abs((image & ~text).float().mean().item() - 0.2) < 0.005


def test_dropout_rates_and_data_shares_are_checked():
    with pytest.raises(FlexIPError, match="at most 1 for image pairs"):
        load_config(CONFIGS / "tiny.yaml", ["dropout.text_on_image_pairs=0.95"])
    with pytest.raises(FlexIPError, match="data.swap_captions: -0.1 must be in"):
        load_config(CONFIGS / "tiny.yaml", ["data.swap_captions=-0.1"])


def test_gate_logits_have_no_weight_decay(tiny_models):
    from flexip.models.adapter import FlexIPAdapter

    adapter = FlexIPAdapter.from_pretrained(tiny_models.adapter)
    optimizer = build_optimizer(adapter, load_config(CONFIGS / "tiny.yaml", ["weight_decay=0.5"]))
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay.pop(id(adapter.gate.logits)) == 0.0
    assert set(decay.values()) == {0.5}
    assert len(decay) == len(list(adapter.parameters())) - 1


def test_resume_from_a_folder_that_is_not_a_checkpoint_fails_at_once(capsys, tmp_path):
    overrides = ["model.tiny_models=''", f"output_dir={tmp_path / 'run'}"]
    argv = [
        "train",
        "--config",
        str(CONFIGS / "tiny.yaml"),
        "--resume",
        str(tmp_path),
        *[a for o in overrides for a in ("--set", o)],
    ]
    err = _cli_error(capsys, argv)
    assert f"--resume {tmp_path}: not a checkpoint" in err


def test_an_older_tiny_kit_gets_its_data_set_and_keeps_its_models(tmp_path, tiny_models):
    import shutil

    from flexip.training.components import prepare_tiny_models
    from flexip.training.config import ModelConfig

    kit = tmp_path / "kit"
    shutil.copytree(tiny_models.root, kit, ignore=shutil.ignore_patterns("data"))
    # A rewrite of the kit would replace adapter/ whole (it is saved atomically), taking this file with it.
    (kit / "adapter" / "notes.txt").write_text("mine")
    prepare_tiny_models(ModelConfig(tiny_models=str(kit)))
    assert (kit / "data" / "manifest.jsonl").is_file()
    assert (kit / "adapter" / "notes.txt").read_text() == "mine"


def test_a_base_whose_denoiser_flexip_only_generates_on_is_refused_before_any_model_loads(tiny_models, tmp_path, capsys):
    import json
    import shutil

    from fixtures import train_on_the_kit

    base = shutil.copytree(tiny_models.base, tmp_path / "base")
    index = json.loads((base / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNetMotionModel"]  # AnimateDiff's: FlexIP joins it for generation only
    (base / "model_index.json").write_text(json.dumps(index))
    assert train_on_the_kit(tiny_models, tmp_path / "run", "--set", f"model.base={base}") == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flexip ")]
    assert len(lines) == 1 and "is a UNetMotionModel base" in lines[0] and "does not train on it yet" in lines[0]
    assert "FLUX.1" in lines[0]  # among the bases it trains on
