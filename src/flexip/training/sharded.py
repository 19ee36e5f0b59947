"""Sharded training state: FSDP2 and DeepSpeed ZeRO-1/2, with checkpoints that hold only the adapter.

Under both, accelerate's `save_state` writes the whole wrapped model (FSDP's `save_fsdp_model`, the DeepSpeed
engine's `save_checkpoint`) before checkpoint.py's hooks could keep it to the adapter, so each has its own path:

    FSDP2      the frozen UNet is left out of FSDP (replicated, as under DDP); the adapter's parameters, gradients
               and optimizer state are sharded. A checkpoint is the DDP layout: adapter/ (gathered on the main
               process), optimizer.bin (the optimizer's full state, keyed by parameter name, as accelerate writes
               it for FSDP2), random_states_N.pkl and scaler.pt (accelerate's).
    DeepSpeed  the engine's own checkpoint without frozen parameters (`exclude_frozen_parameters=True`):
               pytorch_model/ holds the adapter's weights and each process's ZeRO partition of the fp32 master
               weights and optimizer state; adapter/ holds the fp32 master weights, gathered.

Either way `adapter/` is the full float32 adapter that `flexip generate --adapter` loads. A checkpoint resumes
under the strategy that wrote it (DeepSpeed's, with the same number of processes).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.checkpointing import load_accelerator_state, save_accelerator_state
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from torch import nn

from ..errors import FlexIPError
from ..models.adapter import FlexIPAdapter
from ..models.config import FlexIPConfig
from ..models.config_file import WEIGHTS_NAME
from .config import TrainConfig
from .objective import FlexIPTrainingModel

OPTIMIZER_NAME = "optimizer.bin"  # accelerate's name, for FSDP2 too
ADAPTER_PREFIX = "adapter."  # the adapter's place in FlexIPTrainingModel


def strategy(accelerator: Accelerator) -> str:
    """How the run's training state is held: "fsdp" (FSDP2), "deepspeed", or "ddp" (one process or DDP: every
    process holds the whole adapter and its optimizer state)."""
    return {DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed"}.get(
        accelerator.distributed_type, "ddp"
    )


def check_strategy(accelerator: Accelerator) -> None:
    """Refuse the sharded setups this module does not save: FSDP1, ZeRO-3."""
    if accelerator.distributed_type == DistributedType.FSDP and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise FlexIPError(
            "accelerate config: fsdp_version 1 is not supported; set fsdp_version: 2 (configs/accelerate/fsdp.yaml)"
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        if stage not in (1, 2):
            raise FlexIPError(
                f"accelerate config: DeepSpeed zero_stage {stage} is not supported; use 1 or 2 "
                "(configs/accelerate/deepspeed-zero2.yaml): the adapter is small, and ZeRO-3 would partition the "
                "frozen UNet the adapter's attention processors run inside"
            )


def prepare(
    accelerator: Accelerator, model: FlexIPTrainingModel, optimizer: torch.optim.Optimizer, config: TrainConfig
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """`accelerator.prepare(model, optimizer)`, with what FSDP2 and DeepSpeed need from the training config."""
    check_strategy(accelerator)
    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        plugin.ignored_modules = [model.unet]  # frozen: replicated, never all-gathered
        if plugin.mixed_precision_policy is not None:
            # accelerate's policy reduces gradients and returns outputs in the compute dtype; DDP averages the
            # float32 adapter's gradients in float32, and the loss is computed in float32 (objective.py).
            plugin.mixed_precision_policy = dataclasses.replace(
                plugin.mixed_precision_policy, reduce_dtype=torch.float32, output_dtype=None
            )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = config.batch_size  # no DataLoader is prepared to tell it
        ds_config["gradient_clipping"] = config.max_grad_norm  # the engine clips (0: off); else accelerate's 1.0
    return accelerator.prepare(model, optimizer)


def fsdp_adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's full state dict on the main process, gathered from the FSDP2 shards of the prepared `model`
    (empty elsewhere); every process must call it."""
    # torch.distributed.checkpoint is imported only where FSDP needs it: the import takes a second.
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    state = get_model_state_dict(model, options=options)
    return {name.removeprefix(ADAPTER_PREFIX): tensor for name, tensor in state.items()}


def deepspeed_adapter_state(adapter: FlexIPAdapter, keep: bool) -> dict[str, torch.Tensor]:
    """The adapter's float32 master weights, gathered from the ZeRO partitions, where `keep` (else empty); every
    process must call it. The module holds their low-precision copies under bf16/fp16; the fp32 ones train."""
    from deepspeed.utils import safe_get_full_fp32_param  # DeepSpeed is installed wherever it runs

    state = {}
    for name, parameter in adapter.named_parameters():
        full = safe_get_full_fp32_param(parameter)  # an all-reduce: one parameter at a time on the device
        if keep:
            state[name] = full.cpu()
    return state


def adapter_state(accelerator: Accelerator, model: nn.Module, adapter: FlexIPAdapter) -> dict[str, torch.Tensor]:
    """The adapter's full float32 state dict, gathered (complete on the main process); every process must call it."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return fsdp_adapter_state(model)
    return deepspeed_adapter_state(adapter, keep=accelerator.is_main_process)


def write_adapter(config: FlexIPConfig, state: dict[str, torch.Tensor], directory: Path) -> FlexIPAdapter:
    """The adapter of `config` holding the gathered `state`, saved to `directory`."""
    with torch.device("meta"):  # the gathered tensors become its weights: nothing is allocated twice
        adapter = FlexIPAdapter(config)
    adapter.load_state_dict(state, assign=True)
    adapter.save_pretrained(directory)
    return adapter


def save_state(accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Everything but adapter/ into `directory`, on every process."""
    if accelerator.distributed_type == DistributedType.FSDP:
        save_fsdp_state(accelerator, model, optimizer, directory)
    else:
        accelerator.save_state(str(directory), exclude_frozen_parameters=True)  # checkpoint.py registers no hooks


def load_state(
    accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, adapter: FlexIPAdapter,
    directory: Path,
) -> None:  # fmt: skip
    """Restore what `save_state` and `write_adapter` wrote, on every process."""
    if accelerator.distributed_type == DistributedType.FSDP:
        load_fsdp_state(accelerator, model, optimizer, adapter, directory)
    else:
        # The engine's files lack the frozen parameters, which the module keeps as loaded.
        accelerator.load_state(str(directory), load_module_strict=False)


def save_fsdp_state(
    accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path
) -> None:
    """The optimizer's full state (main process) and every process's RNG states and grad scaler (accelerate's)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    optimizer_state = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if accelerator.is_main_process:
        torch.save(optimizer_state, Path(directory) / OPTIMIZER_NAME)
    save_accelerator_state(
        str(directory), [], [], [], [], accelerator.process_index, accelerator.step, accelerator.scaler
    )


def load_fsdp_state(
    accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, adapter: FlexIPAdapter,
    directory: Path,
) -> None:  # fmt: skip
    """Load adapter/ and `save_fsdp_state`'s files into the FSDP2 shards of `model` and `optimizer`."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    weights = load_file(Path(directory) / "adapter" / WEIGHTS_NAME)
    expected = {name: tuple(tensor.shape) for name, tensor in adapter.state_dict().items()}  # global shapes
    found = {name: tuple(tensor.shape) for name, tensor in weights.items()}
    if found != expected:
        differing = min(set(found.items()) ^ set(expected.items()))[0]
        raise FlexIPError(
            f"checkpoint {directory}: its adapter does not fit the configured one (first difference: {differing}); "
            "resume with the config it was trained with"
        )
    # Every process reads the files (the adapter and its optimizer state are small) and keeps its own shards;
    # not strict, as the frozen UNet is not in them.
    weights = {ADAPTER_PREFIX + name: tensor for name, tensor in weights.items()}
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    optimizer_state = torch.load(Path(directory) / OPTIMIZER_NAME, map_location="cpu", weights_only=True)
    # The torch optimizer itself: torch steps a fresh one once (learning rate 0) to create its state, which
    # through accelerate's wrapper would go through the fp16 grad scaler before that is loaded.
    if isinstance(optimizer, AcceleratedOptimizer):
        optimizer = optimizer.optimizer
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))
    override = load_accelerator_state(
        str(directory), [], [], [], [], accelerator.process_index, accelerator.scaler, "cpu"
    )
    accelerator.step = override.get("step", accelerator.step)


@contextlib.contextmanager
def full_parameters(accelerator: Accelerator, model: nn.Module):
    """Within it, the adapter's modules hold their full weights on every process (FSDP2 shards them between
    steps); enter it on every process. `model` is the training module as built: `fully_shard` works in place.
    A no-op for the other strategies, whose processes hold full copies."""
    if accelerator.distributed_type != DistributedType.FSDP:
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()
