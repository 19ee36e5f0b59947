"""The optimizer and the learning rate of each of its steps: AdamW (or bitsandbytes' 8-bit AdamW on CUDA), the
gate logits without weight decay, and a linear warm-up. (Gradient clipping is the trainer's loop: accelerate's
`clip_grad_norm_` needs the prepared model.)"""

from __future__ import annotations

import importlib.util

import torch

from ..errors import FlexIPError
from ..models.adapter import FlexIPAdapter
from .config import TrainConfig


def check_optimizer(config: TrainConfig) -> None:
    """Refuse an optimizer this machine cannot run, before any model loads."""
    if config.optimizer != "adamw8bit":
        return
    if not torch.cuda.is_available():
        raise FlexIPError("config optimizer: adamw8bit (bitsandbytes' 8-bit AdamW) needs a CUDA GPU; use adamw")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise FlexIPError("config optimizer: adamw8bit needs bitsandbytes; `pip install bitsandbytes` or use adamw")


def build_optimizer(adapter: FlexIPAdapter, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the adapter; the gate logits get no weight decay (it would pull every g towards 0.5)."""
    gate = [adapter.gate.logits]
    rest = [p for p in adapter.parameters() if p is not adapter.gate.logits]
    groups = [{"params": rest, "weight_decay": config.weight_decay}, {"params": gate, "weight_decay": 0.0}]
    if config.optimizer == "adamw8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, lr=config.learning_rate)
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of optimizer step `step` (0 = the first): a linear warm-up over `lr_warmup_steps`,
    then constant. A function of the step alone, so a resumed run continues the schedule exactly."""
    if step >= config.lr_warmup_steps:
        return config.learning_rate
    return config.learning_rate * (step + 1) / config.lr_warmup_steps


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value
