"""Several references: one subject's images with weights, or one subject per image inside its mask.

Without masks, a `reference` list is one subject's images: each image's branch outputs are mixed with its
weight, the weights scaled to sum to 1 (equal by default). With `reference_masks`, each image is a subject of
its own, acting only inside its mask, at its weight (1 by default: subjects in disjoint masks do not compete).
docs/decisions/control.md ("Several references") says why the branches are summed rather than the tokens
concatenated or the features pooled. Masks are read with diffusers' `IPAdapterMaskProcessor` (grayscale,
binarised at 0.5) and resized to every layer's grid inside the attention (`models.masks.Subject`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers.image_processor import IPAdapterMaskProcessor
from PIL import Image

from ..errors import FlexIPError
from ..models.masks import PLAIN, Subject
from ..settings.numbers import check_reference_weights
from .images import mask_to_gray

# Size kept as given (a multiple of 1 pixel): each layer resizes the mask to its own grid.
_MASKS = IPAdapterMaskProcessor(vae_scale_factor=1)
# How far a mask's height/width may be from the image's, relative: masks made by resizing to another size
# round their sides to whole pixels.
ASPECT_TOLERANCE = 0.02
# A mask above this many pixels is kept downscaled: the finest layer's grid is the latents', 8 times smaller
# than the image, so a 4096 x 4096 mask is more than any image needs and 64 MB as the float it is kept in.
MAX_MASK_PIXELS = 4096 * 4096


def check_subjects(count: int, weights, masks, image_size: tuple[int, int] | None) -> tuple[Subject, ...]:
    """The subjects of `count` references: their weights and masks, checked. `image_size` (height, width) of
    the images to make, when the pipeline says it up front, is what the masks' aspect ratio must match."""
    if weights is not None:
        weights = check_reference_weights(weights, count, masked=masks is not None)
    if masks is None:
        if weights is None:
            return PLAIN if count == 1 else tuple(Subject(1 / count) for _ in range(count))
        largest = max(weights)  # scaled by the largest first: a sum of huge weights does not overflow
        total = math.fsum(weight / largest for weight in weights)
        shares = [weight / largest / total for weight in weights]
        return PLAIN if shares == [1.0] else tuple(Subject(share) for share in shares)
    masks = _check_masks(masks, count, image_size)
    weights = weights or [1.0] * count
    return tuple(Subject(weight, mask) for weight, mask in zip(weights, masks))


def _check_masks(masks, count: int, image_size: tuple[int, int] | None) -> list[torch.Tensor]:
    if not isinstance(masks, (list, tuple)) or len(masks) != count:
        raise FlexIPError(f"reference_masks: give one mask per reference ({count}), as PIL images or 2-D arrays")
    checked = []
    for index, mask in enumerate(masks):
        name = f"reference_masks[{index}]"
        if isinstance(mask, torch.Tensor):
            mask = mask.detach().cpu().numpy()
        if isinstance(mask, Image.Image):
            mask = mask_to_gray(mask, name)  # upright, 8-bit gray (or a float array, read below)
        if isinstance(mask, np.ndarray):
            if mask.ndim == 3 and mask.shape[-1] == 1:
                mask = mask[..., 0]
            if mask.ndim != 2 or mask.dtype.kind not in "buif" or 0 in mask.shape:
                raise FlexIPError(f"{name}: an array of shape {mask.shape} and type {mask.dtype}; give a 2-D "
                                  "(height, width) array of 0/1 or 0..255 values")  # fmt: skip
            if mask.dtype.kind == "f" and not np.isfinite(mask).all():
                raise FlexIPError(f"{name} holds NaN or infinite values; give 0/1 or 0..255 values")
            mask = mask.astype(np.float32) / (255.0 if mask.dtype == np.uint8 else 1.0)
            height, width = mask.shape
        elif isinstance(mask, Image.Image):
            width, height = mask.size
        else:
            raise FlexIPError(f"{name} is a {type(mask).__name__}; give a PIL image or a 2-D array")
        if height * width > MAX_MASK_PIXELS:  # each layer needs only its grid: keep a bounded copy
            shrink = math.sqrt(MAX_MASK_PIXELS / (height * width))
            height, width = max(1, int(height * shrink)), max(1, int(width * shrink))
        tensor = _MASKS.preprocess(mask, height=height, width=width)[0, 0].float()
        if not tensor.any():
            raise FlexIPError(f"{name} is empty (no pixel at or above half): that subject would act nowhere")
        checked.append(tensor)
    sizes = {tuple(mask.shape) for mask in checked}
    if len(sizes) > 1:
        raise FlexIPError(
            f"reference_masks have different sizes ({', '.join(f'{h}x{w}' for h, w in sorted(sizes))}, height x "
            "width); give every mask at the size of the image"
        )
    if image_size is not None:
        check_aspect(sizes.pop(), image_size, "the image")
    return checked


def check_aspect(mask_size: tuple[int, int], image_size: tuple[int, int], what: str) -> None:
    """Refuse masks whose aspect ratio is not that of the image (or its latents: `what` names which)."""
    (height, width), (image_height, image_width) = mask_size, image_size
    if abs(height / width - image_height / image_width) > ASPECT_TOLERANCE * image_height / image_width:
        raise FlexIPError(
            f"reference_masks are {height}x{width} (height x width) but {what} is {image_height}x{image_width}: "
            "give masks of the image's aspect ratio"
        )
