"""Bad values through `flexip.cli.main(argv)`, a table of them: each ends in exit code 2 and one line on stderr
that names the value or file, without a traceback, and before any image is generated or any step trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from flexip.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml"
HEADER = "method,CLIP-T,CLIP-I,DINO-I,CLIP-IQA,Aesthetic\n"
GOOD_ROW = "Ours,0.3,0.8,0.6,0.7,6.0\n"


@pytest.fixture(scope="module")
def place(tmp_path_factory, tiny_models):
    """Files the bad commands point at: a reference, an existing image, a plain file, bad adapters and CSVs."""
    root = tmp_path_factory.mktemp("bad-values")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "dog.png")
    shutil.copy(root / "dog.png", root / "earlier.png")
    (root / "a-file").write_text("not a folder")

    def adapter(name: str, config_edit=None, weights_edit=None) -> None:
        directory = shutil.copytree(tiny_models.adapter, root / name)
        config = json.loads((directory / "flexip_config.json").read_text())
        for key in ("base_model", "image_encoder", "dino_encoder"):  # the copy's relative paths point elsewhere
            config[key] = str(tiny_models.root / config[key].removeprefix("../"))
        if config_edit:
            config_edit(config)
        (directory / "flexip_config.json").write_text(json.dumps(config))
        if weights_edit:
            weights = load_file(directory / "flexip_adapter.safetensors")
            weights_edit(weights)
            save_file(weights, directory / "flexip_adapter.safetensors")

    adapter("heads-text", lambda c: c["preservation"].update(heads="2"))
    adapter("dino-layer", lambda c: c.update(dino_layer=99))
    adapter("width-huge", lambda c: c["preservation"].update(width=10**9))
    adapter("too-big", lambda c: c["personalization"].update(head_dim=65536, heads=65536))
    adapter("gate-one", lambda c: c["gate"].update(image_init=1.0))
    adapter("nan-weights", weights_edit=lambda w: w[next(iter(w))].fill_(float("nan")))
    adapter("inf-weights", weights_edit=lambda w: w[max(w)].fill_(float("inf")))

    csvs = {
        "short-row": HEADER + GOOD_ROW + "Other,0.3,0.8\n",
        "stray-quote": HEADER + GOOD_ROW + 'Other,"0.3,0.8,0.6,0.7,6.0\n',
        "duplicate": HEADER + GOOD_ROW + GOOD_ROW,
        "nan": HEADER + GOOD_ROW + "Other,nan,0.8,0.6,0.7,6.0\n",
        "empty-name": HEADER + GOOD_ROW + ",0.3,0.8,0.6,0.7,6.0\n",
    }
    for name, text in csvs.items():
        (root / f"{name}.csv").write_text(text)
    (root / "latin1.csv").write_bytes((HEADER + "Café,0.3,0.8,0.6,0.7,6.0\n" + GOOD_ROW).encode("latin-1"))
    return root


def generate(place: Path, tiny_models, *extra: str, out: str | None = None) -> list[str]:
    out = str(place / "new.png") if out is None else out
    return [
        "generate", "--reference", str(place / "dog.png"), "--prompt", "a dog", "--out", out,
        "--base", str(tiny_models.base), "--adapter", str(tiny_models.adapter), "--steps", "2", *extra,
    ]  # fmt: skip


def with_adapter(place: Path, tiny_models, name: str) -> list[str]:
    argv = generate(place, tiny_models)
    argv[argv.index("--adapter") + 1] = str(place / name)
    return argv


def train(place: Path, tiny_models, *overrides: str) -> list[str]:
    settings = [
        "model.tiny_models=''", f"model.base={tiny_models.base}", f"model.image_encoder={tiny_models.image_encoder}",
        f"model.dino_encoder={tiny_models.dinov2}", f"data.manifest={tiny_models.manifest}",
        f"output_dir={place / 'run'}", "log_with=[]", "max_steps=1", *overrides,
    ]  # fmt: skip
    return ["train", "--config", str(CONFIG), *[a for s in settings for a in ("--set", s)]]


def rank(place: Path, name: str) -> list[str]:
    return ["eval", "rank", str(place / name), "--out", str(place / "rank-out")]


# (case, argv from (place, tiny_models), what the line must name)
CASES = [
    # generate: the seed, steps, device, strength, and where the image goes
    ("seed-65-bits", lambda p, t: generate(p, t, "--seed", str(2**64)), "--seed=18446744073709551616"),
    ("seed-negative", lambda p, t: generate(p, t, "--seed", "-1"), "--seed=-1"),
    ("steps-beyond-scheduler", lambda p, t: generate(p, t, "--steps", "5000"), "num_inference_steps=5000"),
    ("device-mps", lambda p, t: generate(p, t, "--device", "mps"), "--device mps"),
    ("device-cuda-index", lambda p, t: generate(p, t, "--device", "cuda:7"), "--device cuda:7"),
    ("scale-huge", lambda p, t: generate(p, t, "--scale", "1e30"), "--scale=1e+30"),
    ("scale-nan", lambda p, t: generate(p, t, "--scale", "nan"), "--scale=nan"),
    ("out-is-reference", lambda p, t: generate(p, t, out=str(p / "dog.png")), "is the --reference image"),
    ("out-is-reference-spelled-otherwise", lambda p, t: generate(p, t, out=str(p / "x" / ".." / "dog.png")),
     "is the --reference image"),
    ("out-exists", lambda p, t: generate(p, t, out=str(p / "earlier.png")), "--overwrite"),
    ("out-in-proc", lambda p, t: generate(p, t, out="/proc/flexip.png"), "--out /proc/flexip.png"),
    ("out-under-a-file", lambda p, t: generate(p, t, out=str(p / "a-file" / "x.png")), "a-file is a file"),
    ("sweep-out-is-a-file", lambda p, t: ["sweep", *generate(p, t, out=str(p / "a-file"))[1:]], "a-file is a file"),
    ("tiny-models-in-proc", lambda p, t: ["tiny-models", "/proc/flexip-kit"], "DIR /proc/flexip-kit"),
    # adapter files: types, ranges, sizes, weights
    ("adapter-heads-text", lambda p, t: with_adapter(p, t, "heads-text"), "preservation.heads must be an integer"),
    ("adapter-dino-layer", lambda p, t: with_adapter(p, t, "dino-layer"), "dino_layer=99"),
    ("adapter-width-huge", lambda p, t: with_adapter(p, t, "width-huge"), "preservation.width=1000000000"),
    ("adapter-too-big", lambda p, t: with_adapter(p, t, "too-big"), "more than this machine's"),
    ("adapter-gate-one", lambda p, t: with_adapter(p, t, "gate-one"), "gate.image_init=1.0"),
    ("adapter-nan-weights", lambda p, t: with_adapter(p, t, "nan-weights"), "NaN or infinite"),
    ("adapter-inf-weights", lambda p, t: with_adapter(p, t, "inf-weights"), "NaN or infinite"),
    # training settings
    ("lr-nan", lambda p, t: train(p, t, "learning_rate=.nan"), "learning_rate must be a finite number, got nan"),
    ("lr-negative", lambda p, t: train(p, t, "learning_rate=-1e-4"), "learning_rate: -0.0001"),
    ("lr-zero", lambda p, t: train(p, t, "learning_rate=0"), "learning_rate: 0.0"),
    ("weight-decay-negative", lambda p, t: train(p, t, "weight_decay=-0.01"), "weight_decay: -0.01"),
    ("zero-heads", lambda p, t: train(p, t, "model.preservation.heads=0"), "model.preservation.heads=0"),
    ("gate-init-one", lambda p, t: train(p, t, "model.gate.image_init=1.0"), "model.gate.image_init=1.0"),
    ("gate-init-zero", lambda p, t: train(p, t, "model.gate.video_init=0"), "model.gate.video_init=0.0"),
    ("fp16-on-cpu", lambda p, t: train(p, t, "mixed_precision=fp16"), "mixed_precision: fp16"),
    ("seed-negative-train", lambda p, t: train(p, t, "seed=-1"), "seed: -1"),
    ("batch-beyond-data", lambda p, t: train(p, t, "batch_size=100000"), "batch_size: 100000"),
    ("batch-beyond-memory", lambda p, t: train(p, t, "batch_size=8", "data.resolution=4096"), "batch_size: 8 needs"),
    ("output-dir-in-proc", lambda p, t: train(p, t, "output_dir=/proc/flexip-run"), "output_dir /proc/flexip-run"),
    # published numbers for eval rank
    ("csv-short-row", lambda p, t: rank(p, "short-row.csv"), "short-row.csv:3: 3 values for 6 columns"),
    ("csv-stray-quote", lambda p, t: rank(p, "stray-quote.csv"), "stray-quote.csv:3: not valid CSV"),
    ("csv-not-utf8", lambda p, t: rank(p, "latin1.csv"), "latin1.csv: not UTF-8"),
    ("csv-duplicate-method", lambda p, t: rank(p, "duplicate.csv"), "'Ours' appears twice"),
    ("csv-nan", lambda p, t: rank(p, "nan.csv"), "nan.csv:3: CLIP-T is 'nan'"),
    ("csv-empty-method", lambda p, t: rank(p, "empty-name.csv"), "empty-name.csv:3: the method name is empty"),
]


@pytest.mark.parametrize(("argv", "named"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_value_ends_in_one_line_naming_it(argv, named, place, tiny_models, capsys):
    before = sorted(p.name for p in place.iterdir())
    assert main(argv(place, tiny_models)) == 2
    captured = capsys.readouterr()
    # Loading models draws progress bars on stderr; the error is the one line of flexip's own, the last.
    lines = [line for line in captured.err.strip().splitlines() if line.startswith("flexip ")]
    assert "Traceback" not in captured.err and len(lines) == 1, captured.err
    assert captured.err.strip().endswith(lines[0]) and named in lines[0], lines[0]
    assert sorted(p.name for p in place.iterdir()) == before  # nothing written, nothing left behind
    assert torch.get_num_threads() == 1
