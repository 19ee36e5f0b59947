"""The feature cache (`flexip prep cache`, `data.cache`): the frozen encoders' outputs, computed once into shards.

Cache shard i is input shard i with one file added to each sample, `features.safetensors` (float16): the VAE's
latent distribution of the target (`moments`: mean and log-variance, so each step still draws its own latent),
the caption's text conditioning (`embeds`, and `added.<name>` for the UNet's added conditioning: SDXL's pooled
text and size ids), the reference's CLIP embedding and DINOv2 tokens for each of V variants (`clip_embeds`
(V, dim), `dino_tokens` (V, tokens, dim)), and `subject` (the target's mask pooled to the latents) when the pair
has a mask. The sample's own files stay, so a cache streams and validates like its shards.

What it fixes in advance: an image pair's reference augmentation (crop, cut-out, flip). Training from shards
draws it from (seed, key, pass) (stream.py), and variant v of the cache holds the draws of pass v, so training
from a cache made with the run's seed equals training from its shards for the first V passes, up to float16;
pass k uses variant k mod V. A video pair's reference is not augmented: it keeps one variant. Condition dropout,
noise, timesteps, the latent draw and the gate noise stay per step, as from images.

Shards are split between processes in contiguous blocks, written under a temporary name and renamed when whole,
and a re-run keeps the finished ones. `cache.json` records the encoders and sizes; a run whose config differs
is refused.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from tqdm import tqdm

from ..atomic import atomic_write_bytes, check_writable
from ..errors import FlexIPError
from ..families.family import TextConditioning
from ..models.config import MODALITIES
from .components import (
    FrozenModels,
    absolute_reference,
    frozen_dtype,
    load_frozen_models,
    prepare_tiny_models,
)
from .config import DropoutConfig, TrainConfig
from .data import UNREADABLE, load_pair
from .objective import EncodedBatch, condition_dropout, denoiser_latents
from .stream import (
    SHARD_ERRORS,
    key_number,
    load_webdataset,
    pair_of,
    sample_modality,
    shard_samples,
    shard_urls,
)

FORMAT = "flexip-feature-cache"
FORMAT_VERSION = 1
INDEX = "cache.json"
FEATURES = "features.safetensors"
STORED = torch.float16  # the features' dtype on disk (the added conditioning: float32)


def encoder_settings(config: TrainConfig) -> dict:
    """What the cached features depend on: a training config must agree on every one."""
    model = config.model
    return {
        "model.base": absolute_reference(model.base), "model.vae": absolute_reference(model.vae),
        "model.image_encoder": absolute_reference(model.image_encoder), "model.dino_encoder": absolute_reference(model.dino_encoder),
        "model.dino_layer": model.dino_layer, "data.resolution": config.data.resolution,
    }  # fmt: skip


@dataclass(frozen=True)
class FeatureCache:
    """An opened cache folder: its shards and what `cache.json` says about them."""

    folder: Path
    index: dict

    @classmethod
    def open(cls, folder: str | os.PathLike) -> FeatureCache:
        folder = Path(folder)
        try:
            index = json.loads((folder / INDEX).read_text())
        except (OSError, ValueError) as e:
            raise FlexIPError(
                f"config data.cache: {folder} is not a feature cache ({INDEX} is missing or unreadable: {e}); make "
                "one with `flexip prep cache`"
            ) from e
        version = (index.get("format"), index.get("format_version")) if isinstance(index, dict) else None
        if version != (FORMAT, FORMAT_VERSION):
            raise FlexIPError(
                f"config data.cache: {folder / INDEX} is not a {FORMAT} version {FORMAT_VERSION} index; make the "
                "cache again with this flexip's `flexip prep cache`"
            )
        least = {"shards": 1, "variants": 1, "seed": 0}  # whole numbers at least this
        damaged = [k for k, low in least.items() if type(index.get(k)) is not int or index[k] < low]
        damaged += [] if isinstance(index.get("settings"), dict) else ["settings"]
        if damaged:
            raise FlexIPError(
                f"config data.cache: {folder / INDEX} is damaged ({', '.join(damaged)} missing or invalid); "
                "make the cache again with `flexip prep cache --overwrite`"
            )
        return cls(folder, index)

    @property
    def variants(self) -> int:
        return self.index["variants"]

    def check(self, config: TrainConfig, urls: list[str]) -> None:
        """Refuse, in one line, a config whose encoders or sizes are not the cache's, or a cache of which `urls`
        (its shards found) are not all the shards it was made of.

        Another training seed is allowed: the cache's augmentation draws stay those of its own seed, and the
        run's seed still draws its order, noise, timesteps and dropout (several seeds share one costly cache).
        """
        ours = encoder_settings(config)
        for key, value in self.index["settings"].items():
            if ours.get(key) != value:
                raise FlexIPError(
                    f"config {key}: {ours.get(key)!r}, but the cache {self.folder} was made with {value!r}; train "
                    f"with the config the cache was made with, or make it again: flexip prep cache --config ..."
                )
        if len(urls) != self.index["shards"]:
            raise FlexIPError(
                f"config data.cache: {self.folder} holds {len(urls)} of the {self.index['shards']} shards of "
                f"its {INDEX}; finish it with `flexip prep cache` (every part), or make it again"
            )


def write_cache(
    config: TrainConfig, shards: str, out: Path, part, *, variants: int = 1, batch_size: int = 16,
    overwrite: bool = False,
) -> tuple[int, int, int, Counter]:  # fmt: skip
    """Cache `part`'s share of `shards` into the folder `out` (`part`: prep's `Part`, the same contiguous blocks
    as every prep step); returns (shards in the part, of them done before, samples written, problems by kind).
    Problems are listed in `<out>.report.jsonl`."""
    if variants < 1:
        raise FlexIPError(f"--variants {variants}: give 1 or more augmentation variants per sample")
    if batch_size < 1:
        raise FlexIPError(f"--batch-size {batch_size}: give 1 or more samples per encoder batch")
    urls = shard_urls(shards)
    out = check_writable(Path(out), "--out")
    index = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "shards": len(urls), "source": shards,
        "variants": variants, "seed": config.seed, "dtype": "float16", "settings": encoder_settings(config),
    }  # fmt: skip
    _claim(out, index, overwrite)
    names = [Path(url).name for url in urls]
    block = part.block(len(urls))
    done = [] if overwrite else [i for i in block if (out / names[i]).exists()]
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    if config.model.tiny_models:
        prepare_tiny_models(config.model)
    models = load_frozen_models(config.model, frozen_dtype(config.mixed_precision))
    for module in models.modules():
        module.to(device)
    report = out.parent / f"{out.name}.report.jsonl"
    if overwrite:  # the replaced cache's problems are not this one's
        report.unlink(missing_ok=True)
    problems, written = Counter(), 0
    with tqdm(total=len(block), initial=len(done), desc=f"cache{part.label}", unit="shard") as bar:
        for i in (i for i in block if i not in done):
            tmp = out / f".tmp-{names[i]}"
            # 0o666: the kernel applies the user's umask; mtime 0: the same inputs give the same bytes.
            with (
                os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), "wb") as file,
                load_webdataset().TarWriter(file, encoder=False, mtime=0.0) as tar,
            ):
                count, skipped = _cache_shard(urls[i], tar, models, config, variants, batch_size, device)
            os.replace(tmp, out / names[i])
            written += count
            if skipped:
                with open(report, "a") as log:
                    log.writelines(json.dumps({"file": urls[i], "kind": "unreadable", "reason": r}) + "\n" for r in skipped)
                problems["unreadable"] += len(skipped)
            bar.update()
    return len(block), len(done), written, problems


def _claim(out: Path, index: dict, overwrite: bool) -> None:
    """Write `cache.json`, or check that the one there is this cache's: a re-run must not mix two caches."""
    path = out / INDEX
    if path.exists() and not overwrite:
        if json.loads(path.read_text()) != index:
            raise FlexIPError(
                f"--out {out} holds a cache of other shards, encoders or settings ({path}); pass --overwrite to "
                "replace it, or choose another folder"
            )
        return
    if not path.exists() and not overwrite and out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise FlexIPError(f"--out {out} is not empty and holds no {INDEX}; give an empty or new folder, or --overwrite")
    atomic_write_bytes(path, (json.dumps(index, indent=1) + "\n").encode())


def _cache_shard(url, tar, models, config, variants, batch_size, device) -> tuple[int, list[str]]:
    """Encode one shard's samples in batches into `tar`; returns (samples written, problems)."""
    skipped, pending, count = [], [], 0
    try:
        for sample in shard_samples(url):
            try:
                pending.append((sample, _loads(sample, config, variants)))
            except UNREADABLE as e:
                skipped.append(f"sample {sample.get('__key__')}: {e}")
            if len(pending) == batch_size:
                count += _write_batch(tar, pending, models, device)
                pending = []
    except SHARD_ERRORS as e:
        skipped.append(f"unreadable after {count + len(pending)} samples ({e})")
    if pending:
        count += _write_batch(tar, pending, models, device)
    return count, skipped


def _loads(sample: dict, config: TrainConfig, variants: int) -> list[dict]:
    """The training samples of each variant: an image pair's augmentation draws of passes 0 .. V-1."""
    pair = pair_of(sample)
    image_pair = pair.modality == MODALITIES.index("image")
    seed, key = config.seed, key_number(sample["__key__"])
    return [
        load_pair(pair, np.random.default_rng([seed, key, v]), config.data.resolution, image_pair and pair.mask is not None)
        for v in range(variants if image_pair else 1)
    ]


@torch.no_grad()
def _write_batch(tar, pending: list[tuple[dict, list[dict]]], models: FrozenModels, device) -> int:
    firsts = [loads[0] for _, loads in pending]
    pixels = torch.stack([s["pixel_values"] for s in firsts]).to(device, models.vae.dtype)
    moments = models.vae.encode(pixels).latent_dist.parameters
    sizes = torch.stack([s["sizes"] for s in firsts])
    text = models.family.encode_captions(models.text, [s["caption"] for s in firsts], sizes, device)
    references = models.encoder([s["reference"] for _, loads in pending for s in loads])
    start = 0
    for row, (sample, loads) in enumerate(pending):
        tensors = {"moments": moments[row], "embeds": text.embeds[row]}
        tensors.update({f"added.{name}": value[row] for name, value in (text.added or {}).items()})
        tensors["clip_embeds"] = references.clip_embeds[start : start + len(loads)]
        tensors["dino_tokens"] = references.dino_tokens[start : start + len(loads)]
        start += len(loads)
        if "target_mask" in firsts[row]:
            mask = firsts[row]["target_mask"][None].to(device)
            tensors["subject"] = F.adaptive_avg_pool2d(mask, moments.shape[-2:])[0]
        # The added conditioning is small and holds SDXL's size ids (above 2048 float16 rounds them): float32.
        stored = {k: v.to(torch.float32 if k.startswith("added.") else STORED).contiguous().cpu() for k, v in tensors.items()}
        tar.write({**sample, FEATURES: save_tensors(stored)})
    return len(pending)


@torch.no_grad()
def feature_shapes(models: FrozenModels, resolution: int, device: torch.device) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor a cache sample holds for these models and resolution, `clip_embeds` and
    `dino_tokens` without their variant axis: what `load_cached` checks every sample against. The reference
    encoders run once on a blank picture, as their token count depends on their processors."""
    grid = resolution // 2 ** (len(models.vae.config.block_out_channels) - 1)
    text = empty_captions(models, 1, device)
    reference = models.encoder([Image.new("RGB", (resolution, resolution))])
    shapes = {
        "moments": (2 * models.vae.config.latent_channels, grid, grid),
        "embeds": tuple(text.embeds.shape[1:]),
        "clip_embeds": tuple(reference.clip_embeds.shape[1:]),
        "dino_tokens": tuple(reference.dino_tokens.shape[1:]),
        "subject": (1, grid, grid),
    }
    shapes.update({f"added.{name}": tuple(value.shape[1:]) for name, value in (text.added or {}).items()})
    return shapes


def _damage(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple], variants: int) -> str | None:
    """Why a sample's features cannot be trained on, or None: a tensor missing, of another shape than `shapes`
    (per variant), not floating point, or not finite."""
    for name, shape in shapes.items():
        if name not in tensors:
            if name == "subject":  # only pairs with a mask have one
                continue
            return f"it has no {name!r} tensor"
        tensor = tensors[name]
        per_variant = name in ("clip_embeds", "dino_tokens")
        found = tuple(tensor.shape[1:] if per_variant else tensor.shape)
        if found != shape or (per_variant and len(tensor) != len(tensors["clip_embeds"])):
            return f"its {name!r} is {tuple(tensor.shape)}, not {('V', *shape) if per_variant else shape}"
        if per_variant and len(tensor) not in (1, variants):
            return f"its {name!r} holds {len(tensor)} variants, not 1 or the cache's {variants}"
        if not tensor.is_floating_point():
            return f"its {name!r} is {tensor.dtype}, not floating point"
        if not torch.isfinite(tensor).all():
            return f"its {name!r} holds NaN or infinite values"
    return None


def load_cached(
    sample: dict, pass_: int, rng: np.random.Generator, variants: int, subject: bool,
    shapes: dict[str, tuple[int, ...]],
) -> dict:  # fmt: skip
    """One training sample from a cache sample: its features, the variant of pass `pass_` (`rng` is unused:
    the draws are in the cache). ValueError for a sample whose features are missing or damaged (`shapes`:
    `feature_shapes`)."""
    if FEATURES not in sample:
        raise ValueError(f"the sample has no {FEATURES}: is this folder a feature cache?")
    try:
        tensors = load_tensors(sample[FEATURES])
    except Exception as e:  # safetensors raises its own error types for damaged bytes
        raise ValueError(f"{FEATURES} is unreadable ({e})") from e
    problem = _damage(tensors, shapes, variants)
    if problem is not None:
        raise ValueError(f"{FEATURES} does not fit the configured models: {problem}")
    variant = pass_ % variants if len(tensors["clip_embeds"]) == variants else 0
    loaded = {
        "moments": tensors["moments"], "embeds": tensors["embeds"],
        "added": {k.removeprefix("added."): tensors[k] for k in shapes if k.startswith("added.")},
        "clip_embeds": tensors["clip_embeds"][variant], "dino_tokens": tensors["dino_tokens"][variant],
        "modality": sample_modality(sample),
    }  # fmt: skip
    if subject:  # all 0 without a mask, as from images
        loaded["subject"] = tensors.get("subject", torch.zeros_like(tensors["moments"][:1]))
    return loaded


def collate_cached(samples: list[dict]) -> dict:
    batch = {
        name: torch.stack([s[name] for s in samples]) for name in ("moments", "embeds", "clip_embeds", "dino_tokens")
    }
    batch["added"] = {name: torch.stack([s["added"][name] for s in samples]) for name in samples[0]["added"]}
    batch["modality"] = torch.tensor([s["modality"] for s in samples])
    batch["positions"] = [s["position"] for s in samples]
    if "subject" in samples[0]:
        batch["subject"] = torch.stack([s["subject"] for s in samples])
    return batch


# SDXL's size conditioning in a sample's added conditioning: each sample's own, whatever its caption.
SIZE_IDS = "time_ids"


def empty_captions(models: FrozenModels, count: int, device: torch.device) -> TextConditioning:
    """The empty caption's conditioning for `count` samples on `device`: encoded where the text encoders are (the
    CPU, while training from a cache on an accelerator: `trainer.build`) once per count, as a batch of `count`
    (the rows of a batch are not bit for bit those of a batch of one); its size ids are zeros."""
    if count not in models.empty_captions:
        home = next(models.text_encoders()[0].parameters()).device
        text = models.family.encode_captions(models.text, [""] * count, torch.zeros(count, 6), home)
        added = {name: value.to(device) for name, value in (text.added or {}).items()} or None
        models.empty_captions[count] = TextConditioning(text.embeds.to(device), added)
    return models.empty_captions[count]


@torch.no_grad()
def encode_cached_batch(
    models: FrozenModels, batch: dict, dropout: DropoutConfig, generator: torch.Generator
) -> EncodedBatch:
    """`objective.encode_batch` from cached features: the same dropout, and the same draws in the same order."""
    device = generator.device
    drop_text, drop_image = condition_dropout(batch["modality"], dropout, generator)
    text_dtype = next(part for part in models.text.values() if isinstance(part, torch.nn.Module)).dtype
    embeds = batch["embeds"].to(device, text_dtype)
    added = {name: value.to(device, text_dtype) for name, value in batch["added"].items()} or None
    dropped = drop_text.nonzero().flatten().tolist()
    if dropped:  # the empty caption's conditioning; each dropped sample keeps its own size ids (SDXL's time_ids)
        empty = empty_captions(models, len(dropped), device)
        embeds[dropped] = empty.embeds.to(embeds.dtype)
        for name, value in (empty.added or {}).items():
            if name != SIZE_IDS:
                added[name][dropped] = value.to(added[name].dtype)
    encoder_dtype = next(models.encoder.parameters()).dtype
    clip_embeds, dino_tokens = batch["clip_embeds"].to(device, encoder_dtype), batch["dino_tokens"].to(device, encoder_dtype)
    moments = batch["moments"].to(device, models.vae.dtype)
    latents = denoiser_latents(models.vae, DiagonalGaussianDistribution(moments).sample(generator))
    subject = batch["subject"].to(device, latents.dtype) if "subject" in batch else None
    return EncodedBatch(
        latents, embeds, added, clip_embeds, dino_tokens, batch["modality"].to(device), drop_image.to(device), subject
    )
