"""The five image metrics of docs/method.md §5 as pure tensor maths on features (their definitions:
docs/decisions/evaluation.md).

Feature extractors (extractors.py, aesthetic.py) turn images and prompts into the tensors taken here, so the
maths can be tested on hand-built features and the backbones swapped without touching it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The metric names, in the column order of the paper's Table 1; every metric is "higher is better".
METRICS = ("CLIP-T", "CLIP-I", "DINO-I", "CLIP-IQA", "Aesthetic")

# CLIP-IQA's antonym pair for overall quality (Wang et al. 2023, "Exploring CLIP for assessing the look and
# feel
# of images"), as torchmetrics' CLIPImageQualityAssessment spells it.
CLIP_IQA_PROMPTS = ("Good photo.", "Bad photo.")

# CLIP's logit scale at the end of training; CLIP-IQA uses it as a fixed temperature.
CLIP_LOGIT_SCALE = 100.0


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of (batch, dim) features: DINO-I, CLIP-I and CLIP-T are all this.

    DINO-I: DINO [CLS] of generated vs reference image; CLIP-I: CLIP image embeddings of generated vs
    reference; CLIP-T: CLIP image embedding of the generated image vs the prompt's text embedding. Raw cosines
    in [-1, 1], never clamped per sample (torchmetrics' CLIPScore is 100 * max(mean cosine, 0)).
    """
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(dim=-1)


def mean_cosine_similarity(generated: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Cosine of each generated image's features (batch, dim) with each of K real images (batch, K, dim),
    averaged over K: the DreamBooth convention of comparing with all of a subject's real images."""
    return cosine_similarity(generated.unsqueeze(1), references).mean(dim=1)


def clip_iqa(image_embeds: torch.Tensor, anchor_embeds: torch.Tensor) -> torch.Tensor:
    """CLIP-IQA: softmax over the antonym pair of 100 * cosine(image, prompt); the positive prompt's share.

    image_embeds: (batch, dim) CLIP image embeddings; anchor_embeds: (2, dim) text embeddings of
    ("Good photo.", "Bad photo."). Returns (batch,) values in (0, 1).
    """
    image_embeds = F.normalize(image_embeds.float(), dim=-1)
    anchor_embeds = F.normalize(anchor_embeds.float(), dim=-1)
    logits = CLIP_LOGIT_SCALE * image_embeds @ anchor_embeds.T  # (batch, 2)
    return logits.softmax(dim=-1)[:, 0]


def aesthetic_input(clip_l14_image_embeds: torch.Tensor) -> torch.Tensor:
    """The LAION aesthetic head reads the L2-normalised CLIP ViT-L/14 image embedding."""
    return F.normalize(clip_l14_image_embeds.float(), dim=-1)
