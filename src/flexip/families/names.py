"""The base families by name, and the kind of denoiser each runs, without torch: an adapter's file names its
family, which the command line reads before any model loads."""

from __future__ import annotations

from ..errors import FlexIPError

# A family's name (recorded in an adapter's config as `base_family`) -> its denoiser's name (flexip.denoisers).
DENOISER_OF_FAMILY = {"sd15": "unet", "sdxl": "unet"}


def check_family_name(name, source: str = "base_family") -> str:
    if name not in DENOISER_OF_FAMILY:
        raise FlexIPError(f"{source}: unknown base family {name!r}; known families are {', '.join(DENOISER_OF_FAMILY)}")
    return name
