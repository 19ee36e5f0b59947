"""Training throughput: samples per second from files (a manifest), streamed shards and a feature cache, side by side.

    python bench/train_throughput.py                       # the tiny models, then the real SD1.5 architecture
    python bench/train_throughput.py --models tiny --rounds 2 --steps 1
    python bench/train_throughput.py --family flux         # the tiny FLUX.1 kit (flow matching, T5's 512 tokens)

For each model set, a data set of generated pairs (the demo world) is written three ways: files and a manifest,
shards (`flexip prep shards`) and a feature cache of those shards (`flexip prep cache`). Then the training step
runs as `flexip train` runs it (the source's data loader, its encode function, the UNet's forward and backward
with the adapter attached, AdamW), the three sources interleaved round after round (bench/measure.py); each
round gives samples/s per source and the ratios to files in that round, summarised by their median and a
bootstrap 95% interval (the smallest and largest ratio below 5 rounds: bench/measure.py). The real architecture (random weights, built in code: nothing downloaded) is saved once
under --work and loaded back through the trainer's own loading path; at --resolution 128 the frozen encoders
(CLIP ViT-H/14 and DINOv2-L at 224 px, the VAE, the text encoder) cost more than the UNet, as at scale they
cost as much as it. The cache's size on disk per sample is reported too. `--family flux` measures the tiny
FLUX.1 kit only: FLUX.1's real 12B transformer does not fit a CPU's memory (`bench/flux_train_step.py` measures
its blocks at the real width).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, StableDiffusionPipeline

from bench.measure import interleaved_times, interval_name, paired_ratio, verdict
from flexip import FlexIPAdapter
from flexip.families.registry import FLUX1, SD15
from flexip.prep.shards import write_shards
from flexip.prep.split import Part
from flexip.tiny import ModelSet, save_tiny_model_set
from flexip.training.checkpoint import TrainingState
from flexip.training.components import load_frozen_models
from flexip.training.config import load_config
from flexip.training.feature_cache import feature_shapes, write_cache
from flexip.training.objective import FlexIPTrainingModel
from flexip.training.optimization import build_optimizer
from flexip.training.sources import data_loader, open_source
from recipes.demo.manifest import ManifestConfig, write_manifest

CONFIGS = ROOT / "configs" / "train"
SOURCES = ("files", "shards", "cache")
# stable-diffusion-v1-5's scheduler/scheduler_config.json
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=["sd15", "flux"], default="sd15",
                        help="the base family: sd15 (the tiny kit and the real SD1.5 architecture) or flux (the tiny "
                        "FLUX.1 kit)")  # fmt: skip
    parser.add_argument("--models", choices=["tiny", "sd15", "both"], default="both",
                        help="with --family sd15: the tiny kit, the real architecture or both")  # fmt: skip
    parser.add_argument(
        "--work", type=Path, help="where the real-architecture models are saved once (default: a temp dir)"
    )
    parser.add_argument(
        "--resolution", type=int, default=128, help="target size at the real architecture (default 128)"
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=16, help="generated pairs in the data set (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--steps", type=int, default=2, help="training steps per source and round (default 2)"
    )
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    return parser.parse_args(argv)


def save_real_models(folder: Path) -> ModelSet:
    """The real SD1.5 architecture, CLIP ViT-H/14 and DINOv2-L with random weights, saved as a model set."""
    from bench.pipeline_cost import build_models

    models = ModelSet(folder)
    if (models.dinov2 / "config.json").is_file():
        return models
    parts = build_models(tiny=False)
    StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=parts["unet"],
        scheduler=DDPMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(models.base)  # fmt: skip
    for model, processor, where in (
        ("clip", "clip_processor", models.image_encoder),
        ("dino", "dino_processor", models.dinov2),
    ):
        parts[processor].save_pretrained(where)
        parts[model].save_pretrained(where)  # its config.json last: the mark that the set is whole
    return models


def data(root: Path, pairs: int, size: int, config) -> tuple[dict[str, str], int]:
    """The same generated pairs as a manifest, as shards and as a feature cache: (source -> config override,
    the number of pairs)."""
    manifest = write_manifest(root / "data", ManifestConfig(num_images=pairs // 2, num_clips=max(1, pairs // 8),
                                                            frames_per_clip=5, size=size))  # fmt: skip
    written = len(manifest.read_text().splitlines())
    write_shards([manifest], root / "shards", shard_size=max(1, written // 4))
    write_cache(config, str(root / "shards"), root / "cache", Part())
    overrides = {"files": f"data.manifest={manifest}", "shards": f"data.shards={root / 'shards'}",
                 "cache": f"data.cache={root / 'cache'}"}  # fmt: skip
    return overrides, written


def measure(name: str, config_file: Path, models: ModelSet, args, resolution: int, work: Path) -> dict:
    overrides = [
        "model.tiny_models=''", f"model.base={models.base}", f"model.image_encoder={models.image_encoder}",
        f"model.dino_encoder={models.dinov2}", f"data.resolution={resolution}", f"batch_size={args.batch_size}",
        f"data.num_workers={args.workers}", "data.lanes=1", "mixed_precision='no'", "gradient_checkpointing=false",
    ]  # fmt: skip
    base_config = load_config(config_file, overrides)
    print(f"{name}: writing {args.pairs} pairs as files, shards and a feature cache ...", flush=True)
    sources, pairs = data(work / name, args.pairs, max(resolution, 64), base_config)
    frozen = load_frozen_models(base_config.model, torch.float32)
    encoder, model_config = frozen.encoder, base_config.model
    adapter = FlexIPAdapter.for_unet(
        frozen.unet, encoder.clip_embed_dim, encoder.dino_hidden_dim,
        preservation=dataclasses.asdict(model_config.preservation),
        personalization=dataclasses.asdict(model_config.personalization), gate=dataclasses.asdict(model_config.gate),
    )  # fmt: skip
    model = FlexIPTrainingModel(frozen.unet, adapter, frozen.noise_scheduler, base_config).train()
    optimizer = build_optimizer(adapter, base_config)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    generator = torch.Generator(accelerator.device)
    batches, encode = {}, {}
    for source, override in sources.items():
        config = load_config(config_file, [*overrides, override])
        opened = open_source(config, 1)
        if opened.cache is not None:  # as the trainer does: the features the loaded models expect
            opened.shapes = feature_shapes(frozen, resolution, accelerator.device)
        batches[source], encode[source] = (
            iter(data_loader(opened, accelerator, TrainingState())),
            opened.encode,
        )

    def steps(source: str):
        def run():
            for _ in range(args.steps):
                batch = next(batches[source])
                generator.manual_seed(batch["positions"][0])
                encoded = encode[source](frozen, batch, base_config.dropout, generator)
                loss, _ = model(encoded, generator)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        return run

    calls = {source: steps(source) for source in SOURCES}
    for call in calls.values():  # warm-up: first batches, allocator, kernels
        call()
    times = interleaved_times(calls, args.rounds)
    samples = args.steps * args.batch_size
    cache_files = sorted((work / name / "cache").glob("*.tar"))
    rows = {}
    for source in SOURCES:
        rate = samples / statistics.median(times[source])
        ratio, low, high = paired_ratio(
            times["files"], times[source]
        )  # files' time / this source's: a speed-up
        rows[source] = {
            "seconds": times[source],
            "samples_per_s": rate,
            "ratio": ratio,
            "low": low,
            "high": high,
        }
    rows["cache_bytes_per_sample"] = sum(f.stat().st_size for f in cache_files) / pairs
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(0)
    print(f"# training throughput, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        sets = []
        if args.family == "flux":
            kit = save_tiny_model_set(work / "tiny-flux-models", family=FLUX1)
            sets.append(("tiny-flux", CONFIGS / "tiny-flux.yaml", kit, 32))
        elif args.models in ("tiny", "both"):
            sets.append(("tiny", CONFIGS / "tiny.yaml", save_tiny_model_set(work / "tiny-models", family=SD15), 32))
        if args.family == "sd15" and args.models in ("sd15", "both"):
            real = save_real_models(args.work or work / "sd15-models")
            sets.append(("sd15", CONFIGS / "sd15.yaml", real, args.resolution))
        for name, config_file, models, resolution in sets:
            started = time.perf_counter()
            results[name] = measure(name, config_file, models, args, resolution, work)
            print(f"\n## {name} ({resolution} px, batch {args.batch_size}, {args.rounds} rounds of {args.steps} steps, "
                  f"{time.perf_counter() - started:.0f} s)\n")  # fmt: skip
            print(
                f"| source | samples/s | speed-up over files [{interval_name(args.rounds)}] | time ratio to files |\n"
                "|---|---|---|---|"
            )
            for source in SOURCES:
                row = results[name][source]
                told = "" if source == "files" else verdict(1 / row["high"], 1 / row["low"], args.rounds)
                print(f"| {source} | {row['samples_per_s']:.3g} | {row['ratio']:.2f} [{row['low']:.2f}, {row['high']:.2f}] | "
                      f"{told} |")  # fmt: skip
            print(
                f"\ncache on disk: {results[name]['cache_bytes_per_sample'] / 1024:.1f} KiB per sample "
                f"({results[name]['cache_bytes_per_sample'] * 1e6 / 1e12:.2f} TB per million samples at this size)"
            )
    return results


if __name__ == "__main__":
    main()
