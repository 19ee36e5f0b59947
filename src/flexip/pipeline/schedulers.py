"""Scheduler names for the command line, mapped to diffusers classes (any diffusers scheduler works in Python)."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..errors import FlexIPError

SCHEDULERS = {
    "ddim": DDIMScheduler,  # method.md §4's default
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,  # DPM-Solver++ (its default algorithm_type)
    "unipc": UniPCMultistepScheduler,
}


def make_scheduler(name: str, current: SchedulerMixin) -> SchedulerMixin:
    """The scheduler `name`, configured like `current` (the base model's noise schedule)."""
    if name not in SCHEDULERS:
        raise FlexIPError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(current.config)
