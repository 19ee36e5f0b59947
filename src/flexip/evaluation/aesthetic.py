"""The LAION "improved aesthetic predictor" head (docs/decisions/evaluation.md): an MLP on the L2-normalised
OpenAI CLIP ViT-L/14 image embedding that predicts a score of roughly 1..10."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import FlexIPError
from .metrics import aesthetic_input

# The one pickled head we agree to read (sac+logos+ava1-l14-linearMSE.pth, Apache-2.0): any other .pth file
# must be converted to safetensors first, so that no unknown pickle is ever opened.
KNOWN_PTH_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"


class AestheticHead(nn.Module):
    """768 -> 1024 -> 128 -> 64 -> 16 -> 1 with dropouts and no activations, as LAION trained it."""

    def __init__(self, embed_dim: int = 768):
        super().__init__()
        # The Sequential indices must stay as they are: the weight files are keyed layers.{0,2,4,6,7}.
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    @property
    def embed_dim(self) -> int:
        return self.layers[0].in_features

    def forward(self, clip_image_embeds: torch.Tensor) -> torch.Tensor:
        """(batch, embed_dim) raw CLIP ViT-L/14 image embeddings -> (batch,) aesthetic scores."""
        return self.layers(aesthetic_input(clip_image_embeds)).squeeze(-1)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> AestheticHead:
        """Load a head strictly (every key and shape) from .safetensors, or from LAION's own .pth file."""
        path = Path(path)
        if not path.is_file():
            raise FlexIPError(
                f"aesthetic head {path} does not exist; give the LAION head file "
                "(sac+logos+ava1-l14-linearMSE.pth) or a safetensors copy of it"
            )
        if path.suffix == ".safetensors":
            try:
                state_dict = load_file(path)
            except (SafetensorError, OSError) as e:
                raise FlexIPError(
                    f"{path}: not a readable safetensors file ({e}); give the aesthetic head again"
                ) from None
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != KNOWN_PTH_SHA256:
                raise FlexIPError(
                    f"{path} is not LAION's sac+logos+ava1-l14-linearMSE.pth (sha256 {digest}); pickled "
                    f"files are "
                    "read only for that known head: save your head's state dict as .safetensors instead"
                )
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        fix = "give LAION's head file or a safetensors copy of its state dict"
        first = state_dict.get("layers.0.weight")
        if first is None or first.ndim != 2:
            raise FlexIPError(f"{path}: not an aesthetic head (no 2-d tensor layers.0.weight); {fix}")
        head = cls(embed_dim=first.shape[1])
        differences = _differences(head.state_dict(), state_dict)
        if differences:
            raise FlexIPError(
                f"{path}: the tensors do not match the aesthetic head's architecture ({differences}); {fix}"
            )
        head.load_state_dict(state_dict, strict=True)
        return head.eval().requires_grad_(False)


def _differences(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """The names and shapes that differ between two state dicts, in a few words ("" where none do)."""

    def names(keys) -> str:
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    missing, unexpected = expected.keys() - found.keys(), found.keys() - expected.keys()
    differences = [f"missing {names(missing)}"] if missing else []
    differences += [f"unexpected {names(unexpected)}"] if unexpected else []
    differences += [
        f"{key} is {tuple(found[key].shape)}, not {tuple(expected[key].shape)}"
        for key in sorted(expected.keys() & found.keys())
        if found[key].shape != expected[key].shape
    ]
    return "; ".join(differences)
