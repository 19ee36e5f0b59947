"""Validation of the dial and the sampling settings, shared by the pipelines and the command line."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import FlexIPError


def as_number(value, name: str) -> float:
    """`value` as a float (Python, numpy or 0-d torch numbers; not bools); a one-line error naming `name` otherwise."""
    if isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
        raise FlexIPError(f"{name}={value!r} is a boolean; give a number")
    if not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy and 0-d torch scalars
        except (TypeError, ValueError):
            raise FlexIPError(f"{name}={value!r} is not a number") from None
    return float(value)


def check_preservation(preservation: float | Sequence[float], name: str = "preservation") -> list[float]:
    """One dial value or a non-empty list of them -> a list of floats in [0, 1]."""
    values = list(preservation) if isinstance(preservation, (list, tuple)) else [preservation]
    if not values:
        raise FlexIPError(f"{name} is empty: give one value in [0, 1] or a list of them")
    checked = []
    for value in values:
        number = as_number(value, name)
        if not 0.0 <= number <= 1.0:  # also rejects NaN
            raise FlexIPError(
                f"{name}={value!r} is outside [0, 1]: 1 keeps the subject's identity, "
                "0 follows the prompt's edits freely"
            )
        checked.append(number)
    return checked


# A generous bound on the adapters' strength (1 is the trained strength, IP-Adapter users go up to about 2):
# far beyond it the branches swamp the text and, at 1e30, overflow to a blank image.
MAX_SCALE = 10.0


def check_scale(scale: float, name: str = "scale") -> float:
    number = as_number(scale, name)
    if not 0 <= number <= MAX_SCALE:  # also NaN
        raise FlexIPError(
            f"{name}={scale!r} must be a number from 0 to {MAX_SCALE:g} (1 is the trained strength, 0 the base model)"
        )
    return number


def check_seed(seed: int, name: str = "seed") -> int:
    """A seed torch's generators take: an integer from 0 to 2**64 - 1."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise FlexIPError(f"{name}={seed!r} must be an integer from 0 to 2**64 - 1")
    return seed


def check_steps(num_inference_steps: int, name: str = "num_inference_steps", most: int | None = None) -> int:
    """Denoising steps: at least 1, and at most `most` (the scheduler's training timesteps) when given."""
    if (
        isinstance(num_inference_steps, bool)
        or not isinstance(num_inference_steps, int)
        or num_inference_steps < 1
    ):
        raise FlexIPError(f"{name}={num_inference_steps!r} must be an integer >= 1 (50 is usual)")
    if most is not None and num_inference_steps > most:
        raise FlexIPError(
            f"{name}={num_inference_steps} is more than the {most} timesteps the base model's scheduler has; "
            "give at most that (50 is usual)"
        )
    return num_inference_steps


def check_guidance(guidance_scale: float, name: str = "guidance_scale") -> float:
    number = as_number(guidance_scale, name)
    if not math.isfinite(number):
        raise FlexIPError(f"{name}={guidance_scale!r} must be finite (7.5 is usual; <= 1 turns guidance off)")
    return number


def check_images_per_prompt(num_images_per_prompt: int) -> int:
    if (
        isinstance(num_images_per_prompt, bool)
        or not isinstance(num_images_per_prompt, int)
        or num_images_per_prompt < 1
    ):
        raise FlexIPError(f"num_images_per_prompt={num_images_per_prompt!r} must be an integer >= 1")
    return num_images_per_prompt
