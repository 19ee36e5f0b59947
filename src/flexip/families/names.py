"""The base families by name, and the kind of denoiser each runs, without torch: an adapter's file names its
family, which the command line reads before any model loads."""

from __future__ import annotations

from ..errors import FlexIPError

# A family's name (recorded in an adapter's config as `base_family`) -> its denoiser's name (flexip.denoisers).
DENOISER_OF_FAMILY = {"sd15": "unet", "sdxl": "unet", "flux": "flux"}
# What a family's pipeline runs at unless told otherwise: the guidance scale (flexip's 7.5 on the Stable Diffusion
# families; FluxPipeline's 3.5 on FLUX.1, whose guidance is an embedding the model was distilled with) and the
# dtype on a GPU (FLUX.1's transformer is trained in bfloat16, whose range float16 lacks).
DEFAULT_GUIDANCE = {"sd15": 7.5, "sdxl": 7.5, "flux": 3.5}
GPU_DTYPE = {"sd15": "float16", "sdxl": "float16", "flux": "bfloat16"}


def check_family_name(name, source: str = "base_family") -> str:
    if name not in DENOISER_OF_FAMILY:
        raise FlexIPError(f"{source}: unknown base family {name!r}; known families are {', '.join(DENOISER_OF_FAMILY)}")
    return name
