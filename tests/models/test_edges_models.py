"""Model files a user gives flexip: weights are only ever read from safetensors, never unpickled, and an adapter
file whose tensors are not floating point is refused; each in one line naming the file, in Python and on the
command line."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from flexip import FlexIPPipeline
from flexip.cli import main
from flexip.errors import FlexIPError
from flexip.references.encoded import EncodedReference

# Component folder of the tiny base -> the class that loads it.
BASE_COMPONENTS = {"unet": "diffusers.UNet2DConditionModel", "vae": "diffusers.AutoencoderKL",
                   "text_encoder": "transformers.CLIPTextModel"}  # fmt: skip
# Encoder folder of the kit -> (the adapter config key naming it, the class that loads it).
ENCODERS = {
    "image_encoder": ("image_encoder", "transformers.CLIPVisionModelWithProjection"),
    "dinov2": ("dino_encoder", "transformers.Dinov2Model"),
}


def pickled_copy(source: Path, destination: Path, component: str, cls: str) -> Path:
    """A copy of the model directory `source` whose `component` subfolder (or the folder itself for "") holds
    its weights as a pickle (`pytorch_model.bin`, what `safe_serialization=False` writes) instead of safetensors."""
    shutil.copytree(source, destination)
    folder = destination / component
    module, name = cls.split(".")
    model = getattr(importlib.import_module(module), name).from_pretrained(folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    pickle = "diffusion_pytorch_model.bin" if module == "diffusers" else "pytorch_model.bin"
    torch.save(model.state_dict(), folder / pickle)
    return destination


def adapter_copy(tiny_models, directory: Path, **models: str) -> Path:
    """A copy of the tiny adapter whose config names the kit's models by absolute path, or `models` instead."""
    shutil.copytree(tiny_models.adapter, directory)
    config = json.loads((directory / "flexip_config.json").read_text())
    for key in ("base_model", "image_encoder", "dino_encoder"):  # the copy's relative paths point elsewhere
        config[key] = models.get(key, str(tiny_models.root / config[key].removeprefix("../")))
    (directory / "flexip_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def place(tmp_path_factory, tiny_models):
    """A picture, base copies with one pickled component each, pickled encoders and adapters naming them, and
    adapters whose tensors are integers or booleans under the right names and shapes."""
    root = tmp_path_factory.mktemp("model-files")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        root / "dog.png"
    )
    for component, cls in BASE_COMPONENTS.items():
        pickled_copy(tiny_models.base, root / f"base-{component}", component, cls)
    for folder, (key, cls) in ENCODERS.items():
        pickled_copy(getattr(tiny_models, folder), root / folder, "", cls)
        adapter_copy(tiny_models, root / f"adapter-{folder}", **{key: str(root / folder)})
    for kind, convert in {"int64": lambda t: t.to(torch.int64), "bool": lambda t: t > 0}.items():
        directory = adapter_copy(tiny_models, root / f"adapter-{kind}")
        weights = load_file(directory / "flexip_adapter.safetensors")
        name = sorted(weights)[len(weights) // 2]
        weights[name] = convert(weights[name] * 10)
        save_file(weights, directory / "flexip_adapter.safetensors")
    return root


# (what is wrong, the Python arguments of FlexIPPipeline.from_pretrained, the CLI options, what the line names)
CASES = [
    *[(f"base {component} pickled", {"base": f"base-{component}"}, ["--base", f"base-{component}"], "safetensors")
      for component in BASE_COMPONENTS],
    ("image encoder pickled", {"image_encoder": "image_encoder"}, ["--adapter", "adapter-image_encoder"], "safetensors"),
    ("DINOv2 pickled", {"dino_encoder": "dinov2"}, ["--adapter", "adapter-dinov2"], "safetensors"),
    ("adapter int64", {"adapter": "adapter-int64"}, ["--adapter", "adapter-int64"], "int64"),
    ("adapter bool", {"adapter": "adapter-bool"}, ["--adapter", "adapter-bool"], "bool"),
]  # fmt: skip


@pytest.mark.parametrize("what, python, cli, named", CASES, ids=[case[0] for case in CASES])
def test_pickled_or_non_float_model_files_are_refused_in_one_line(place, tiny_models, capsys, what, python, cli,
                                                                  named):  # fmt: skip
    arguments = {"base": tiny_models.base, "adapter": tiny_models.adapter}
    arguments.update({key: place / value for key, value in python.items()})
    with pytest.raises(FlexIPError, match=named) as error:
        FlexIPPipeline.from_pretrained(**arguments)
    assert "\n" not in str(error.value)

    options = {
        "--base": str(tiny_models.base),
        "--adapter": str(tiny_models.adapter),
        cli[0]: str(place / cli[1]),
    }
    argv = [
        "generate",
        "--reference",
        str(place / "dog.png"),
        "--prompt",
        "a dog",
        "--out",
        str(place / "a.png"),
    ]
    assert main([*argv, *[a for item in options.items() for a in item], "--steps", "1"]) == 2
    err = capsys.readouterr().err
    # Loading models draws progress bars on stderr; the error is the one line of flexip's own, the last.
    lines = [line for line in err.strip().splitlines() if line.startswith("flexip ")]
    assert (
        "Traceback" not in err and len(lines) == 1 and err.strip().endswith(lines[0]) and named in lines[0]
    ), err
    assert not (place / "a.png").exists()


@pytest.mark.parametrize(
    "tensor, named",
    [(torch.ones(1, 32, dtype=torch.int64), "int64"), (torch.ones(1, 32, dtype=torch.bool), "bool"),
     (torch.full((1, 32), float("nan")), "not finite")],
    ids=["int64", "bool", "nan"],
)  # fmt: skip
def test_an_encoded_reference_of_non_float_or_non_finite_features_is_refused(tmp_path, tensor, named):
    path = tmp_path / "subject.safetensors"
    save_file({"clip_embeds": tensor, "dino_tokens": torch.zeros(1, 5, 32)}, path)
    with pytest.raises(FlexIPError, match=named) as error:
        EncodedReference.load(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("component", sorted(BASE_COMPONENTS))
def test_training_never_unpickles_a_base_component(place, tiny_models, tmp_path, capsys, component):
    from fixtures import train_on_the_kit

    run = tmp_path / "run"
    assert train_on_the_kit(tiny_models, run, "--set", f"model.base={place / f'base-{component}'}") == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("flexip ")]
    assert "Traceback" not in err and len(lines) == 1 and "safetensors" in lines[0], err
    assert f"base-{component}" in lines[0] and not (run / "checkpoints").exists()
