"""Train the demo base model on renders of the demo world, in phases: render, VAE, encode, UNet, save.

    python -m recipes.demo.train_base --out src/flexip/assets/demo

Progress is checkpointed under --work-dir (the VAE once trained, the UNet every --checkpoint-every steps), so
re-running the same command resumes where it stopped (--unet-steps may change, to train longer or stop
sooner); --fresh starts over. The model set is written to --out
only at the end, atomically (see base_model.save_model_set).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from recipes.demo.base_model import DEFAULT_MODEL_DIR, BaseModelConfig, build_components, save_model_set
from recipes.demo.judge import to_tensor
from recipes.demo.world import caption, render, sample_identity, sample_scene


@dataclass
class TrainBaseConfig:
    model: BaseModelConfig = field(default_factory=BaseModelConfig)
    samples: int = 40_000  # distinct renders; captions are re-drawn never, the set is fixed by the seed
    vae_steps: int = 1_500
    vae_batch_size: int = 64
    vae_lr: float = 5e-4  # 1e-3 diverged mid-run (MSE 0.06 -> 0.5)
    kl_weight: float = 1e-4  # small: latents only need to stay smooth, the scale is fixed afterwards
    unet_steps: int = 3_500
    unet_batch_size: int = 128
    unet_lr: float = 8e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # trains the empty-prompt branch that classifier-free guidance needs
    min_snr_gamma: float = 5.0  # Min-SNR loss weighting (Hang et al. 2023): faster convergence
    checkpoint_every: int = 500
    seed: int = 0


# ---- phase 1: data -------------------------------------------------------------------------------------------
def render_dataset(config: TrainBaseConfig, progress: bool) -> tuple[torch.Tensor, list[str]]:
    """(N, 3, H, W) renders in [-1, 1] and their captions; one random stream per sample, as in the manifests."""
    images, captions = [], []
    for index in tqdm(range(config.samples), desc="render", disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2, index]))
        identity, scene = sample_identity(rng), sample_scene(rng)
        images.append(render(identity, scene, rng, config.model.image_size)[0])
        captions.append(caption(scene))
    return to_tensor(images) * 2 - 1, captions


@torch.no_grad()
def embed_captions(parts, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-encoder states of each distinct caption (index 0 is the empty caption) and each sample's index."""
    unique = [""] + sorted(set(captions))
    tokens = parts.tokenizer(unique, padding="max_length", max_length=parts.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
    states = parts.text_encoder(tokens)[0]  # (U, L, D)
    lookup = {text: i for i, text in enumerate(unique)}
    return states, torch.tensor([lookup[text] for text in captions])


# ---- phase 2: VAE --------------------------------------------------------------------------------------------
def train_vae(vae, images: torch.Tensor, config: TrainBaseConfig, progress: bool) -> None:
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.vae_lr, total_steps=config.vae_steps)
    vae.train()
    bar = tqdm(range(config.vae_steps), desc="vae", disable=not progress)
    for _ in bar:
        batch = images[torch.randint(0, len(images), (config.vae_batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        mse = F.mse_loss(reconstruction, batch)
        loss = mse + config.kl_weight * posterior.kl().mean() / posterior.mean[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(mse=f"{mse.item():.4f}")
    vae.eval()


@torch.no_grad()
def encode(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image: the UNet phase samples latents from them without the encoder."""
    means, stds = [], []
    for start in range(0, len(images), 512):
        posterior = vae.encode(images[start:start + 512]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


# ---- phase 3: UNet -------------------------------------------------------------------------------------------
def min_snr_weight(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weight for epsilon prediction: min(SNR, gamma) / SNR (Hang et al. 2023, eq. 8)."""
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr


def _lr_factor(step: int, config: TrainBaseConfig) -> float:
    # Linear warm-up, then cosine decay to 10%.
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.unet_steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_unet(parts, latents, text, config: TrainBaseConfig, work: Path, progress: bool) -> torch.nn.Module:
    """Epsilon-prediction training with EMA; returns the EMA copy. Resumes from work/unet.pt when present."""
    means, stds = latents
    states, caption_index = text
    unet, scheduler = parts.unet, parts.scheduler
    scale = parts.vae.config.scaling_factor
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.unet_lr, weight_decay=0.01)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    generator = torch.Generator().manual_seed(config.seed + 1)
    start = 0
    checkpoint = work / "unet.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        generator.set_state(state["generator"])
        start = state["step"]
    unet.train()
    alphas_cumprod = scheduler.alphas_cumprod
    bar = tqdm(range(start, config.unet_steps), desc="unet", initial=start, total=config.unet_steps,
               disable=not progress)
    for step in bar:
        index = torch.randint(0, len(means), (config.unet_batch_size,), generator=generator)
        noise_for_latent = torch.randn(means[index].shape, generator=generator)
        clean = (means[index] + stds[index] * noise_for_latent) * scale  # (B, 4, 8, 8)
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        alpha_bar = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise
        drop = torch.rand(len(index), generator=generator) < config.caption_dropout
        conditioning = states[torch.where(drop, 0, caption_index[index])]  # (B, L, D); 0 = empty caption
        prediction = unet(noisy, timesteps, encoder_hidden_states=conditioning).sample
        per_sample = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weight(scheduler, timesteps, config.min_snr_gamma)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        with torch.no_grad():  # EMA with warm-up, so early steps are not frozen into a bad average
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            for average, current in zip(ema.parameters(), unet.parameters()):
                average.lerp_(current, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.unet_steps:
            _atomic_save({"unet": unet.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                          "lr_schedule": lr_schedule.state_dict(), "generator": generator.get_state(),
                          "step": step + 1}, checkpoint)
    return ema.eval()


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


# ---- the run -------------------------------------------------------------------------------------------------
def run(config: TrainBaseConfig, out: Path, work: Path, progress: bool = True) -> dict:
    """All phases; returns a summary (seconds per phase, parameter counts)."""
    torch.manual_seed(config.seed)
    timings, started = {}, time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    config_file = work / "config.json"
    if config_file.is_file():
        # A resumed run may change its length (train longer on a GPU, or stop sooner), nothing else.
        previous = json.loads(config_file.read_text())
        current = asdict(config)
        for key in ("unet_steps", "checkpoint_every"):
            previous.pop(key, None), current.pop(key, None)
        if json.loads(json.dumps(current)) != previous:
            raise SystemExit(f"{work} holds a run with another configuration ({config_file}); "
                             f"pass --fresh to start over or a different --work-dir")
    config_file.write_text(json.dumps(asdict(config), indent=2, sort_keys=True))
    parts = build_components(config.model)

    images, captions = render_dataset(config, progress)
    timings["render"] = time.perf_counter() - started

    vae_file = work / "vae.pt"
    if vae_file.is_file():
        parts.vae.load_state_dict(torch.load(vae_file))
    else:
        train_vae(parts.vae, images, config, progress)
        _atomic_save(parts.vae.state_dict(), vae_file)
    parts.vae.eval().requires_grad_(False)
    timings["vae"] = time.perf_counter() - started - sum(timings.values())

    means, stds = encode(parts.vae, images)
    # Scale latents to unit variance, as Stable Diffusion's 0.18215 does for its VAE.
    parts.vae.register_to_config(scaling_factor=float(1 / means.std()))
    text = embed_captions(parts, captions)
    timings["encode"] = time.perf_counter() - started - sum(timings.values())

    parts.unet = train_unet(parts, (means, stds), text, config, work, progress)
    timings["unet"] = time.perf_counter() - started - sum(timings.values())

    save_model_set(parts, out)
    timings["save"] = time.perf_counter() - started - sum(timings.values())
    summary = {
        "seconds": timings,
        "total_seconds": time.perf_counter() - started,
        "parameters": {name: sum(p.numel() for p in getattr(parts, name).parameters())
                       for name in ("vae", "unet", "text_encoder")},
        "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and ".tmp" not in f.parts[-2]),
        "config": asdict(config),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (work / "unet.pt").unlink(missing_ok=True)  # finished: the next run with this work dir starts the UNet anew
    return summary


def main(argv: list[str] | None = None) -> dict:
    defaults = TrainBaseConfig()
    parser = argparse.ArgumentParser(prog="python -m recipes.demo.train_base", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_MODEL_DIR),
                        help="folder for the model set (base/, image_encoder/, dinov2/); default: %(default)s")
    parser.add_argument("--work-dir", default="runs/demo-base", help="checkpoints and the resolved config")
    parser.add_argument("--fresh", action="store_true", help="discard checkpoints in --work-dir and start over")
    parser.add_argument("--samples", type=int, default=defaults.samples, help="distinct training renders")
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=defaults.unet_steps)
    parser.add_argument("--batch-size", type=int, default=defaults.unet_batch_size, help="UNet batch size")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for name in ("samples", "vae_steps", "unet_steps", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    config = TrainBaseConfig(samples=args.samples, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
                             unet_batch_size=args.batch_size, seed=args.seed,
                             checkpoint_every=min(defaults.checkpoint_every, args.unet_steps))
    work = Path(args.work_dir)
    if args.fresh:
        for name in ("config.json", "vae.pt", "unet.pt", "summary.json"):
            (work / name).unlink(missing_ok=True)
    summary = run(config, Path(args.out), work, progress=not args.quiet)
    if not args.quiet:
        print(f"saved {args.out} ({summary['bytes'] / 1e6:.1f} MB) in {summary['total_seconds'] / 60:.1f} min; "
              f"parameters: {summary['parameters']}")
    return summary


if __name__ == "__main__":
    main()
