"""Fingerprints of what users see: one SHA-256 per output, to run before and after a change that must not
alter any (a refactor), on the same machine, and compare line by line.

    OMP_NUM_THREADS=1 python -m bench.fingerprint > before.txt
    ... the change ...
    OMP_NUM_THREADS=1 python -m bench.fingerprint > after.txt && diff before.txt after.txt

It covers `flexip demo`'s images; generations on the tiny SD1.5 and SDXL kits (a number, a sweep, a per-block
dict, a schedule, two masked references, scale 0) through `FlexIPPipeline` and through `load_flexip` on the
stock image-to-image, inpainting and ControlNet pipelines; and the first 50 training losses of
`configs/train/tiny.yaml` and `tiny-sdxl.yaml` from files, from shards and from the feature cache. Images are
hashed as their decoded pixels (float32 arrays, or the PNGs' RGB bytes), losses as the logged numbers. The
tiny kits are written to a temporary folder each run, from fixed seeds. About a minute on one CPU thread.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"
STEPS = 3
TRAIN_STEPS = 50


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def report(name: str, value: str) -> None:
    print(f"{name:<44} {value}", flush=True)


def quietly(function, *args):
    """`function(*args)` with its progress bars and messages kept off the fingerprint's output."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return function(*args)


def demo_images(root: Path) -> None:
    from flexip.cli import main

    assert quietly(main, ["demo", "--out", str(root / "demo")]) == 0
    for png in sorted((root / "demo").glob("*.png")):
        report(f"demo/{png.name}", digest(np.asarray(Image.open(png).convert("RGB")).tobytes()))


def generations(models, label: str) -> None:
    """The dial's forms through FlexIPPipeline, then load_flexip on the stock pipelines that take an image."""
    import diffusers

    import flexip

    generator = np.random.default_rng(0)
    reference, other, init, control = (
        Image.fromarray(generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(4)
    )
    left, right = Image.new("L", (32, 32), 0), Image.new("L", (32, 32), 0)
    left.paste(255, (0, 0, 16, 32))
    right.paste(255, (16, 0, 32, 32))

    def images(pipe, **kwargs) -> str:
        output = pipe("a photo of a dog", num_inference_steps=STEPS, output_type="np",
                      generator=torch.Generator().manual_seed(0), **kwargs).images  # fmt: skip
        return digest(np.ascontiguousarray(output, dtype=np.float32).tobytes())

    pipe = flexip.FlexIPPipeline.from_pretrained(base=models.base, adapter=models.adapter)
    pipe.set_progress_bar_config(disable=True)
    forms = {
        "number": {"reference": reference, "preservation": 0.7},
        "sweep": {"reference": reference, "preservation": [0.0, 0.5, 1.0]},
        "per-block": {"reference": reference, "preservation": {"down": 0.9, "mid": 0.6, "up": 0.3}},
        "schedule": {"reference": reference, "preservation": flexip.DialSchedule(0.9, 0.3, shape="cosine")},
        "masks": {"reference": [reference, other], "reference_masks": [left, right], "preservation": 0.7},
        "scale-0": {"reference": reference, "preservation": 0.7, "scale": 0.0},
    }
    for name, kwargs in forms.items():
        report(f"{label}/pipeline/{name}", images(pipe, **kwargs))

    prefix = "StableDiffusionXL" if label == "sdxl" else "StableDiffusion"
    text_to_image = getattr(diffusers, f"{prefix}Pipeline").from_pretrained(models.base).components
    torch.manual_seed(0)
    controlnet = diffusers.ControlNetModel.from_unet(text_to_image["unet"], conditioning_embedding_out_channels=(16, 32))
    stock = {
        "img2img": (f"{prefix}Img2ImgPipeline", {}, {"image": init, "strength": 0.8}),
        "inpaint": (f"{prefix}InpaintPipeline", {}, {"image": init, "mask_image": left, "strength": 1.0}),
        "controlnet": (f"{prefix}ControlNetPipeline", {"controlnet": controlnet}, {"image": control}),
    }
    for name, (cls, extra, inputs) in stock.items():
        stock_pipe = getattr(diffusers, cls)(**text_to_image, **extra)
        stock_pipe.set_progress_bar_config(disable=True)
        flexip.load_flexip(stock_pipe, models.adapter)
        report(f"{label}/load_flexip/{name}", images(stock_pipe, reference=reference, preservation=0.6, **inputs))
        flexip.unload_flexip(stock_pipe)


def training_losses(models, config: Path, label: str, root: Path) -> None:
    from flexip.cli import main

    model = [
        "model.tiny_models=''", f"model.base={models.base}", f"model.image_encoder={models.image_encoder}",
        f"model.dino_encoder={models.dinov2}",
    ]  # fmt: skip
    shards, cache = root / f"{label}-shards", root / f"{label}-cache"
    assert quietly(main, ["prep", "shards", str(models.manifest), "--out", str(shards), "--shard-size", "2"]) == 0
    prep = ["prep", "cache", "--config", str(config), str(shards), "--out", str(cache)]
    assert quietly(main, [*prep, *[a for s in model for a in ("--set", s)]]) == 0
    sources = {
        "files": [f"data.manifest={models.manifest}"],
        "shards": [f"data.shards={shards}", "data.lanes=2"],
        "cache": [f"data.cache={cache}", "data.lanes=2"],
    }
    for source, data in sources.items():
        run = root / f"{label}-{source}"
        settings = [*model, *data, "log_with=[]", "log_every=1", "validation.every=1000", "checkpoint_every=1000"]
        argv = ["train", "--config", str(config), "--output-dir", str(run), "--max-steps", str(TRAIN_STEPS)]
        assert quietly(main, [*argv, *[a for s in settings for a in ("--set", s)]]) == 0
        losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(losses) == TRAIN_STEPS, f"{label} from {source}: {len(losses)} losses logged"
        report(f"{label}/train/{source}", f"{digest(json.dumps(losses).encode())} first {losses[0]!r} last {losses[-1]!r}")


def main(argv: list[str] | None = None) -> None:
    from flexip.families.registry import SD15, SDXL
    from flexip.tiny import save_tiny_model_set

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    print(f"# fingerprints, torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        demo_images(root)
        for family, config in ((SD15, "tiny.yaml"), (SDXL, "tiny-sdxl.yaml")):
            models = quietly(save_tiny_model_set, root / f"{family.name}-models", 0, False, family)
            generations(models, family.name)
            training_losses(models, CONFIGS / config, family.name, root)


if __name__ == "__main__":
    main()
