"""Reference encoding (method.md §2): CLIP image embedding + DINOv2 block features of the subject image."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save
from torch import nn
from transformers import AutoImageProcessor, CLIPImageProcessor, CLIPVisionModelWithProjection, Dinov2Model

from .atomic import atomic_write_bytes
from .errors import FlexIPError
from .families import refuse_pickled_weights

logger = logging.getLogger(__name__)


@dataclass
class EncodedReference:
    """Encoder features of a batch of reference images; keep it to skip re-encoding the same subject."""

    clip_embeds: torch.Tensor  # (batch, clip_embed_dim): CLIP image embedding (the projected [CLS])
    dino_tokens: torch.Tensor  # (batch, tokens, dino_hidden_dim): DINOv2 hidden states of one block

    def __len__(self) -> int:
        return self.clip_embeds.shape[0]

    def to(self, device=None, dtype=None) -> EncodedReference:
        return EncodedReference(self.clip_embeds.to(device, dtype), self.dino_tokens.to(device, dtype))

    def save(self, path: str | os.PathLike) -> None:
        """One safetensors file with tensors `clip_embeds` and `dino_tokens` (docs/formats.md)."""
        tensors = {"clip_embeds": self.clip_embeds.contiguous().cpu(), "dino_tokens": self.dino_tokens.contiguous().cpu()}
        atomic_write_bytes(path, save(tensors, metadata={"format": "flexip-encoded-reference"}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> EncodedReference:
        try:
            tensors = load_file(path)
        except Exception as e:  # safetensors raises its own error types
            raise FlexIPError(f"{path} is not an encoded reference (safetensors) file: {e}") from e
        missing = {"clip_embeds", "dino_tokens"} - set(tensors)
        if missing:
            raise FlexIPError(f"{path}: an encoded reference needs tensors clip_embeds and dino_tokens; missing {sorted(missing)}")
        clip_embeds, dino_tokens = tensors["clip_embeds"], tensors["dino_tokens"]
        if clip_embeds.ndim != 2 or dino_tokens.ndim != 3 or clip_embeds.shape[0] != dino_tokens.shape[0]:
            raise FlexIPError(
                f"{path}: expected clip_embeds (batch, dim) and dino_tokens (batch, tokens, dim), got "
                f"{tuple(clip_embeds.shape)} and {tuple(dino_tokens.shape)}"
            )
        for name, tensor in (("clip_embeds", clip_embeds), ("dino_tokens", dino_tokens)):
            if not tensor.is_floating_point():
                dtype = str(tensor.dtype).removeprefix("torch.")
                raise FlexIPError(f"{path}: tensor {name} holds {dtype} values, not features; encode the reference again")
            if not tensor.isfinite().all():
                raise FlexIPError(f"{path}: tensor {name} holds values that are not finite; encode the reference again")
        return cls(clip_embeds, dino_tokens)


def split_model_reference(reference: str | os.PathLike) -> tuple[str, str | None]:
    """A local directory, a hub id, or `owner/repo/sub/folder` -> (path or id, subfolder or None).

    Real encoders often sit in a repository's subfolder (IP-Adapter's CLIP-H is `h94/IP-Adapter/models/image_encoder`);
    one string names them everywhere (configs, adapter files, the command line).
    """
    reference = str(reference)
    if os.path.exists(reference):
        return reference, None
    parts = reference.split("/")
    if len(parts) > 2 and not reference.startswith((".", "/")):
        return "/".join(parts[:2]), "/".join(parts[2:])
    return reference, None


def _load(model_cls, reference: str | os.PathLike, **kwargs):
    path, subfolder = split_model_reference(reference)
    extra = {"subfolder": subfolder} if subfolder else {}
    if model_cls is not AutoImageProcessor:  # weights: from safetensors only, never unpickled
        refuse_pickled_weights(Path(path, subfolder or ""), model_cls.__name__)
        extra["use_safetensors"] = True
    try:
        return model_cls.from_pretrained(path, **extra, **kwargs)
    except OSError as e:
        raise FlexIPError(
            f"cannot load {model_cls.__name__} from {reference!r} ({str(e).rstrip('.')}). Give a local directory, or a hub id "
            "(optionally owner/repo/subfolder) whose weights are downloaded or reachable"
        ) from e


def _load_processor(reference: str | os.PathLike, default):
    """The image processor saved with a model, or `default()` where the model ships none.

    IP-Adapter's CLIP-H (`h94/IP-Adapter/models/image_encoder`) has no preprocessor config; the standard CLIP
    preprocessing is what it was trained with, and what diffusers uses for it.
    """
    try:
        return _load(AutoImageProcessor, reference)
    except FlexIPError:
        if default is None:
            raise
        logger.info(f"{reference} has no image processor config; using {default.__name__} defaults")
        return default()


class ReferenceEncoder(nn.Module):
    """The two frozen image encoders, each with its own preprocessing."""

    def __init__(self, clip_model, clip_processor, dino_model, dino_processor, dino_layer: int = -2):
        super().__init__()
        self.clip_model = clip_model
        self.dino_model = dino_model
        self.clip_processor = clip_processor
        self.dino_processor = dino_processor
        self.dino_layer = dino_layer

    @classmethod
    def from_pretrained(
        cls,
        clip_model: str | os.PathLike,
        dino_model: str | os.PathLike,
        dino_layer: int = -2,
        torch_dtype: torch.dtype | None = None,
    ) -> ReferenceEncoder:
        """Load both encoders and their image processors from local directories or hub ids (`owner/repo/subfolder`)."""
        clip = _load(CLIPVisionModelWithProjection, clip_model, dtype=torch_dtype)
        dino = _load(Dinov2Model, dino_model, dtype=torch_dtype)
        states = dino.config.num_hidden_layers + 1  # the embeddings, then one per block
        if isinstance(dino_layer, bool) or not isinstance(dino_layer, int) or not -states <= dino_layer < states:
            raise FlexIPError(
                f"dino_layer={dino_layer!r} does not exist in {dino_model}, which has {states} hidden states: "
                f"give an integer from {-states} to {states - 1} (-2 is the penultimate block)"
            )
        clip_processor = _load_processor(clip_model, default=CLIPImageProcessor)
        dino_processor = _load_processor(dino_model, default=None)
        return cls(clip.eval().requires_grad_(False), clip_processor, dino.eval().requires_grad_(False),
                   dino_processor, dino_layer)  # fmt: skip

    @property
    def clip_embed_dim(self) -> int:
        return self.clip_model.config.projection_dim

    @property
    def dino_hidden_dim(self) -> int:
        return self.dino_model.config.hidden_size

    @torch.no_grad()
    def forward(self, images: list[Image.Image]) -> EncodedReference:
        """RGB PIL images -> EncodedReference on the encoders' device and dtype."""
        clip_pixels = self.clip_processor(images=images, return_tensors="pt")["pixel_values"]
        dino_pixels = self.dino_processor(images=images, return_tensors="pt")["pixel_values"]
        clip_param = next(self.clip_model.parameters())
        dino_param = next(self.dino_model.parameters())
        clip_embeds = self.clip_model(pixel_values=clip_pixels.to(clip_param.device, clip_param.dtype)).image_embeds
        hidden_states = self.dino_model(
            pixel_values=dino_pixels.to(dino_param.device, dino_param.dtype), output_hidden_states=True
        ).hidden_states
        return EncodedReference(clip_embeds, hidden_states[self.dino_layer].to(clip_embeds.dtype))


class ReferenceCache:
    """The features of the last few reference images one encoder saw, so a repeated subject is encoded once.

    Keyed by a hash of the image's pixels (mode, size and bytes: two files of one picture share an entry) and
    the encoder's device and dtype (features made in float32 are not reused after `pipe.to(float16)`). One
    cache belongs to one encoder, which is the rest of the key. Bounded: the least recently used entry goes
    first. Thread-safe; two threads missing on one image at once may both encode it, which costs time, not
    correctness. The features returned are shared between callers: treat them as read-only.
    """

    def __init__(self, encoder: ReferenceEncoder, capacity: int = 8):
        self.encoder = encoder
        self.capacity = capacity  # ~1 MB per entry for SD 1.5's DINOv2-L features in float32
        self._entries: OrderedDict[tuple, EncodedReference] = OrderedDict()
        self._lock = threading.Lock()

    def _key(self, image: Image.Image) -> tuple:
        parameter = next(self.encoder.parameters())
        digest = hashlib.sha256(f"{image.mode} {image.size}".encode())
        digest.update(image.tobytes())
        return digest.hexdigest(), str(parameter.device), str(parameter.dtype)

    def _lookup(self, key: tuple) -> EncodedReference | None:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        return None

    def get(self, image: Image.Image) -> EncodedReference | None:
        """The cached features of `image` (an RGB image), or None when it must be encoded."""
        return self._lookup(self._key(image))

    def encode(self, image: Image.Image) -> EncodedReference:
        """The features of `image` (an RGB image), from the cache or from the encoder (then cached)."""
        key = self._key(image)
        cached = self._lookup(key)
        if cached is not None:
            return cached
        encoded = self.encoder([image])
        with self._lock:
            self._entries[key] = encoded
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return encoded
