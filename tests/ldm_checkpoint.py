"""A diffusers pipeline written as one checkpoint file in the original (LDM/SGM) layout, as most fine-tunes
ship, so the tests can load single-file bases offline. The inverse of what diffusers' `from_single_file`
converts (`diffusers.loaders.single_file_utils`); only the tests need it, so it lives here."""

from __future__ import annotations

import os

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save_file

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
          "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}  # fmt: skip


def _resnet(rest: str) -> str:
    first, _, tail = rest.partition(".")
    return f"{RESNET.get(first, first)}.{tail}"


def unet_keys(unet) -> dict[str, str]:
    """diffusers UNet key -> LDM key (without the `model.diffusion_model.` prefix)."""
    layers = unet.config.layers_per_block
    fixed = {**DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]}
    names = {}
    for key in unet.state_dict():
        parts = key.split(".")
        if key in fixed:
            names[key] = fixed[key]
        elif parts[0] == "down_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            slot = 1 + block * (layers + 1) + index
            if kind == "resnets":
                names[key] = f"input_blocks.{slot}.0.{_resnet(rest)}"
            elif kind == "attentions":
                names[key] = f"input_blocks.{slot}.1.{rest}"
            else:  # downsamplers.0.conv.*: the block's last slot
                names[key] = f"input_blocks.{1 + block * (layers + 1) + layers}.0.op.{rest.removeprefix('conv.')}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            names[key] = f"middle_block.1.{rest}" if kind == "attentions" else f"middle_block.{2 * index}.{_resnet(rest)}"
        elif parts[0] == "up_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            slot = block * (layers + 1) + index  # an up block has layers + 1 resnets
            if kind == "resnets":
                names[key] = f"output_blocks.{slot}.0.{_resnet(rest)}"
            elif kind == "attentions":
                names[key] = f"output_blocks.{slot}.1.{rest}"
            else:  # upsamplers.0.conv.*: after the last layer's resnet (and attention, if the block has them)
                has_attention = hasattr(unet.up_blocks[block], "attentions")
                names[key] = f"output_blocks.{block * (layers + 1) + layers}.{2 if has_attention else 1}.{rest}"
        else:
            raise ValueError(f"no LDM name for UNet key {key}")
    return names


def vae_keys(vae) -> dict[str, str]:
    """diffusers VAE key -> LDM key (without the `first_stage_model.` prefix); attention as 1x1 convolutions."""
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    blocks = len(vae.config.up_block_types)
    names = {}
    for key in vae.state_dict():
        parts = key.split(".")
        side = parts[0]
        if key in fixed:
            names[key] = fixed[key]
        elif parts[1] in ("down_blocks", "up_blocks"):
            block = int(parts[2]) if parts[1] == "down_blocks" else blocks - 1 - int(parts[2])
            ldm = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] == "resnets":
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                names[key] = f"{side}.{ldm}.{block}.block.{parts[4]}.{rest}"
            else:  # downsamplers.0.conv / upsamplers.0.conv
                names[key] = f"{side}.{ldm}.{block}.{'downsample' if ldm == 'down' else 'upsample'}.{'.'.join(parts[5:])}"
        elif parts[1] == "mid_block" and parts[2] == "resnets":
            rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
            names[key] = f"{side}.mid.block_{int(parts[3]) + 1}.{rest}"
        elif parts[1] == "mid_block":  # attentions.0.<layer>.<weight|bias>
            layer, tensor = ".".join(parts[4:-1]), parts[-1]
            names[key] = f"{side}.mid.attn_1.{attention[layer]}.{tensor}"
        else:
            raise ValueError(f"no LDM name for VAE key {key}")
    return names


def _clip(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text encoder as the LDM `transformer.text_model.*` keys under `prefix`."""
    return {f"{prefix}text_model.{key.removeprefix('text_model.')}": tensor
            for key, tensor in text_encoder.state_dict().items()}  # fmt: skip


def _open_clip(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text encoder with projection in OpenCLIP's layout under `prefix` (SDXL's second encoder)."""
    state = {key.removeprefix("text_model."): tensor for key, tensor in text_encoder.state_dict().items()}
    out = {
        f"{prefix}positional_embedding": state.pop("embeddings.position_embedding.weight"),
        f"{prefix}token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        f"{prefix}ln_final.weight": state.pop("final_layer_norm.weight"),
        f"{prefix}ln_final.bias": state.pop("final_layer_norm.bias"),
        f"{prefix}text_projection": state.pop("text_projection.weight").T.contiguous(),
    }
    state.pop("embeddings.position_ids", None)
    for layer in range(text_encoder.config.num_hidden_layers):
        old, new = f"encoder.layers.{layer}.", f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            out[f"{new}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{old}self_attn.{p}_proj.{kind}") for p in "qkv"]
            )
            out[f"{new}attn.out_proj.{kind}"] = state.pop(f"{old}self_attn.out_proj.{kind}")
            out[f"{new}ln_1.{kind}"] = state.pop(f"{old}layer_norm1.{kind}")
            out[f"{new}ln_2.{kind}"] = state.pop(f"{old}layer_norm2.{kind}")
            out[f"{new}mlp.c_fc.{kind}"] = state.pop(f"{old}mlp.fc1.{kind}")
            out[f"{new}mlp.c_proj.{kind}"] = state.pop(f"{old}mlp.fc2.{kind}")
    if state:
        raise ValueError(f"no OpenCLIP name for {min(state)}")
    return out


def save_single_file(pipe, path: str | os.PathLike) -> None:
    """Write `pipe` (a StableDiffusionPipeline or StableDiffusionXLPipeline) as one LDM-layout safetensors file."""
    tensors = {}
    unet, vae = pipe.unet.state_dict(), pipe.vae.state_dict()
    tensors.update({f"model.diffusion_model.{new}": unet[old] for old, new in unet_keys(pipe.unet).items()})
    for old, new in vae_keys(pipe.vae).items():
        tensor = vae[old]
        if ".mid.attn_1." in new and new.endswith("weight") and tensor.ndim == 2 and "norm" not in new:
            tensor = tensor[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        tensors[f"first_stage_model.{new}"] = tensor
    if getattr(pipe, "text_encoder_2", None) is None:
        tensors.update(_clip(pipe.text_encoder, "cond_stage_model.transformer."))
    else:
        tensors.update(_clip(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        tensors.update(_open_clip(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    save_file({key: tensor.contiguous() for key, tensor in tensors.items()}, os.fspath(path))
