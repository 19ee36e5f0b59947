"""The sampling settings' numbers, checked the same way by every front end (without torch)."""

from __future__ import annotations

import math

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


# A generous bound on the adapters' strength (1 is the trained strength, IP-Adapter users go up to about 2):
# far beyond it the branches swamp the text and, at 1e30, overflow to a blank image.
SCALE_MAX = 10.0

# The precisions weights may be loaded in, by torch's names.
DTYPES = ("float32", "float16", "bfloat16")


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


def check_images_per_prompt(count: int, name: str = "num_images_per_prompt") -> int:
    """A call's outputs per prompt, named as the pipeline names it (`num_videos_per_prompt` for clips)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise FlexIPError(f"{name}={count!r} must be an integer >= 1")
    return count


def check_reference_weights(weights, count: int, masked: bool) -> list[float]:
    """The weights of `count` references: finite, >= 0, not all 0; with masks (`masked`), each is its subject's
    strength and scales its branches as `scale` does, so it has the same bound."""
    if not isinstance(weights, (list, tuple)) or len(weights) != count:
        raise FlexIPError(f"reference_weights={weights!r}: give one weight per reference ({count}), e.g. [0.7, 0.3]")
    checked = [as_number(weight, f"reference_weights[{index}]") for index, weight in enumerate(weights)]
    for index, weight in enumerate(checked):
        if not (math.isfinite(weight) and weight >= 0):
            raise FlexIPError(f"reference_weights[{index}]={weights[index]!r} must be a finite number >= 0")
    if not max(checked) > 0:
        raise FlexIPError(f"reference_weights={weights!r} sum to 0; give weights that sum to a positive number")
    for index, weight in enumerate(checked):
        if masked and weight > SCALE_MAX:
            raise FlexIPError(
                f"reference_weights[{index}]={weight!r}: with masks, each weight is its subject's strength; give at "
                f"most {SCALE_MAX:g} (1 is the trained strength)"
            )
    return checked
