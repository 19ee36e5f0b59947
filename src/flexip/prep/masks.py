"""Subject masks from a promptable segmentation model (SAM, `facebook/sam-vit-base` by default).

The paper's invariant images come with SAM's masks (SA-1B). A photo of a subject has it near the middle, so
SAM is prompted with one point at the image centre and the mask SAM itself scores best (its predicted IoU, of
the three it proposes: part, object, whole) is kept. Any model that transformers loads with
`AutoModelForMaskGeneration` and a SAM image processor works.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import FlexIPError
from ..model_paths import check_hub_model


class SubjectSegmenter:
    """`segmenter(image)` -> an L mask of the subject (255 = subject), the image's size."""

    def __init__(self, model, processor, name: str):
        self.model, self.processor, self.name = model.eval(), processor, name

    @classmethod
    def from_pretrained(cls, name: str, device: str) -> SubjectSegmenter:
        from transformers import AutoImageProcessor, AutoModelForMaskGeneration

        check_hub_model(name, "--mask-model")
        try:
            model = AutoModelForMaskGeneration.from_pretrained(name)
            processor = AutoImageProcessor.from_pretrained(name)
        except (OSError, ValueError, KeyError) as e:
            raise FlexIPError(
                f"--mask-model {name}: cannot load it as a SAM-style mask model ({str(e).splitlines()[0]}); "
                "give a hub id or folder of one, e.g. facebook/sam-vit-base"
            ) from e
        return cls(model.to(device), processor, name)

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> Image.Image:
        inputs = self.processor(images=image, return_tensors="pt")
        height, width = inputs["reshaped_input_sizes"][0].tolist()
        centre = torch.tensor([[[[width / 2, height / 2]]]])  # (image, prompt, point, xy) in resized pixels
        device = self.model.device
        output = self.model(
            pixel_values=inputs["pixel_values"].to(device, self.model.dtype), input_points=centre.to(device)
        )
        masks = self.processor.post_process_masks(
            output.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0][0]  # (3 proposals, H, W) booleans
        best = int(output.iou_scores[0, 0].argmax())
        return Image.fromarray(masks[best].numpy().astype(np.uint8) * 255)  # 2-D uint8: an L image
