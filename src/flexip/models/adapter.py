"""The FlexIP adapter: both adapters, the gate and every layer's branch K/V, as one saveable object."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..denoisers.registry import denoiser_of
from ..errors import FlexIPError
from ..families.registry import family_named, family_of_unet
from .attach import attach, detach, joined_layers
from .condition import FlexIPCondition
from .config import FORMAT_VERSION, FlexIPConfig
from .config_file import CONFIG_NAME, read_config
from .files import read_weights, write_adapter
from .gate import DynamicWeightGate
from .personalization import PersonalizationAdapter
from .preservation import PreservationAdapter
from .projections import BranchProjections
from .weights import BranchWeights, branch_weights


def check_fits(config: FlexIPConfig, source: str) -> None:
    """Count the parameters on the meta device (nothing allocated) and refuse more than this machine's memory."""
    with torch.device("meta"):
        parameters = sum(p.numel() for p in FlexIPAdapter(config).parameters())
    needed, memory = parameters * 4, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > memory:
        raise FlexIPError(
            f"{source}: the adapter these sizes describe has {parameters:,} parameters ({needed / 2**30:.1f} GiB in "
            f"float32), more than this machine's {memory / 2**30:.1f} GiB of memory; check the sizes"
        )


def _module_key(layer_name: str) -> str:
    # nn.ModuleDict keys cannot contain dots; the config keeps the real processor names.
    return layer_name.removesuffix(".processor").replace(".", "__")


class FlexIPAdapter(nn.Module):
    """Preservation adapter, Personalization adapter, gate, and per-layer branch K/V (docs/method.md §2).

    Build one for a UNet with `FlexIPAdapter.for_unet`, or load one with `from_pretrained`. `attach(unet)`
    installs it into the UNet's cross-attention layers, `detach(unet)` restores the original processors.
    """

    def __init__(self, config: FlexIPConfig):
        super().__init__()
        self.config = config
        pres, pers = config.preservation, config.personalization
        self.preservation = PreservationAdapter(
            config.clip_embed_dim, config.dino_hidden_dim, config.cross_attention_dim,
            pres.num_queries, pres.num_clip_tokens, pres.width, pres.depth, pres.heads, pres.head_dim, pres.ff_mult,
        )  # fmt: skip
        self.personalization = PersonalizationAdapter(
            config.clip_embed_dim, config.cross_attention_dim,
            pers.num_clip_tokens, pers.depth, pers.heads, pers.head_dim, pers.ff_mult,
        )  # fmt: skip
        self.gate = DynamicWeightGate(
            config.gate.image_init, config.gate.video_init, config.gate.noise_std, config.gate.uniform_share
        )
        self.layers = nn.ModuleDict(
            {_module_key(name): BranchProjections(in_dim, out_dim) for name, (in_dim, out_dim) in config.layers.items()}
        )

    @classmethod
    def for_unet(
        cls,
        unet: nn.Module,
        clip_embed_dim: int,
        dino_hidden_dim: int,
        base_model: str = "",
        image_encoder: str = "",
        dino_encoder: str = "",
        **overrides,
    ) -> FlexIPAdapter:
        """A fresh adapter sized from `unet`: exactly the base model until trained (`BranchProjections.start_from`)."""
        layers, denoiser = joined_layers(unet), denoiser_of(unet)
        if not layers:
            raise FlexIPError("the UNet has no cross-attention layers: FlexIP needs a text-conditioned UNet")
        text_keys = {name: denoiser.text_keys(unet, attn) for name, attn in layers.items()}
        sizes = {name: denoiser.layer_sizes(unet, attn) for name, attn in layers.items()}
        widths = {text_width for text_width, _ in sizes.values()}
        if len(widths) != 1:
            raise FlexIPError(f"the UNet's cross-attention layers take text of several widths {sorted(widths)}")
        config = FlexIPConfig.from_dict(
            {
                "cross_attention_dim": widths.pop(),
                "clip_embed_dim": clip_embed_dim,
                "dino_hidden_dim": dino_hidden_dim,
                "layers": {name: list(size) for name, size in sizes.items()},
                "base_model": base_model,
                "base_family": family_of_unet(unet).name,
                "image_encoder": image_encoder,
                "dino_encoder": dino_encoder,
                "format_version": FORMAT_VERSION,
                **overrides,
            },
            source="FlexIPAdapter.for_unet",
        )
        check_fits(config, "FlexIPAdapter.for_unet")
        adapter = cls(config)
        for name, keys in text_keys.items():
            adapter.layers[_module_key(name)].start_from(keys)
        return adapter

    def forward(
        self,
        clip_embeds: torch.Tensor,
        dino_tokens: torch.Tensor,
        text_embeds: torch.Tensor,
        preservation: torch.Tensor | float,
        scale: torch.Tensor | float = 1.0,
        cache: bool = False,
        null_rows: torch.Tensor | None = None,
    ) -> FlexIPCondition:
        """The condition of a batch with one reference per sample and g, s per sample (training; direct calls):
        pass it as `encoder_hidden_states=(text, condition)`. Samples in `null_rows` get the null reference
        (condition dropout). Built by `condition`, as a pipeline's are."""
        batch = text_embeds.shape[0]
        preservation_weight, personalization_weight = branch_weights(preservation, scale, batch, text_embeds.device)
        # Computed once per condition: one host sync per call, not one per layer.
        weights = BranchWeights.create(preservation_weight, personalization_weight, text_embeds.dtype)
        return self.condition(
            [(clip_embeds, dino_tokens)], text_embeds, weights, null_rows=null_rows, kv_cache={} if cache else None
        )

    def condition(
        self, references: list[tuple[torch.Tensor, torch.Tensor]], text: torch.Tensor, weights: BranchWeights,
        layer_weights: dict[nn.Module, BranchWeights] | None = None, *, null_rows: torch.Tensor | None = None,
        may_use: tuple[bool, bool] = (False, False), **condition,
    ) -> FlexIPCondition:  # fmt: skip
        """A denoiser call's condition: the one builder for training and generation (docs/method.md §2.3, §4).

        `references` holds each subject's (CLIP embedding (rows, d), DINOv2 tokens (rows, n, d)), a row per sample
        of the call; the rows in `null_rows` get the null reference, all-zero features (guidance's unconditional
        half; condition dropout), which both adapters then encode. `text` is what S re-samples, its first
        `Family.personalization_tokens` (the negative prompt's embeddings in guidance's half). `weights` (and
        `layer_weights`, the layers whose differ) are s·g and s·(1−g); a branch that no row of any layer uses is
        not computed, unless `may_use` (Preservation, Personalization) says a later step may use it (a dial over
        the steps). The other keywords are the
        `FlexIPCondition`'s (subjects, latent_size, grid, kv_all_rows, kv_cache).
        """
        layer_weights = layer_weights or {}
        every = [weights, *layer_weights.values()]
        needs_preservation = may_use[0] or any(w.uses("preservation") for w in every)
        needs_personalization = may_use[1] or any(w.uses("personalization") for w in every)
        empty = text.new_zeros(text.shape[0], 0, text.shape[-1])
        grounded = text[:, : family_named(self.config.base_family).personalization_tokens]
        preservation_tokens, personalization_tokens = [], []
        for clip_embeds, dino_tokens in references:
            if null_rows is not None:
                clip_embeds = torch.where(null_rows[:, None], torch.zeros_like(clip_embeds), clip_embeds)
                dino_tokens = torch.where(null_rows[:, None, None], torch.zeros_like(dino_tokens), dino_tokens)
            preservation_tokens.append(self.preservation(clip_embeds, dino_tokens) if needs_preservation else empty)
            personalization_tokens.append(self.personalization(clip_embeds, grounded) if needs_personalization else empty)
        return FlexIPCondition(
            torch.cat(preservation_tokens, dim=1), torch.cat(personalization_tokens, dim=1), weights, layer_weights,
            **condition,
        )

    def layer_projections(self) -> dict[str, BranchProjections]:
        """Each cross-attention layer's branch K/V by the layer's processor name, in the config's order."""
        return {name: self.layers[_module_key(name)] for name in self.config.layers}

    def attach(self, unet: nn.Module) -> None:
        """Install the gated cross-attention in `unet`, after checking every layer's size."""
        self.check_compatible(unet)
        attach(unet, self.layer_projections())

    @staticmethod
    def detach(unet: nn.Module) -> None:
        """Restore the UNet's original attention processors."""
        detach(unet)

    def check_compatible(self, unet: nn.Module) -> None:
        """Fail on a base of another family, or with the first layer whose size differs from `unet`'s."""
        ours, theirs = family_named(self.config.base_family), family_of_unet(unet)
        if ours is not theirs:
            raise FlexIPError(
                f"this adapter was trained for {ours.title} (base_family {ours.name!r}) but the base model is "
                f"{theirs.title}: use a {ours.title} base, or an adapter trained for {theirs.title}"
            )
        layers = joined_layers(unet)
        for name, (in_dim, out_dim) in self.config.layers.items():
            if name not in layers:
                raise FlexIPError(
                    f"adapter layer {name} does not exist in the base UNet: this adapter was made for another "
                    "base model architecture; use the base model it was trained with"
                )
            attn = layers[name]
            base = denoiser_of(unet).layer_sizes(unet, attn)
            if base != (in_dim, out_dim):
                raise FlexIPError(
                    f"adapter layer {name} has K/V {in_dim}->{out_dim} but the base UNet's is {base[0]}->{base[1]}: "
                    "this adapter was made for another base model; use the base model it was trained with"
                )
        missing = sorted(set(layers) - set(self.config.layers))
        if missing:
            raise FlexIPError(
                f"the base UNet has cross-attention layer {missing[0]} that the adapter lacks "
                f"({len(missing)} in all): use the base model the adapter was trained with"
            )

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `flexip_config.json` and `flexip_adapter.safetensors` (float32 unless the weights are not) into
        `directory`, atomically (`files.write_adapter`); every other file in it is left alone."""
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        write_adapter(directory, state, self.config)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> FlexIPAdapter:
        """Load an adapter directory written by `save_pretrained`; every tensor's name and shape is checked."""
        directory, config = read_config(directory)
        check_fits(config, str(directory / CONFIG_NAME))
        adapter = cls(config)
        adapter.load_state_dict(read_weights(directory, adapter.state_dict()))
        adapter.source_directory = directory
        if torch_dtype is not None:
            adapter.to(torch_dtype)
        return adapter.eval()

    def resolve_model(self, reference: str) -> str:
        """A model id from the config; "./x" and "../x" are taken relative to the adapter directory."""
        directory = getattr(self, "source_directory", None)
        if directory is not None and reference.startswith(("./", "../")):
            return str((directory / reference).resolve())
        return reference
