"""What the tests share besides their fixtures (conftest.py): a model only the tests need, built offline from
the tiny kit's parts (`flexip.tiny`): an IP-Adapter for the tiny base (h94's layout; XLabs' on FLUX.1); a short
`flexip train` on the kit; pipelines on the kit; and the small readers and makers of test inputs and outputs.
Kept here, not in the library: no user runs them."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from flexip.cli import main
from flexip.evaluation.methods import IP_ADAPTER_FILES
from flexip.families.registry import FLUX1, SD15, Family
from flexip.pipeline.output import SETTINGS_CHUNK
from flexip.settings.calibration import Calibration, CalibrationPoint
from flexip.settings.generation import ModelSettings
from flexip.tiny import build_tiny_base, build_tiny_image_encoders

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "train" / "tiny.yaml"
DREAMBENCH = REPO.parent / "shared" / "data" / "dreambench"  # in the project's shared data (`need_shared`)
DEMO_MODEL = ModelSettings(device="cpu")  # the embedded demo model, as the web page serves it by default
# A family's name -> the conftest fixtures of its tiny model set and of its test adapter.
TINY_MODELS = {"sd15": "tiny_models", "sdxl": "tiny_xl_models", "flux": "tiny_flux_models"}
TEST_ADAPTERS = {"sd15": "load_test_adapter", "sdxl": "load_xl_test_adapter", "flux": "load_flux_test_adapter"}


def train_on_the_kit(tiny_models, run: Path, *extra: str) -> int:
    """`flexip train` in-process on the tiny kit's models and data into `run`, a checkpoint every step, batch 2;
    `extra` adds command-line arguments (later `--set`s win)."""
    settings = [
        "model.tiny_models=''", f"model.base={tiny_models.base}", f"model.image_encoder={tiny_models.image_encoder}",
        f"model.dino_encoder={tiny_models.dinov2}", f"data.manifest={tiny_models.manifest}", "log_with=[]",
        "log_every=1", "checkpoint_every=1", "validation.every=1000", "validation.steps=1", "batch_size=2",
    ]  # fmt: skip
    return main(["train", "--config", str(TINY_CONFIG), "--output-dir", str(run),
                 *[a for s in settings for a in ("--set", s)], *extra])  # fmt: skip


def save_tiny_ip_adapter(directory: str | os.PathLike, seed: int = 0, family: Family = SD15) -> Path:
    """A tiny IP-Adapter for the tiny base of `family`, laid out like `h94/IP-Adapter` so that diffusers' own
    `pipe.load_ip_adapter(directory, subfolder=..., weight_name=...)` loads it offline: for SD1.5
    `models/ip-adapter_sd15.safetensors` (`image_proj.*`, `ip_adapter.*`) and `models/image_encoder/`, for SDXL
    the same under `sdxl_models/` as `ip-adapter_sdxl.safetensors`."""
    subfolder, weight = IP_ADAPTER_FILES[family.name]
    models = Path(directory) / subfolder
    unet = build_tiny_base(seed, family).unet
    clip, clip_processor, _, _ = build_tiny_image_encoders(seed + 1)
    clip.save_pretrained(models / "image_encoder")
    clip_processor.save_pretrained(models / "image_encoder")

    torch.manual_seed(seed + 3)
    tokens, width = 4, unet.config.cross_attention_dim  # the plain IP-Adapter projects the embedding to 4 tokens
    tensors = {
        "image_proj.proj.weight": torch.randn(tokens * width, clip.config.projection_dim) * 0.1,
        "image_proj.proj.bias": torch.zeros(tokens * width),
        "image_proj.norm.weight": torch.ones(width),
        "image_proj.norm.bias": torch.zeros(width),
    }
    # diffusers numbers the attention processors in order and gives the cross-attention ones the odd ids.
    cross_attention = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    for index, name in enumerate(cross_attention):
        attention = unet.get_submodule(name.removesuffix(".processor"))
        # IP-Adapter initialises its image K/V from the layer's own text K/V.
        tensors[f"ip_adapter.{2 * index + 1}.to_k_ip.weight"] = attention.to_k.weight.detach().clone()
        tensors[f"ip_adapter.{2 * index + 1}.to_v_ip.weight"] = attention.to_v.weight.detach().clone()
    save_file(tensors, models / weight)
    return Path(directory)


def save_tiny_flux_ip_adapter(directory: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny FLUX.1 IP-Adapter for the tiny FLUX.1 base, laid out as `XLabs-AI/flux-ip-adapter` ships it, so that
    diffusers' own `FluxPipeline.load_ip_adapter(directory, weight_name="ip_adapter.safetensors",
    image_encoder_pretrained_model_name_or_path=directory / "image_encoder")` loads it offline:
    `ip_adapter.safetensors` (`ip_adapter_proj_model.*`, `double_blocks.N.processor.ip_adapter_double_stream_*`)
    and, since XLabs ships none (it names openai/clip-vit-large-patch14), a tiny CLIP in `image_encoder/`."""
    transformer = build_tiny_base(seed, FLUX1).transformer
    clip, clip_processor, _, _ = build_tiny_image_encoders(seed + 1)
    clip.save_pretrained(Path(directory) / "image_encoder")
    clip_processor.save_pretrained(Path(directory) / "image_encoder")

    torch.manual_seed(seed + 3)
    tokens, width = 4, transformer.config.joint_attention_dim  # 4 image tokens as wide as T5's, as XLabs' are
    tensors = {
        "ip_adapter_proj_model.proj.weight": torch.randn(tokens * width, clip.config.projection_dim) * 0.1,
        "ip_adapter_proj_model.proj.bias": torch.zeros(tokens * width),
        "ip_adapter_proj_model.norm.weight": torch.ones(width),
        "ip_adapter_proj_model.norm.bias": torch.zeros(width),
    }
    # One image K/V per double-stream block, from the image tokens to the block's width (random: the text K/V
    # read the context embedder's output, narrower than T5's tokens).
    for index in range(transformer.config.num_layers):
        for kind in "kv":
            name = f"double_blocks.{index}.processor.ip_adapter_double_stream_{kind}_proj"
            tensors[f"{name}.weight"] = torch.randn(transformer.inner_dim, width) * width**-0.5
            tensors[f"{name}.bias"] = torch.zeros(transformer.inner_dim)
    save_file(tensors, Path(directory) / IP_ADAPTER_FILES["flux"][1])
    return Path(directory)


# kind -> (SD1.5 class, SDXL class) of the stock pipelines `load_flexip` is tested on
STOCK_PIPELINES = {
    "txt2img": ("StableDiffusionPipeline", "StableDiffusionXLPipeline"),
    "img2img": ("StableDiffusionImg2ImgPipeline", "StableDiffusionXLImg2ImgPipeline"),
    "inpaint": ("StableDiffusionInpaintPipeline", "StableDiffusionXLInpaintPipeline"),
    "controlnet": ("StableDiffusionControlNetPipeline", "StableDiffusionXLControlNetPipeline"),
}


def stock_pipeline(kind: str, base, family: Family = SD15):
    """A stock diffusers pipeline of `kind` (a STOCK_PIPELINES key) on the tiny base at `base`, no progress bar;
    the ControlNet one with a seeded ControlNet made from the base's UNet."""
    import diffusers

    text_to_image = family.text_to_image.from_pretrained(base)
    cls = getattr(diffusers, STOCK_PIPELINES[kind][family is not SD15])
    extra = {}
    if kind == "controlnet":
        torch.manual_seed(0)
        extra["controlnet"] = diffusers.ControlNetModel.from_unet(
            text_to_image.unet, conditioning_embedding_out_channels=(16, 32)
        )
    pipe = text_to_image if kind == "txt2img" else cls(**text_to_image.components, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# A calibration of the dial made by hand, far from the identity (u 0.25 -> g 0.1, u 0.5 -> g 0.6): what the
# tests of the calibrated dial give an adapter's file.
CALIBRATION = Calibration(
    dial=[0.0, 0.25, 0.5, 1.0], gate=[0.0, 0.1, 0.6, 1.0],
    points=[CalibrationPoint(g, identity, prompt) for g, identity, prompt in
            [(0.0, 0.2, 0.3), (0.25, 0.5, 0.29), (0.5, 0.55, 0.2), (1.0, 0.6, 0.18)]],
    identity_scorer="dino-i tiny", prompt_scorer="clip-t tiny", pair_set="by hand", pairs=2, seeds=[0, 1], images=16,
)  # fmt: skip


def save_calibrated(adapter, directory: Path, models) -> Path:
    """`adapter` with `CALIBRATION`, written into `directory` as an adapter directory on the model set `models`
    (a `flexip.tiny.ModelSet`)."""
    adapter.config = dataclasses.replace(adapter.config, calibration=CALIBRATION, base_model=str(models.base),
                                         image_encoder=str(models.image_encoder), dino_encoder=str(models.dinov2))
    adapter.save_pretrained(directory)
    return directory


def flexip_pipe(base, adapter):
    """A FlexIPPipeline on the base model at `base` with `adapter`, no progress bar."""
    from flexip import FlexIPPipeline

    pipe = FlexIPPipeline.from_pretrained(base, adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flexip_pipe(request, family: str):
    """A FlexIPPipeline of its own on the tiny model set of `family` ("sd15", "sdxl" or "flux") with a fresh test
    adapter (random Personalization residuals), for a test that changes it; `request` is the test's or the
    fixture's."""
    models = request.getfixturevalue(TINY_MODELS[family])
    return flexip_pipe(models.base, request.getfixturevalue(TEST_ADAPTERS[family])())


def poison_branch(adapter, branch: str, value: float) -> None:
    """Fill every weight of one branch of `adapter` ("preservation" or "personalization": its token model and
    each layer's K/V projections) with `value` (inf or NaN): any output that reads the branch shows it."""
    modules = [getattr(adapter, branch)]
    modules += [getattr(layer, f"to_{kind}_{branch}") for layer in adapter.layers.values() for kind in "kv"]
    with torch.no_grad():
        for module in modules:
            for parameter in module.parameters():
                parameter.fill_(value)


def need_shared(path: str | os.PathLike) -> Path:
    """`path`, a part of the project's shared data (`../shared` beside the repository), or a skip saying it is
    absent; with FLEXIP_REQUIRE_SHARED=1 (as CI sets it) a failure instead, so that tests never skip silently."""
    path = Path(path)
    if path.exists():
        return path
    reason = f"{path} is absent (the project's shared data: ../shared beside the repository)"
    if os.environ.get("FLEXIP_REQUIRE_SHARED") == "1":
        pytest.fail(f"{reason}; FLEXIP_REQUIRE_SHARED=1 requires it")
    pytest.skip(reason)


def cross_attention_calls(pipe, run) -> list[tuple]:
    """(layer, hidden_states, text, condition, output) of every cross-attention call while `run()` runs."""
    calls, hooks = [], []
    for name in pipe.flexip.adapter.config.layers:
        attn = pipe.unet.get_submodule(name.removesuffix(".processor"))

        def hook(module, args, kwargs, output):
            text, condition = kwargs["encoder_hidden_states"]
            calls.append((module, args[0], text, condition, output))

        hooks.append(attn.register_forward_hook(hook, with_kwargs=True))
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def picture(seed: int, size: tuple[int, int] = (40, 48)) -> Image.Image:
    """An image of random pixels drawn from `seed`, `size` (height, width), 40x48 by default."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def left_half(height: int = 32, width: int = 32) -> np.ndarray:
    """A mask of a height x width picture: ones on its left half, zeros on its right."""
    mask = np.zeros((height, width), dtype=np.float32)
    mask[:, : width // 2] = 1
    return mask


def rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSON-lines file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    """Each step's last logged loss in a training run's folder (a resumed run logs again the steps after its
    checkpoint)."""
    return {row["step"]: row["loss"] for row in rows(run / "metrics.jsonl")}


def settings_of(path: str | os.PathLike) -> dict:
    """The settings a generated image records beside its pixels (docs/formats.md)."""
    with Image.open(path) as image:
        return json.loads(image.text[SETTINGS_CHUNK])


def pixels(path: str | os.PathLike) -> np.ndarray:
    """An image file's RGB pixels, as signed integers so that differences do not wrap round."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def free_port() -> int:
    """A TCP port of this machine that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
