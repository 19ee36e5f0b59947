"""The demo world's judge: reads a 32 px image back into scene and identity attributes, and scores
prompt match (does the scene follow the caption) and identity match (does the subject carry the reference's
identity), each in 0..1.

Background and position are measured analytically from pixels (background = the border's median colour, the
subject = pixels far from it, its position = the centre of their bounding box); class, size, style and the
identity attributes come from a small CNN trained on blurred, noisy renders (`recipes.demo.train_judge`).
Size is not measured analytically: a bounding box misreads rotated squares, outlines and patterns whose colour
is close to the background (89% held-out accuracy); the CNN reads it from the whole shape. Accuracy:
docs/demo-model.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from recipes.demo.world import (
    BACKGROUNDS,
    CLASSES,
    IDENTITY_ATTRIBUTES,
    POSITIONS,
    SCENE_ATTRIBUTES,
    SIZES,
    STYLES,
    Identity,
    parse_caption,
)

JUDGE_SIZE = 32
# The judge is the recipe's own measuring tool, not part of the shipped model: it stays with the recipe.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "judge" / "judge.safetensors"
# What the CNN classifies; background and position are measured instead.
HEADS = {"subject": CLASSES, "size": tuple(SIZES), "style": STYLES, **IDENTITY_ATTRIBUTES}
# A pixel belongs to the subject when it is this far (RGB, 0..1) from the background; backgrounds are
# jittered by at most 8/255 per channel, subjects differ by far more (see world.py's palettes).
FOREGROUND_THRESHOLD = 0.16


@dataclass
class JudgeConfig:
    width: int = 16  # channels of the first stage; doubled at each of the two later stages


class JudgeNet(nn.Module):
    """A small CNN, 32 px in, one linear head per attribute in HEADS."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        w = config.width

        def stage(c_in, c_out):
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
            )

        self.stages = nn.ModuleList([stage(3, w), stage(w, 2 * w), stage(2 * w, 4 * w)])
        self.heads = nn.ModuleDict({name: nn.Linear(4 * w, len(values)) for name, values in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images * 2 - 1  # (N, 3, 32, 32) in [0, 1] -> [-1, 1]
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index < len(self.stages) - 1:
                x = F.max_pool2d(x, 2)  # 32 -> 16 -> 8
        # Max over positions: the subject may be anywhere and small, and averaging would dilute it.
        features = x.amax(dim=(2, 3))  # (N, 4w)
        return {name: head(features) for name, head in self.heads.items()}


def to_tensor(images) -> torch.Tensor:
    """PIL images (any size) or an (N, 3, H, W) tensor in [0, 1] -> (N, 3, 32, 32) float tensor."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"judge expects images of shape (N, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-1] != JUDGE_SIZE or images.shape[-2] != JUDGE_SIZE:
            images = F.interpolate(images.float(), size=(JUDGE_SIZE, JUDGE_SIZE), mode="area")
        return images.float().clamp(0, 1)
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (JUDGE_SIZE, JUDGE_SIZE):
            image = image.resize((JUDGE_SIZE, JUDGE_SIZE), Image.Resampling.BOX)
        arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# ---- analytic measurements ------------------------------------------------------------------------------------
_BACKGROUND_NAMES = list(BACKGROUNDS)
_BACKGROUND_RGB = torch.tensor([BACKGROUNDS[n] for n in _BACKGROUND_NAMES], dtype=torch.float32) / 255.0
_POSITION_NAMES = list(POSITIONS)
_POSITION_X = torch.tensor([POSITIONS[n] for n in _POSITION_NAMES])


def measure(images: torch.Tensor) -> dict[str, list]:
    """Background name, subject mask and position name (None when no subject is drawn) per image."""
    n, _, _, w = images.shape
    border = torch.cat([images[:, :, 0, :], images[:, :, -1, :], images[:, :, :, 0], images[:, :, :, -1]], dim=2)
    background_rgb = border.median(dim=2).values  # (N, 3)
    background = torch.cdist(background_rgb, _BACKGROUND_RGB).argmin(dim=1)
    # A 3x3 mean first: it cuts pixel noise threefold, so noise alone does not cross the threshold.
    smooth = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    distance = (smooth - background_rgb[:, :, None, None]).norm(dim=1)  # (N, H, W)
    mask = distance > FOREGROUND_THRESHOLD
    result = {"background": [], "position": [], "mask": mask}
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    for i in range(n):
        result["background"].append(_BACKGROUND_NAMES[background[i]])
        rows, cols = torch.nonzero(mask[i], as_tuple=True)
        if len(rows) < 3:  # no subject drawn
            result["position"].append(None)
            continue
        # Robust bounding box: the 2% and 98% quantiles ignore a few stray noisy pixels.
        x_lo, x_hi = torch.quantile(xs[cols], torch.tensor([0.02, 0.98]))
        centre = (x_lo + x_hi) / 2
        result["position"].append(_POSITION_NAMES[(_POSITION_X - centre).abs().argmin()])
    return result


# ---- the judge ------------------------------------------------------------------------------------------------
class Judge:
    """Reads images and scores them; build with `Judge.load()` (the committed weights) or from a trained net."""

    def __init__(self, net: JudgeNet):
        self.net = net.eval()

    @classmethod
    def load(cls, path: str | Path = DEFAULT_WEIGHTS) -> Judge:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"judge weights {path} not found; train them with `python -m recipes.demo.train_judge`")
        with open(path, "rb") as f:  # the config travels in the safetensors header's metadata
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        config = JudgeConfig(**json.loads(header["__metadata__"]["config"]))
        net = JudgeNet(config)
        net.load_state_dict({k: v.float() for k, v in load_file(path).items()})
        return cls(net)

    def save(self, path: str | Path) -> None:
        state = {k: v.detach().half().contiguous() for k, v in self.net.state_dict().items() if v.is_floating_point()}
        state.update({k: v for k, v in self.net.state_dict().items() if not v.is_floating_point()})
        save_file(state, str(path), metadata={"config": json.dumps(asdict(self.net.config))})

    @torch.no_grad()
    def read(self, images) -> list[dict]:
        """Every attribute the judge can read, per image: the scene (position None when no subject) and identity."""
        tensor = to_tensor(images)
        logits = self.net(tensor)
        predicted = {name: logits[name].argmax(dim=1).tolist() for name in HEADS}
        measured = measure(tensor)
        readings = []
        for i in range(tensor.shape[0]):
            reading = {name: HEADS[name][predicted[name][i]] for name in HEADS}
            reading["background"] = measured["background"][i]
            reading["position"] = measured["position"][i]
            readings.append(reading)
        return readings

    def prompt_match(self, images, captions: list[str]) -> dict[str, torch.Tensor]:
        """Per attribute of the caption's scene, 1.0 where the image shows what the caption says; plus "mean"."""
        scenes = [parse_caption(text) for text in captions]
        readings = self.read(images)
        if len(scenes) != len(readings):
            raise ValueError(f"prompt_match got {len(readings)} images but {len(scenes)} captions")
        scores = {}
        for name in SCENE_ATTRIBUTES:
            scores[name] = torch.tensor([float(r[name] == getattr(s, name)) for r, s in zip(readings, scenes)])
        scores["mean"] = torch.stack(list(scores.values())).mean(dim=0)
        return scores

    def identity_match(self, images, references, captions: list[str]) -> torch.Tensor:
        """Fraction of the identity attributes visible in the captioned style on which image and reference agree.

        NaN where the style hides the whole identity (outline). The reference should be drawn in plain style.
        """
        generated, reference = self.read(images), self.read(references)
        scores = []
        for got, want, text in zip(generated, reference, captions):
            identity = Identity(want["color"], want["pattern"], want["pattern_color"])
            visible = identity.visible_attributes(parse_caption(text).style)
            # A pattern colour only agrees when there is the same pattern to carry it.
            agree = [got[a] == want[a] and (a != "pattern_color" or got["pattern"] == want["pattern"])
                     for a in visible]
            scores.append(float(np.mean(agree)) if visible else math.nan)
        return torch.tensor(scores)
