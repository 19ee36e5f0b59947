"""How a diffusers pipeline's denoiser gets P, S and g without the pipeline knowing (docs/method.md §2.3, §4).

Stable Diffusion pipelines call `unet(latents, t, encoder_hidden_states=prompt_embeds, ...)` with plain text
embeddings. `FlexIPInjection` holds the adapter attached to the denoiser (the UNet, or FLUX.1's transformer) and
a forward pre-hook that, while a call made inside `generating(...)` is running, joins a `FlexIPCondition` to the
call where its denoiser module says (`Denoiser.with_condition`: `(prompt_embeds, condition)` on a UNet, an
entry of FLUX's `joint_attention_kwargs`); AnimateDiff's UNet, whose layers see a row per sample and frame, also
says how many frames each sample has, and the condition is built for the samples and read by every frame.
The per-call state lives in a `contextvars.ContextVar`, so calls
running at the same time in different threads each see their own reference and dial. Outside `generating`,
the denoiser runs the base model. `flexip_call` (`pipeline/call.py`) is the one caller of `generating`; its
docstring follows a preservation value end to end.
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
from ..models.attach import is_flexip
from ..models.condition import FlexIPCondition
from ..models.masks import PLAIN, Subject
from ..models.weights import BranchWeights
from ..references.cache import ReferenceCache
from ..references.encoded import EncodedReference
from ..references.encoder import ReferenceEncoder
from ..settings.dial import LayerDial, frame_progress
from .images import load_reference_image
from .subjects import check_aspect

ReferenceInput = Image.Image | str | os.PathLike | EncodedReference


@dataclass
class _Generation:
    """What one pipeline call conditions on; the condition is built at the first denoiser call and then reused."""

    injection: FlexIPInjection
    references: list[EncodedReference]  # one per subject term (batch 1 each)
    subjects: tuple[Subject, ...]  # how each reference's branches enter the layers (PLAIN: one reference)
    dials: list[LayerDial]  # g of each conditional sample, per layer, over the steps or over the frames
    scales: tuple[float, ...]  # s of each layer
    num_samples: int  # conditional samples per denoiser call
    guided: bool  # guidance makes an unconditional prediction each step (calls.py)
    # Guided, that prediction is a second denoiser call per step, after the conditional one (FLUX.1's true
    # CFG); otherwise the first half of each call's batch.
    negative_call: bool
    progress: float = 0.0  # of the denoising steps: 0 at the first executed step, 1 at the last (`advance`)
    calls: int = 0  # denoiser calls so far
    frames: int = 1  # of each sample's clip (a video denoiser's layers see a row per sample and frame)
    # The text embeddings and condition of each kind of call: the conditional one (False), the negative one (True).
    text: dict[bool, torch.Tensor] = field(default_factory=dict)
    condition: dict[bool, FlexIPCondition] = field(default_factory=dict)

    @property
    def scheduled(self) -> bool:
        """Whether some sample's g moves over the steps (the weights are then renewed at every denoiser call)."""
        return any(dial.over_steps for dial in self.dials)


_CURRENT: contextvars.ContextVar[_Generation | None] = contextvars.ContextVar(
    "flexip_generation", default=None
)


class FlexIPInjection:
    """A FlexIP adapter and its reference encoder, attached to one denoiser model (a UNet, FLUX.1's
    transformer). Build it with `FlexIPInjection.load`."""

    def __init__(
        self, model: nn.Module, adapter: FlexIPAdapter, reference_encoder: ReferenceEncoder, follow_model: bool = True
    ):  # fmt: skip
        """Hook an adapter already attached to `model` (`adapter.attach(model)`); `load` does both.

        `follow_model`: move the adapter and encoders to the denoiser's device and dtype at each call (after
        `pipe.to(...)`); training's validation turns it off, since its adapter stays float32 under autocast.
        """
        self.model = model
        self.denoiser = denoiser_of(model)  # where its layers are, how a call's condition reaches them
        self.adapter = adapter
        self.family = family_named(adapter.config.base_family)  # how the call encodes its prompt
        self.reference_encoder = reference_encoder
        self.follow_model = follow_model
        # Branch K/V computed once per generation; switched off only to measure what it saves (bench/reuse.py).
        self._cache_kv = True
        # A repeated reference image (a web page moving only the dial) is encoded once.
        self.reference_cache = ReferenceCache(reference_encoder)
        self._hook = model.register_forward_pre_hook(self._add_condition, with_kwargs=True)

    @classmethod
    def load(
        cls,
        model: nn.Module,
        adapter: str | os.PathLike | FlexIPAdapter,
        image_encoder: str | os.PathLike | None = None,
        dino_encoder: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> FlexIPInjection:
        """Load the adapter (a directory or an object) and its encoders (default: those its config names)."""
        if any(map(is_flexip, model.attn_processors.values())):
            raise FlexIPError(
                f"this {type(model).__name__} already has a FlexIP adapter (maybe through another pipeline sharing it); "
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
        adapter.eval().requires_grad_(False).attach(model)
        return cls(model, adapter, encoder)

    def unhook(self) -> None:
        """Remove the hook; the adapter stays attached (training's validation pipeline leaves it so)."""
        self._hook.remove()

    def remove(self) -> None:
        """Remove the hook and restore the denoiser's original attention processors."""
        self.unhook()
        FlexIPAdapter.detach(self.model)

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
        self._follow_model()
        return self.reference_cache.encode(prepared)

    def is_encoded(self, reference: ReferenceInput) -> bool:
        """Whether `encode_reference(reference)` would run no encoder: the reference is encoded already, or is an
        image seen lately (a web page reports the reuse)."""
        prepared = self.prepare_reference(reference)
        if isinstance(prepared, EncodedReference):
            return True
        self._follow_model()  # the cache is keyed by the encoders' device and dtype, as `encode_reference` sees them
        return self.reference_cache.get(prepared) is not None

    @contextlib.contextmanager
    def generating(
        self, references: list[EncodedReference], subjects: tuple[Subject, ...], dials: list[LayerDial],
        scales: tuple[float, ...], num_samples: int, guided: bool, negative_call: bool = False,
    ) -> Iterator[None]:  # fmt: skip
        """While inside, this thread's denoiser calls see `references` combined as `subjects`, g of each sample
        from `dials` and s of each layer from `scales` (both in the adapter's layer order). With `guided`, each
        call's batch is the unconditional half (the null reference) and then the `num_samples` conditional ones;
        with `negative_call` too, each step is a call on the `num_samples` conditional ones and then a call on
        the negative prompt, all of whose rows get the null reference."""
        self._follow_model()
        state = _Generation(self, references, subjects, dials, scales, num_samples, guided, negative_call)
        token = _CURRENT.set(state)
        try:
            yield
        finally:
            _CURRENT.reset(token)

    def advance(self, step: int, steps: int) -> None:
        """After denoising step `step` (from 0) of `steps`: this thread's later denoiser calls are at the next step."""
        state = _CURRENT.get()
        if state is not None and state.injection is self:
            state.progress = min(1.0, (step + 1) / (steps - 1)) if steps > 1 else 0.0

    def _follow_model(self) -> None:
        """Keep the adapter and encoders on the device the denoiser runs on, in its dtype, after `pipe.to(...)`."""
        if not self.follow_model:
            return
        device, dtype = _execution_device(self.model), next(self.model.parameters()).dtype
        for module in (self.adapter, self.reference_encoder):
            own = next(module.parameters())
            if (own.device, own.dtype) != (device, dtype):
                module.to(device, dtype)

    def _add_condition(self, model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        state = _CURRENT.get()
        if state is None or state.injection is not self:
            return None
        return self.denoiser.with_condition(
            args, kwargs, lambda text, latent_size, frames=1: self._condition(state, text, latent_size, frames)
        )

    def _condition(self, state: _Generation, text: torch.Tensor, latent_size, frames: int) -> FlexIPCondition:
        if not isinstance(text, torch.Tensor):
            model = self.denoiser.model_class.__name__
            raise FlexIPError(
                f"the {model} got {type(text).__name__} text embeddings; another adapter (e.g. IP-Adapter) may be "
                f"loaded on this pipeline: FlexIP cannot share the {model} with it"
            )
        halves = state.guided and not state.negative_call
        negative = state.guided and state.negative_call and state.calls % 2 == 1
        state.calls += 1
        # Pipelines pass the same prompt_embeds tensor at every step: build P, S (and their K/V) once per kind
        # of call.
        if state.text.get(negative) is text:
            condition = state.condition[negative]
            if state.scheduled:  # the same tokens and keys/values, this step's weights
                return condition.reweighted(*self._weights(state, text))
            return condition
        given, text = text, self._samples_text(state, text, halves, frames)
        state.frames = frames
        weights, layer_weights = self._weights(state, text)
        # Under a schedule, a branch that some step may use is computed even if this step's weights skip it.
        moving = [dial for dial in state.dials if dial.over_steps and any(state.scales)]
        may_use = (any(d.reaches(0.0) for d in moving), any(d.reaches(1.0) for d in moving))
        rows = text.shape[0]
        features = [
            (reference.clip_embeds.expand(rows, -1), reference.dino_tokens.expand(rows, -1, -1))
            for reference in (reference.to(text.device, text.dtype) for reference in state.references)
        ]
        # Guidance: diffusers puts the unconditional half first, or (FLUX.1's true CFG) makes a call of its own
        # on the negative prompt. It gets the null reference (docs/method.md §4); its S comes from the negative
        # prompt's embeddings, which are that half of `text`, or all of it.
        null_rows = None
        if halves:
            null_rows = torch.arange(rows, device=text.device) < state.num_samples
        elif negative:
            null_rows = torch.ones(rows, dtype=torch.bool, device=text.device)
        subjects, grid = state.subjects, tuple(latent_size())
        for subject in subjects:
            if subject.mask is not None:  # the size of an image-to-image call's images is known only now
                check_aspect(tuple(subject.mask.shape), grid, "the latents' grid")
        if subjects is not PLAIN:
            subjects = tuple(
                Subject(s.weight, None if s.mask is None else s.mask.to(text.device)) for s in subjects
            )  # fmt: skip
        state.text[negative] = given
        state.condition[negative] = self.adapter.condition(
            features, text, weights, layer_weights, null_rows=null_rows, may_use=may_use, subjects=subjects,
            latent_size=grid, grid=self.denoiser.layer_grid, kv_all_rows=state.scheduled,
            kv_cache={} if self._cache_kv else None, frames=frames,
        )  # fmt: skip
        return state.condition[negative]

    def _samples_text(self, state: _Generation, text: torch.Tensor, halves: bool, frames: int) -> torch.Tensor:
        """A call's text embeddings with a row per sample (guidance's half first when `halves`), checked against
        the call's batch: as they come, or on a denoiser whose layers see a clip's `frames` as rows (the text
        repeated per frame), each sample's first row, checked to be one prompt per clip."""
        n, model = state.num_samples, self.denoiser.model_class.__name__
        if text.shape[0] != (2 * n if halves else n) * frames:
            clips = f" of {frames} frames" if frames > 1 else ""
            raise FlexIPError(
                f"the {model} got a batch of {text.shape[0]} text embeddings, where this call makes "
                f"{2 * n if halves else n}{clips} ({n} samples{', with guidance' if halves else ''})"
            )
        if frames == 1:
            return text
        samples = text[::frames]
        if not torch.equal(text, samples.repeat_interleave(frames, dim=0)):
            raise FlexIPError(
                f"the {model} got other text embeddings for the frames of one clip (a prompt per frame, as "
                "FreeNoise's): FlexIP conditions a clip on one prompt; give one"
            )
        return samples

    def _weights(self, state: _Generation, text: torch.Tensor) -> tuple[BranchWeights, dict[nn.Module, BranchWeights]]:
        """Every layer's branch weights s·g and s·(1−g) at the state's progress, a row per sample and frame:
        those most layers share, and the layers whose weights differ (a per-block dial). Made on the CPU from
        the dial's numbers, so no host synchronisation, and moved to the text's device."""
        layers, frames = self.adapter.layer_projections(), state.frames
        g = torch.tensor([
            dial.at(state.progress, len(layers), frame_progress(frame, frames))
            for dial in state.dials for frame in range(frames)
        ])  # (samples * frames, layers)  # fmt: skip
        if state.guided and not state.negative_call:
            g = g.repeat(2, 1)  # the unconditional half first, sample for sample
        s = torch.tensor(state.scales)
        preservation, personalization = s * g, s * (1 - g)
        by_column: dict[tuple, BranchWeights] = {}
        per_layer = {}
        for index, projections in enumerate(layers.values()):
            column = (tuple(preservation[:, index].tolist()), tuple(personalization[:, index].tolist()))
            if column not in by_column:
                by_column[column] = BranchWeights.create(
                    preservation[:, index].contiguous(), personalization[:, index].contiguous(), text.dtype, text.device,
                    frames,
                )  # fmt: skip
            per_layer[projections] = by_column[column]
        shared = max(by_column.values(), key=lambda weights: sum(w is weights for w in per_layer.values()))
        return shared, {projections: w for projections, w in per_layer.items() if w is not shared}


def _execution_device(model: nn.Module) -> torch.device:
    """Where the denoiser runs: with model or sequential CPU offload (accelerate's hooks, as diffusers'
    `_execution_device` finds them) its weights wait on the CPU or the meta device between calls, and move to
    the hook's execution device only inside its forward; otherwise where its weights are."""
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
    return next(model.parameters()).device
