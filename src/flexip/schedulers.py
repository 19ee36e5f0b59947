"""Scheduler names for the command line, mapped to diffusers classes (any diffusers scheduler works in Python).

Classes are named, not imported, so that building the command line's parser does not import diffusers.
"""

from __future__ import annotations

from .errors import FlexIPError

SCHEDULERS = {
    "ddim": "DDIMScheduler",  # docs/method.md §4's default
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",  # DPM-Solver++ (its default algorithm_type)
    "unipc": "UniPCMultistepScheduler",
}


# On a flow-matching base (FLUX.1) both deterministic first-order samplers are its own flow-matching Euler:
# DDIM's step, written for a velocity on the straight path from data to noise, is exactly Euler's.
FLOW_MATCHING = {"ddim": "FlowMatchEulerDiscreteScheduler", "euler": "FlowMatchEulerDiscreteScheduler"}


def make_scheduler(name: str, current):
    """The scheduler `name`, configured like the diffusers scheduler `current` (the base model's noise schedule)."""
    import diffusers

    if name not in SCHEDULERS:
        raise FlexIPError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if type(current).__name__.startswith("FlowMatch"):
        if name not in FLOW_MATCHING:
            raise FlexIPError(
                f"scheduler {name!r} does not sample a flow-matching base such as FLUX.1; choose "
                f"{' or '.join(FLOW_MATCHING)} (its flow-matching Euler sampler)"
            )
        return getattr(diffusers, FLOW_MATCHING[name]).from_config(current.config)
    return getattr(diffusers, SCHEDULERS[name]).from_config(current.config)
