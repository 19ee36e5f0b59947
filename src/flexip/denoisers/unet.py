"""The UNet with cross-attention (Stable Diffusion 1.5, SDXL): FlexIP joins every `attn2`.

The text reaches those layers as the UNet's `encoder_hidden_states`; FlexIP passes `(text, condition)` there,
which diffusers hands to the cross-attention processors only, so the self-attention processors never see it.
Block names are diffusers' `set_ip_adapter_scale` ones (`blocks.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn

from ..errors import FlexIPError
from .blocks import UNET_BLOCKS
from .denoiser import Denoiser, TrainableDenoiser


class UNetLayers(Denoiser):
    """What generation needs of a UNet whose cross-attention layers FlexIP joins, shared by Stable Diffusion's
    UNet (`UNetCrossAttention`) and AnimateDiff's (`motion_unet.py`): the layers, their sizes and grids, and
    the text reaching them as `encoder_hidden_states`."""

    def attention_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The cross-attention layers, found through diffusers' processor API and `Attention.is_cross_attention`."""
        layers = {}
        for name in model.attn_processors:
            module = model.get_submodule(name.removesuffix(".processor"))
            if isinstance(module, Attention) and module.is_cross_attention:
                layers[name] = module
        return layers

    def layer_sizes(self, model: nn.Module, attention: nn.Module) -> tuple[int, int]:
        return attention.to_k.in_features, attention.to_k.out_features

    def text_keys(self, model: nn.Module, attention: nn.Module) -> torch.Tensor:
        """The layer's own text key projection (`to_k`), which the branch keys copy: one without a bias."""
        if attention.to_k.bias is not None or attention.to_v.bias is not None:
            raise FlexIPError("the UNet's cross-attention K/V projections have a bias, which FlexIP does not support")
        return attention.to_k.weight

    def layer_grid(self, positions: int, latent_size: tuple[int, int]) -> tuple[int, int]:
        """Each down block halves the latents rounding up (a stride-2 convolution with padding 1), and the up
        blocks return to those sizes, so every level's grid is the latent grid halved a whole number of times."""
        height, width = latent_size
        while height * width > positions and (height, width) != (1, 1):
            height, width = (height + 1) // 2, (width + 1) // 2
        if height * width != positions:
            raise ValueError(f"no UNet level of {latent_size[0]}x{latent_size[1]} latents has {positions} positions")
        return height, width

    def with_condition(
        self, args: tuple, kwargs: dict, condition_for: Callable[[torch.Tensor, Callable], object]
    ) -> tuple[tuple, dict]:
        """`unet(sample, timestep, encoder_hidden_states, ...)`, the text given by name or third."""
        sample = kwargs["sample"] if "sample" in kwargs else args[0]

        def latent_size() -> tuple[int, int]:
            return tuple(sample.shape[-2:])

        if "encoder_hidden_states" in kwargs:
            text = kwargs["encoder_hidden_states"]
            kwargs["encoder_hidden_states"] = (text, condition_for(text, latent_size))
        else:
            args = (*args[:2], (args[2], condition_for(args[2], latent_size)), *args[3:])
        return args, kwargs


class UNetCrossAttention(UNetLayers, TrainableDenoiser):
    """Stable Diffusion's UNet2DConditionModel (SD1.5, SDXL): its layers, and the epsilon objective FlexIP
    trains it with."""

    name = "unet"
    model_class = UNet2DConditionModel
    pipeline_attribute = "unet"
    block_names = UNET_BLOCKS

    def scheduler_class(self) -> type:
        return DDPMScheduler

    def sampler(self, scheduler) -> DDIMScheduler:
        """DDIM on the training schedule (docs/method.md §4)."""
        return DDIMScheduler.from_config(scheduler.config)

    def check_schedule(self, scheduler, where: str) -> None:
        """FlexIP trains a UNet with the epsilon objective (docs/method.md §3)."""
        if scheduler.config.prediction_type != "epsilon":
            raise FlexIPError(
                f"{where} predicts {scheduler.config.prediction_type!r}; FlexIP trains with the epsilon objective "
                "(docs/method.md §3): use an epsilon-prediction model such as Stable Diffusion 1.5"
            )

    def check_objective(self, config) -> None:
        """Every setting of the epsilon objective applies (flow_matching is FLUX.1's, and unused here)."""

    def noisy_and_target(
        self, scheduler, latents: torch.Tensor, generator: torch.Generator, config
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, timesteps, target): DDPM's forward process at uniform timesteps; the target of
        epsilon prediction is the noise."""
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        steps = scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator, device=latents.device)
        return scheduler.add_noise(latents, noise, timesteps), timesteps, noise

    def predict(
        self, model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, condition,
        added: dict | None, config,
    ) -> torch.Tensor:  # fmt: skip
        """The model's prediction for a training batch, the condition joined as in a pipeline's calls."""
        args, kwargs = self.with_condition(
            (noisy, timesteps), {"encoder_hidden_states": text, "added_cond_kwargs": added}, lambda *_: condition
        )
        return model(*args, **kwargs).sample

    def loss_weight(self, scheduler, timesteps: torch.Tensor, config) -> torch.Tensor | None:
        """Each sample's min-SNR-gamma loss weight (config min_snr_gamma; 0: none)."""
        return min_snr_weight(scheduler, timesteps, config.min_snr_gamma) if config.min_snr_gamma else None

    def activation_values(self, model: nn.Module, resolution: int) -> int:
        """About how many values one sample's activations keep for the backward pass, at `resolution` px.

        A rough estimate: each UNet level keeps about 26 tensors of its width and size per layer (resnet and
        transformer inputs, norms, attention, feed-forward), layers_per_block of them on the way down and one
        more on the way up. On the tiny kit it gives the 24 GB a batch of 100000 was killed at.
        """
        latent = resolution // 8
        widths = model.config.block_out_channels
        per_level = sum(width * (latent // 2**level) ** 2 for level, width in enumerate(widths))
        return per_level * 26 * (2 * model.config.layers_per_block + 1)


def min_snr_weight(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weight of an epsilon-prediction loss: min(SNR, gamma) / SNR (Hang et al. 2023, eq. 8)."""
    alpha_bar = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr
