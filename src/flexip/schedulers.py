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


def make_scheduler(name: str, current):
    """The scheduler `name`, configured like the diffusers scheduler `current` (the base model's noise schedule)."""
    import diffusers

    if name not in SCHEDULERS:
        raise FlexIPError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(current.config)
