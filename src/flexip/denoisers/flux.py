"""FLUX.1's transformer (`FluxTransformer2DModel`: FLUX.1-dev, -schnell and their fine-tunes): FlexIP joins the
attention of every double-stream block, the layers where diffusers' own FLUX IP-Adapter attends.

The condition reaches those layers through the transformer's `joint_attention_kwargs`, as `ip_hidden_states`:
diffusers' FLUX attention hands a keyword only to the processors whose call names it, and leaves this one
out quietly for the others (the single-stream blocks' processors), so no block code is replaced and nothing
warns. The branch tokens P and S live at the width of the prompt's T5 tokens (`joint_attention_dim`), before
the transformer's `context_embedder`, as diffusers' FLUX IP-Adapter's image tokens do. The latents are packed
2x2 into tokens on a grid the transformer's `img_ids` give; a mask is resized to that grid.

Training is flow matching, as diffusers' FLUX training examples do it and with their utilities: a noise level
sigma drawn from the configured density (`flow_matching` in the training config) indexes the base's
flow-matching schedule, noisy = (1 - sigma) * latents + sigma * noise, and the transformer predicts the velocity
noise - latents, from latents packed 2x2 with their ids; the prediction is unpacked to the latents' shape, so the
loss and its subject weight are the UNet's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
from torch import nn

from ..errors import FlexIPError
from .blocks import FLUX_BLOCKS
from .denoiser import TrainableDenoiser

# The `joint_attention_kwargs` entry that carries the condition (its processors' keyword).
CONDITION_KEYWORD = "ip_hidden_states"
_FORWARD = inspect.signature(FluxTransformer2DModel.forward)
# The T5 tokens training encodes a caption to (FluxPipeline's default length, `families/flux.py`).
TEXT_TOKENS = 512


class FluxDoubleStream(TrainableDenoiser):
    name = "flux"
    model_class = FluxTransformer2DModel
    pipeline_attribute = "transformer"
    block_names = FLUX_BLOCKS

    def attention_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The attention of each double-stream block, `transformer_blocks.i.attn`."""
        return {f"transformer_blocks.{index}.attn.processor": block.attn
                for index, block in enumerate(model.transformer_blocks)}  # fmt: skip

    def layer_sizes(self, model: nn.Module, attention: nn.Module) -> tuple[int, int]:
        """The branch tokens are as wide as the T5 tokens; the keys/values as the attention's heads."""
        return model.config.joint_attention_dim, attention.inner_dim

    @torch.no_grad()
    def text_keys(self, model: nn.Module, attention: nn.Module) -> torch.Tensor:
        """The layer's text keys from the T5 tokens: the transformer's `context_embedder`, then the layer's
        `add_k_proj`. Their biases are left out: a key bias moves all of a query's logits alike, which the
        softmax ignores."""
        return attention.add_k_proj.weight @ model.context_embedder.weight

    def layer_grid(self, positions: int, latent_size: tuple[int, int]) -> tuple[int, int]:
        """Every joined layer's image stream holds the whole packed grid (`latent_size`)."""
        height, width = latent_size
        if positions != height * width:
            raise FlexIPError(
                f"the image stream holds {positions} tokens, the generated image {height * width}: reference masks "
                "act on the generated image's tokens alone, and this pipeline adds others (a context image's)"
            )
        return height, width

    def with_condition(
        self, args: tuple, kwargs: dict, condition_for: Callable[[torch.Tensor, Callable], object]
    ) -> tuple[tuple, dict]:
        """`transformer(hidden_states, encoder_hidden_states, ..., img_ids, ..., joint_attention_kwargs)`: the
        condition joins a copy of the call's `joint_attention_kwargs` (the pipeline passes its own dict to
        every call, a ControlNet's too)."""
        arguments = _FORWARD.bind(None, *args, **kwargs).arguments
        del arguments["self"]
        image_ids = arguments["img_ids"]

        def latent_size() -> tuple[int, int]:
            """The packed grid of the generated image: the tokens whose first id is 0 (a context image's, as
            FLUX.1 Kontext adds them, have 1) hold its rows and columns."""
            ids = image_ids[0] if image_ids.ndim == 3 else image_ids
            own = ids[ids[:, 0] == 0]
            return int(own[:, 1].max()) + 1, int(own[:, 2].max()) + 1

        joint = dict(arguments.get("joint_attention_kwargs") or {})
        joint[CONDITION_KEYWORD] = condition_for(arguments["encoder_hidden_states"], latent_size)
        arguments["joint_attention_kwargs"] = joint
        return (), arguments

    def scheduler_class(self) -> type:
        return FlowMatchEulerDiscreteScheduler

    def sampler(self, scheduler) -> FlowMatchEulerDiscreteScheduler:
        """FLUX.1's own flow-matching Euler sampler, with the base's shift."""
        return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)

    def check_schedule(self, scheduler, where: str) -> None:
        """Every FLUX.1 schedule trains: static or resolution-dependent shift, `noise_levels` reads either."""

    def check_objective(self, config) -> None:
        """min_snr_gamma is the DDPM families' weighting; flow matching's is flow_matching.weighting_scheme."""
        if config.min_snr_gamma:
            raise FlexIPError(
                f"config min_snr_gamma: {config.min_snr_gamma} weighs the Stable Diffusion families' loss; a FLUX.1 "
                "base trains with flow matching: set it to 0 and choose flow_matching.weighting_scheme (sigma_sqrt "
                "or cosmap weigh the loss by the noise level)"
            )

    def noisy_and_target(
        self, scheduler, latents: torch.Tensor, generator: torch.Generator, config
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, each sample's sigma: the transformer's timestep, velocity target)."""
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        sigmas = noise_levels(scheduler, draw_density(config.flow_matching, len(latents), generator)).to(latents.device)
        noisy, target = flow_matching_pair(latents, noise, sigmas)
        return noisy, sigmas, target

    def predict(
        self, model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, condition,
        added: dict | None, config,
    ) -> torch.Tensor:  # fmt: skip
        """The velocity the transformer predicts for (batch, channels, height, width) latents, packed as
        FluxPipeline packs them and unpacked back; the guidance embedding gets flow_matching.guidance."""
        batch, channels, height, width = noisy.shape
        if height % 2 or width % 2:
            raise FlexIPError(
                f"config data.resolution gives {height}x{width} latents, which FLUX.1 cannot pack 2x2: use a "
                "multiple of 16 pixels"
            )
        guidance = None
        if model.config.guidance_embeds:
            guidance = torch.full((batch,), config.flow_matching.guidance, device=noisy.device)
        arguments = {
            "hidden_states": FluxPipeline._pack_latents(noisy, batch, channels, height, width),
            "encoder_hidden_states": text, "pooled_projections": added["pooled_projections"],
            "timestep": timesteps, "guidance": guidance,
            "img_ids": FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, noisy.device, noisy.dtype),
            "txt_ids": torch.zeros(text.shape[1], 3, device=noisy.device, dtype=noisy.dtype), "return_dict": False,
        }  # fmt: skip
        args, kwargs = self.with_condition((), arguments, lambda *_: condition)
        # The unpacked grid is the latents' own (a VAE scale of 1 in FluxPipeline's pixel arithmetic).
        return FluxPipeline._unpack_latents(model(*args, **kwargs)[0], height, width, 1)

    def loss_weight(self, scheduler, timesteps: torch.Tensor, config) -> torch.Tensor:
        """diffusers' SD3/FLUX weighting of each sample's loss by its sigma (1 unless sigma_sqrt or cosmap)."""
        return compute_loss_weighting_for_sd3(config.flow_matching.weighting_scheme, timesteps)

    def activation_values(self, model: nn.Module, resolution: int) -> int:
        """About how many values one sample's activations keep for the backward pass, at `resolution` px.

        A rough estimate, as the UNet's: every block keeps about 12 values of the model's width for each of its
        tokens (FLUX.1's VAE grid of resolution / 8, packed 2x2, and the T5 tokens), double- and single-stream
        blocks alike, as measured at FLUX.1's width with FlexIP's branches attached (docs/performance.md,
        `bench/flux_train_step.py`: 11.3 and 11.0).
        """
        config = model.config
        tokens = (resolution // 16) ** 2 + TEXT_TOKENS
        width = config.num_attention_heads * config.attention_head_dim
        return tokens * width * 12 * (config.num_layers + config.num_single_layers)


def draw_density(settings, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(batch,) draws u in [0, 1] from the configured density (`FlowMatchingConfig`: logit-normal, "mode" or
    uniform), by diffusers' SD3/FLUX training utility."""
    return compute_density_for_timestep_sampling(
        settings.weighting_scheme, batch, settings.logit_mean, settings.logit_std, settings.mode_scale,
        device=generator.device, generator=generator,
    )  # fmt: skip


def noise_levels(scheduler: FlowMatchEulerDiscreteScheduler, u: torch.Tensor) -> torch.Tensor:
    """The sigmas of the training schedule that draws u index, as diffusers' FLUX training examples index them:
    u near 0 is the noisiest level. The schedule is the base's: shifted by its `shift` unless it shifts by the
    resolution at sampling time (FLUX.1-dev's use_dynamic_shifting), when training draws the unshifted levels."""
    steps = scheduler.config.num_train_timesteps
    indices = (u * steps).long().clamp(0, steps - 1)  # "mode" maps a draw of exactly 0 to 1
    return scheduler.sigmas.to(u.device)[indices]


def flow_matching_pair(
    latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy latents, velocity target) at each sample's sigma: the straight path from the latents (sigma 0) to
    the noise (sigma 1) and its constant velocity."""
    sigma = sigmas.to(latents.dtype).view(-1, *[1] * (latents.ndim - 1))
    return (1 - sigma) * latents + sigma * noise, noise - latents
