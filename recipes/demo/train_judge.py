"""Train the demo judge's CNN on blurred, noisy renders and report its accuracy on held-out seeds.

    python -m recipes.demo.train_judge --out recipes/demo/judge/judge.safetensors

Training seeds count up from 0; held-out seeds start at HELD_OUT_SEED, far beyond any training run.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from recipes.demo.judge import HEADS, Judge, JudgeConfig, JudgeNet, to_tensor
from recipes.demo.world import render_seeded

HELD_OUT_SEED = 1_000_000_000
# Attributes whose accuracy the table reports, in the order it reports them.
ATTRIBUTES = ("subject", "background", "position", "size", "style", "color", "pattern", "pattern_color")


@dataclass
class JudgeTrainConfig:
    samples: int = 40_000  # distinct training renders
    steps: int = 2_500
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    max_blur: float = 0.8  # Gaussian sigma in px at 32 px
    max_noise: float = 0.08  # std of additive Gaussian noise, images in [0, 1]


def render_set(first_seed: int, count: int, progress: bool = False) -> tuple[torch.Tensor, list[dict]]:
    """(count, 3, 32, 32) renders of seeds first_seed.. and their true attributes."""
    images, labels = [], []
    for seed in tqdm(range(first_seed, first_seed + count), desc="rendering", disable=not progress):
        image, _, identity, scene = render_seeded(seed)
        images.append(image)
        labels.append({**asdict(scene), **asdict(identity)})
    return to_tensor(images), labels


def degrade(images: torch.Tensor, generator: torch.Generator, max_blur: float, max_noise: float) -> torch.Tensor:
    """Random Gaussian blur, a small colour cast and additive noise: what a diffusion model's samples look like."""
    n = images.shape[0]
    sigma = torch.rand(n, generator=generator) * max_blur + 1e-3
    offsets = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (N, 5), one separable kernel per image
    # Per-image kernels as a grouped convolution: fold the batch into channels.
    x = images.reshape(1, n * 3, *images.shape[2:])
    k = kernel.repeat_interleave(3, dim=0)  # (3N, 5)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=3 * n)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=3 * n)
    x = x.reshape(images.shape)
    cast = (torch.rand(n, 3, 1, 1, generator=generator) - 0.5) * 0.06
    noise = torch.randn(images.shape, generator=generator) * torch.rand(n, 1, 1, 1, generator=generator) * max_noise
    return (x + cast + noise).clamp(0, 1)


def _targets(labels: list[dict]) -> dict[str, torch.Tensor]:
    """Class indices per head, -100 (ignored by cross-entropy) where the render does not show the attribute."""
    targets = {}
    for name, values in HEADS.items():
        column = []
        for label in labels:
            hidden = (
                (name == "color" and label["style"] != "plain")
                or (name in ("pattern", "pattern_color") and label["style"] == "outline")
                or (name == "pattern_color" and label["pattern"] == "plain")
            )
            column.append(-100 if hidden else values.index(label[name]))
        targets[name] = torch.tensor(column)
    return targets


def evaluate(judge: Judge, images: torch.Tensor, labels: list[dict]) -> dict[str, float]:
    """Accuracy per attribute over the images that show it (e.g. colour only on plain-style renders)."""
    readings = []
    for start in range(0, images.shape[0], 512):
        readings += judge.read(images[start:start + 512])
    targets = _targets(labels)
    accuracy = {}
    for name in ATTRIBUTES:
        if name in targets:
            shown = [i for i, t in enumerate(targets[name].tolist()) if t != -100]
        else:
            shown = list(range(len(labels)))
        accuracy[name] = float(np.mean([readings[i][name] == labels[i][name] for i in shown]))
    return accuracy


def train(config: JudgeTrainConfig, progress: bool = True) -> Judge:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    images, labels = render_set(config.seed * config.samples, config.samples, progress)
    targets = _targets(labels)
    net = JudgeNet(JudgeConfig())
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps)
    net.train()
    bar = tqdm(range(config.steps), desc="judge", disable=not progress)
    for _ in bar:
        index = torch.randint(0, config.samples, (config.batch_size,), generator=generator)
        batch = degrade(images[index], generator, config.max_blur, config.max_noise)
        logits = net(batch)
        losses = {name: F.cross_entropy(logits[name], targets[name][index], ignore_index=-100) for name in HEADS}
        # A head whose attribute no image in the batch shows gives NaN; skip it rather than poison the sum.
        loss = sum(value for value in losses.values() if torch.isfinite(value))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return Judge(net)


def accuracy_table(clean: dict[str, float], degraded: dict[str, float]) -> str:
    rows = ["| attribute | how | clean | blurred + noisy |", "|---|---|---|---|"]
    for name in ATTRIBUTES:
        how = "classifier" if name in HEADS else "analytic"
        rows.append(f"| {name} | {how} | {clean[name]:.3f} | {degraded[name]:.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    defaults = JudgeTrainConfig()
    parser = argparse.ArgumentParser(prog="python -m recipes.demo.train_judge", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="path of the judge's .safetensors file")
    parser.add_argument("--samples", type=int, default=defaults.samples, help="distinct training renders")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--eval-samples", type=int, default=2000, help="held-out renders to measure accuracy on")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise SystemExit(f"--out {out}: the judge is saved as safetensors; give a path ending in .safetensors")
    if min(args.samples, args.steps, args.eval_samples) < 1:
        raise SystemExit("--samples, --steps and --eval-samples must each be at least 1")
    config = JudgeTrainConfig(samples=args.samples, steps=args.steps, seed=args.seed)
    started = time.perf_counter()
    judge = train(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    judge.save(tmp)
    tmp.replace(out)
    judge = Judge.load(out)  # measure what was saved (fp16), not the in-memory float32 net
    images, labels = render_set(HELD_OUT_SEED, args.eval_samples)
    clean = evaluate(judge, images, labels)
    noisy = evaluate(judge, degrade(images, torch.Generator().manual_seed(1), config.max_blur, config.max_noise), labels)
    report = {"config": asdict(config), "seconds": time.perf_counter() - started, "clean": clean, "degraded": noisy}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(accuracy_table(clean, noisy))
    print(f"saved {out} ({out.stat().st_size / 1e3:.0f} kB) in {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
