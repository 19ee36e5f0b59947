"""How a diffusers pipeline's UNet gets P, S and g without the pipeline knowing (docs/method.md §2.3, §4).

Stable Diffusion pipelines call `unet(latents, t, encoder_hidden_states=prompt_embeds, ...)` with plain text
embeddings. `FlexIPInjection` holds the adapter attached to the UNet and a forward pre-hook that, while a call
made inside `generating(...)` is running, turns `prompt_embeds` into `(prompt_embeds, FlexIPCondition)`.
The per-call state lives in a `contextvars.ContextVar`, so calls running at the same time in different threads
each see their own reference and dial. Outside `generating`, the UNet runs the base model. `flexip_call`
(`pipeline/call.py`) is the one caller of `generating`; its docstring follows a preservation value end to end.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn

from ..denoisers.registry import denoiser_of
from ..errors import FlexIPError
from ..families.registry import family_named
from ..models.adapter import FlexIPAdapter
from ..models.condition import FlexIPCondition
from ..models.masks import PLAIN, Subject
from ..models.processor import FlexIPAttnProcessor
from ..models.weights import BranchWeights
from ..references.cache import ReferenceCache
from ..references.encoded import EncodedReference
from ..references.encoder import ReferenceEncoder
from ..settings.dial import LayerDial
from .images import load_reference_image
from .subjects import check_aspect

ReferenceInput = Image.Image | str | os.PathLike | EncodedReference


@dataclass
class _Generation:
    """What one pipeline call conditions on; the condition is built at the first UNet call and then reused."""

    injection: FlexIPInjection
    references: list[EncodedReference]  # one per subject term (batch 1 each)
    subjects: tuple[Subject, ...]  # how each reference's branches enter the layers (PLAIN: one reference)
    dials: list[LayerDial]  # g of each conditional sample, per layer or over the steps
    scales: tuple[float, ...]  # s of each layer
    num_samples: int  # conditional samples per UNet call
    guided: bool  # each UNet call's batch is an unconditional half, then the conditional half (calls.py)
    progress: float = 0.0  # of the denoising steps: 0 at the first executed step, 1 at the last (`advance`)
    text: torch.Tensor | None = field(default=None)
    condition: FlexIPCondition | None = field(default=None)

    @property
    def scheduled(self) -> bool:
        """Whether some sample's g moves over the steps (the weights are then renewed at every UNet call)."""
        return any(dial.schedule is not None for dial in self.dials)


_CURRENT: contextvars.ContextVar[_Generation | None] = contextvars.ContextVar(
    "flexip_generation", default=None
)


class FlexIPInjection:
    """A FlexIP adapter and its reference encoder, attached to one UNet. Build it with `FlexIPInjection.load`."""

    def __init__(
        self, unet: nn.Module, adapter: FlexIPAdapter, reference_encoder: ReferenceEncoder, follow_unet: bool = True
    ):  # fmt: skip
        """Hook an adapter already attached to `unet` (`adapter.attach(unet)`); `load` does both.

        `follow_unet`: move the adapter and encoders to the UNet's device and dtype at each call (after
        `pipe.to(...)`); training's validation turns it off, since its adapter stays float32 under autocast.
        """
        self.unet = unet
        self.denoiser = denoiser_of(unet)  # where its layers are, how a call's condition reaches them
        self.adapter = adapter
        self.family = family_named(adapter.config.base_family)  # how the call encodes its prompt
        self.reference_encoder = reference_encoder
        self.follow_unet = follow_unet
        # Branch K/V computed once per generation; switched off only to measure what it saves (bench/reuse.py).
        self._cache_kv = True
        # A repeated reference image (a web page moving only the dial) is encoded once.
        self.reference_cache = ReferenceCache(reference_encoder)
        self._hook = unet.register_forward_pre_hook(self._add_condition, with_kwargs=True)

    @classmethod
    def load(
        cls,
        unet: nn.Module,
        adapter: str | os.PathLike | FlexIPAdapter,
        image_encoder: str | os.PathLike | None = None,
        dino_encoder: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> FlexIPInjection:
        """Load the adapter (a directory or an object) and its encoders (default: those its config names)."""
        if any(isinstance(p, FlexIPAttnProcessor) for p in unet.attn_processors.values()):
            raise FlexIPError(
                "this UNet already has a FlexIP adapter (maybe through another pipeline sharing it); "
                "call flexip.unload_flexip on that pipeline first"
            )
        if not isinstance(adapter, FlexIPAdapter):
            adapter = FlexIPAdapter.from_pretrained(adapter)
        config = adapter.config
        image_encoder = image_encoder or adapter.resolve_model(config.image_encoder)
        dino_encoder = dino_encoder or adapter.resolve_model(config.dino_encoder)
        if not image_encoder or not dino_encoder:
            raise FlexIPError(
                "the adapter's config names no image encoder or DINOv2 model; pass image_encoder= and dino_encoder="
            )
        encoder = ReferenceEncoder.from_pretrained(
            image_encoder, dino_encoder, config.dino_layer, torch_dtype
        )
        if (encoder.clip_embed_dim, encoder.dino_hidden_dim) != (
            config.clip_embed_dim,
            config.dino_hidden_dim,
        ):
            raise FlexIPError(
                f"the encoders {image_encoder} and {dino_encoder} give features of size "
                f"{encoder.clip_embed_dim} and {encoder.dino_hidden_dim}, the adapter expects "
                f"{config.clip_embed_dim} and {config.dino_hidden_dim}: use the encoders it was trained with"
            )
        adapter.eval().requires_grad_(False).attach(unet)
        return cls(unet, adapter, encoder)

    def unhook(self) -> None:
        """Remove the hook; the adapter stays attached (training's validation pipeline leaves it so)."""
        self._hook.remove()

    def remove(self) -> None:
        """Remove the hook and restore the UNet's original attention processors."""
        self.unhook()
        FlexIPAdapter.detach(self.unet)

    def prepare_reference(self, reference: ReferenceInput) -> EncodedReference | Image.Image:
        """Validate a reference without running a model: an RGB image to encode, or a checked EncodedReference."""
        if isinstance(reference, EncodedReference):
            config = self.adapter.config
            if len(reference) != 1:
                raise FlexIPError(
                    f"the encoded reference holds {len(reference)} subjects; give one (batch 1)"
                )
            if reference.clip_embeds.shape[-1] != config.clip_embed_dim or reference.dino_tokens.shape[
                -1
            ] != (config.dino_hidden_dim):
                raise FlexIPError(
                    f"the encoded reference has features of size {reference.clip_embeds.shape[-1]} and "
                    f"{reference.dino_tokens.shape[-1]}, the adapter expects {config.clip_embed_dim} and "
                    f"{config.dino_hidden_dim}: encode it with this adapter's encoders"
                )
            return reference
        return load_reference_image(reference)

    def encode_reference(self, reference: ReferenceInput) -> EncodedReference:
        """Encoder features of one reference (kept as is if already encoded; an image seen lately is not
        encoded again: `reference_cache`)."""
        prepared = self.prepare_reference(reference)
        if isinstance(prepared, EncodedReference):
            return prepared
        self._follow_unet()
        return self.reference_cache.encode(prepared)

    def is_encoded(self, reference: ReferenceInput) -> bool:
        """Whether `encode_reference(reference)` would run no encoder: the reference is encoded already, or is an
        image seen lately (a web page reports the reuse)."""
        prepared = self.prepare_reference(reference)
        if isinstance(prepared, EncodedReference):
            return True
        self._follow_unet()  # the cache is keyed by the encoders' device and dtype, as `encode_reference` sees them
        return self.reference_cache.get(prepared) is not None

    @contextlib.contextmanager
    def generating(
        self, references: list[EncodedReference], subjects: tuple[Subject, ...], dials: list[LayerDial],
        scales: tuple[float, ...], num_samples: int, guided: bool,
    ) -> Iterator[None]:  # fmt: skip
        """While inside, this thread's UNet calls see `references` combined as `subjects`, g of each sample from
        `dials` and s of each layer from `scales` (both in the adapter's layer order); with `guided`, each
        call's batch is the unconditional half (the null reference) and then the `num_samples` conditional ones."""
        self._follow_unet()
        state = _Generation(self, references, subjects, dials, scales, num_samples, guided)
        token = _CURRENT.set(state)
        try:
            yield
        finally:
            _CURRENT.reset(token)

    def advance(self, step: int, steps: int) -> None:
        """After denoising step `step` (from 0) of `steps`: this thread's later UNet calls are at the next step."""
        state = _CURRENT.get()
        if state is not None and state.injection is self:
            state.progress = min(1.0, (step + 1) / (steps - 1)) if steps > 1 else 0.0

    def _follow_unet(self) -> None:
        """Keep the adapter and encoders on the device the UNet runs on, in its dtype, after `pipe.to(...)`."""
        if not self.follow_unet:
            return
        device, dtype = _execution_device(self.unet), next(self.unet.parameters()).dtype
        for module in (self.adapter, self.reference_encoder):
            own = next(module.parameters())
            if (own.device, own.dtype) != (device, dtype):
                module.to(device, dtype)

    def _add_condition(self, unet: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        state = _CURRENT.get()
        if state is None or state.injection is not self:
            return None
        return self.denoiser.with_condition(args, kwargs, lambda text, sample: self._condition(state, text, sample))

    def _condition(self, state: _Generation, text: torch.Tensor, sample: torch.Tensor) -> FlexIPCondition:
        if not isinstance(text, torch.Tensor):
            raise FlexIPError(
                f"the UNet got {type(text).__name__} text embeddings; another adapter (e.g. IP-Adapter) may be "
                "loaded on this pipeline: FlexIP cannot share the UNet with it"
            )
        # Pipelines pass the same prompt_embeds tensor at every step: build P, S (and their K/V) once.
        if state.text is text:
            if state.scheduled:  # the same tokens and keys/values, this step's weights
                return state.condition.reweighted(*self._weights(state, text))
            return state.condition
        n = state.num_samples
        if text.shape[0] != (2 * n if state.guided else n):
            raise FlexIPError(
                f"the UNet got a batch of {text.shape[0]} text embeddings, where this call makes "
                f"{2 * n if state.guided else n} ({n} samples{', with guidance' if state.guided else ''})"
            )
        weights, layer_weights = self._weights(state, text)
        # Under a schedule, a branch that some step may use is computed even if this step's weights skip it.
        moving = [dial for dial in state.dials if dial.schedule is not None and any(state.scales)]
        may_use = (any(d.reaches(0.0) for d in moving), any(d.reaches(1.0) for d in moving))
        rows = text.shape[0]
        features = [
            (reference.clip_embeds.expand(rows, -1), reference.dino_tokens.expand(rows, -1, -1))
            for reference in (reference.to(text.device, text.dtype) for reference in state.references)
        ]
        # Guidance: diffusers puts the unconditional half first. It gets the null reference
        # (docs/method.md §4); its S comes from the negative prompt's embeddings, which are that half of `text`.
        null_rows = torch.arange(rows, device=text.device) < n if state.guided else None
        subjects = state.subjects
        for subject in subjects:
            if subject.mask is not None:  # the size of an image-to-image call's images is known only now
                check_aspect(tuple(subject.mask.shape), tuple(sample.shape[-2:]), "the latents' grid")
        if subjects is not PLAIN:
            subjects = tuple(
                Subject(s.weight, None if s.mask is None else s.mask.to(text.device)) for s in subjects
            )  # fmt: skip
        state.text = text
        state.condition = self.adapter.condition(
            features, text, weights, layer_weights, null_rows=null_rows, may_use=may_use, subjects=subjects,
            latent_size=tuple(sample.shape[-2:]), grid=self.denoiser.layer_grid, kv_all_rows=state.scheduled,
            kv_cache={} if self._cache_kv else None,
        )  # fmt: skip
        return state.condition

    def _weights(self, state: _Generation, text: torch.Tensor) -> tuple[BranchWeights, dict[nn.Module, BranchWeights]]:
        """Every layer's branch weights s·g and s·(1−g) at the state's progress: those most layers share, and
        the layers whose weights differ (a per-block dial). Made on the CPU from the dial's numbers, so no
        host synchronisation, and moved to the text's device."""
        layers = self.adapter.layer_projections()
        g = torch.tensor([dial.at(state.progress, len(layers)) for dial in state.dials])  # (samples, layers)
        if state.guided:
            g = g.repeat(2, 1)  # the unconditional half first, sample for sample
        s = torch.tensor(state.scales)
        preservation, personalization = s * g, s * (1 - g)
        by_column: dict[tuple, BranchWeights] = {}
        per_layer = {}
        for index, projections in enumerate(layers.values()):
            column = (tuple(preservation[:, index].tolist()), tuple(personalization[:, index].tolist()))
            if column not in by_column:
                by_column[column] = BranchWeights.create(
                    preservation[:, index].contiguous(), personalization[:, index].contiguous(), text.dtype, text.device
                )  # fmt: skip
            per_layer[projections] = by_column[column]
        shared = max(by_column.values(), key=lambda weights: sum(w is weights for w in per_layer.values()))
        return shared, {projections: w for projections, w in per_layer.items() if w is not shared}


def _execution_device(unet: nn.Module) -> torch.device:
    """Where the UNet runs: with model or sequential CPU offload (accelerate's hooks, as diffusers'
    `_execution_device` finds them) its weights wait on the CPU or the meta device between calls, and move to
    the hook's execution device only inside its forward; otherwise where its weights are."""
    for module in unet.modules():
        hook = getattr(module, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
    return next(unet.parameters()).device
