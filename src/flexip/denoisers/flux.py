"""FLUX.1's transformer (`FluxTransformer2DModel`: FLUX.1-dev, -schnell and their fine-tunes): FlexIP joins the
attention of every double-stream block, the layers where diffusers' own FLUX IP-Adapter attends.

The condition reaches those layers through the transformer's `joint_attention_kwargs`, as `ip_hidden_states`:
diffusers' FLUX attention hands a keyword only to the processors whose call names it, and leaves this one
out quietly for the others (the single-stream blocks' processors), so no block code is replaced and nothing
warns. The branch tokens P and S live at the width of the prompt's T5 tokens (`joint_attention_dim`), before
the transformer's `context_embedder`, as diffusers' FLUX IP-Adapter's image tokens do. The latents are packed
2x2 into tokens on a grid the transformer's `img_ids` give; a mask is resized to that grid. FLUX is not
trained here yet: this is an inference-only denoiser (`Denoiser`, not `TrainableDenoiser`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from diffusers import FluxTransformer2DModel
from torch import nn

from ..errors import FlexIPError
from .blocks import FLUX_BLOCKS
from .denoiser import Denoiser

# The `joint_attention_kwargs` entry that carries the condition (its processors' keyword).
CONDITION_KEYWORD = "ip_hidden_states"
_FORWARD = inspect.signature(FluxTransformer2DModel.forward)


class FluxDoubleStream(Denoiser):
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
