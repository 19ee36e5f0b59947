"""`flexip eval score` with a backbone that cannot serve its metric, a table of them: each ends in exit code 2
and one line on stderr naming the option and what is wrong, without a traceback and before any image is
scored. The right backbones are the tiny kit's (`flexip tiny-models`: metrics/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from flexip.cli import main
from flexip.evaluation.aesthetic import AestheticHead
from flexip.tiny import WIDTH


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A results directory of two generated images, not yet scored."""
    root = tmp_path_factory.mktemp("results")
    reference = root / "reference.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(reference)
    lines = []
    for dial in (0.0, 1.0):
        image = f"images/preservation-{dial:g}/shape/00/0.png"
        (root / image).parent.mkdir(parents=True)
        Image.new("RGB", (32, 32), (int(255 * dial), 100, 50)).save(root / image)
        lines.append({"image": image, "subject": "shape", "category": "shape", "prompt_index": 0,
                      "prompt": "a red circle", "reference": str(reference), "real_images": [str(reference)],
                      "sample": "0", "dial": dial})  # fmt: skip
    (root / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    settings = {"format_version": 1, "label": "results", "method": "flexip", "dial_name": "preservation",
                "benchmark": {"name": "jsonl"}}  # fmt: skip
    (root / "generation.json").write_text(json.dumps(settings))
    return root


def head_with_other_tensors(models, tmp: Path) -> Path:
    """An aesthetic head of the right first layer whose later layers are of another shape, one missing."""
    state = AestheticHead(embed_dim=WIDTH).state_dict()
    state["layers.2.weight"] = torch.zeros(128, 1000)
    del state["layers.7.bias"]
    save_file(state, tmp / "head.safetensors")
    return tmp / "head.safetensors"


def head_of_another_width(models, tmp: Path) -> Path:
    """A whole aesthetic head that reads 8-d embeddings, where the kit's CLIP gives WIDTH-d ones."""
    save_file(AestheticHead(embed_dim=8).state_dict(), tmp / "head.safetensors")
    return tmp / "head.safetensors"


def clip_without_processor(models, tmp: Path) -> Path:
    """The kit's CLIP model saved without its processor (no tokenizer, no image processor)."""
    folder = tmp / "clip"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(models.clip_model / name, folder / name)
    return folder


def part(name: str):
    """The path of a part of the tiny kit (a `ModelSet` property), as an option's value."""
    return lambda models, tmp: getattr(models, name)


def missing(models, tmp: Path) -> Path:
    return tmp / "missing"


# (case, option, its value from (the tiny kit, this case's folder), what the one line names)
CASES = [
    ("clip-vision-only", "--clip-model", part("image_encoder"), "'clip_vision_model' model, not a CLIP"),
    ("iqa-a-dinov2", "--iqa-model", part("dinov2"), "'dinov2' model, not a CLIP"),
    ("aesthetic-model-a-vit", "--aesthetic-model", part("dino_model"), "'vit' model, not a CLIP"),
    ("dino-a-clip", "--dino-model", part("clip_model"), "'clip' model, not a DINO ViT"),
    ("dino-vision-only", "--dino-model", part("image_encoder"), "'clip_vision_model' model, not a DINO"),
    ("clip-missing", "--clip-model", missing, "missing does not exist"),
    ("dino-missing", "--dino-model", missing, "missing does not exist"),
    ("clip-a-pipeline", "--clip-model", part("base"), "cannot be loaded"),
    ("clip-without-processor", "--clip-model", clip_without_processor, "has no CLIP processor"),
    ("head-other-tensors", "--aesthetic-head", head_with_other_tensors, "layers.2.weight is (128, 1000)"),
    ("head-a-dino", "--aesthetic-head", lambda m, t: m.dino_model / "model.safetensors", "not an aesthetic"),
    ("head-of-another-width", "--aesthetic-head", head_of_another_width, "reads 8-d embeddings"),
]


@pytest.mark.parametrize(
    ("option", "value", "named"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_a_bad_backbone_ends_in_one_line_naming_it(
    option, value, named, results, tiny_models, tmp_path, capsys
):
    clip, dino, head = map(str, (tiny_models.clip_model, tiny_models.dino_model, tiny_models.aesthetic_head))
    backbones = {"--clip-model": clip, "--iqa-model": clip, "--aesthetic-model": clip, "--dino-model": dino,
                 "--aesthetic-head": head}  # fmt: skip
    backbones[option] = str(value(tiny_models, tmp_path))
    before = sorted(results.rglob("*"))
    assert main(["eval", "score", str(results), *[arg for pair in backbones.items() for arg in pair]]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("flexip ")]
    assert "Traceback" not in err and "scoring" not in err and len(lines) == 1, err  # nothing was scored
    assert named in lines[0], lines[0]
    assert option in lines[0] or option == "--aesthetic-head", lines[0]  # a head is named by its file
    assert sorted(results.rglob("*")) == before
