"""Evaluation maths: the metrics on hand-built features, parity with torchmetrics, the aesthetic head,
mRank."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, CLIPModel

from fixtures import need_shared
from flexip.errors import FlexIPError
from flexip.evaluation import metrics
from flexip.evaluation.aesthetic import AestheticHead
from flexip.evaluation.curve import largest_jump_share
from flexip.evaluation.extractors import IMAGENET_MEAN, IMAGENET_STD, ClipFeatures, dino_transform
from flexip.evaluation.rank import mrank, ranks

REPO = Path(__file__).resolve().parents[2]
LAION_HEAD = REPO.parent / "shared" / "data" / "laion-aesthetic" / "sac+logos+ava1-l14-linearMSE.pth"

# docs/method.md §5, Table 1 (DreamBench+ / MSBench): mRank, CLIP-T, CLIP-I, DINO-I, CLIP-IQA, Aesthetic.
TABLE_1 = {
    "BLIP-Diffusion": (8.8, 0.166, 0.681, 0.374, 0.486, 5.234),
    "ELITE": (6.2, 0.269, 0.793, 0.657, 0.522, 5.437),
    "MoMA": (5.8, 0.265, 0.830, 0.656, 0.546, 5.437),
    "SSR-Encoder": (5.2, 0.277, 0.802, 0.581, 0.568, 5.578),
    "IP-Adapter": (4.2, 0.209, 0.855, 0.728, 0.581, 5.594),
    "IP-Adapter-Instruct": (4.8, 0.234, 0.833, 0.701, 0.584, 5.459),
    "λ-ECLIPSE": (4.4, 0.296, 0.747, 0.467, 0.589, 5.597),
    "DisEnVisioner": (4.4, 0.255, 0.851, 0.732, 0.470, 5.658),
    "FlexIP": (1.2, 0.284, 0.873, 0.739, 0.598, 6.039),
}


# --- metric maths on hand-built features -------------------------------------------------------------------


def test_cosine_is_one_for_identical_zero_for_orthogonal_and_scale_free():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    b = torch.tensor([[2.0, 4.0, 6.0], [0.0, 5.0, 0.0], [0.0, -1.0, 0.0]])
    assert metrics.cosine_similarity(a, a).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert metrics.cosine_similarity(a, b).tolist() == pytest.approx([1.0, 0.0, -1.0])  # raw, never clamped


def test_mean_cosine_averages_over_real_images():
    generated = torch.tensor([[1.0, 0.0]])
    real = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # cosines 1, 0, 1/sqrt(2)
    assert metrics.mean_cosine_similarity(generated, real).item() == pytest.approx((1 + 0 + 2**-0.5) / 3)


def test_clip_iqa_is_the_softmax_of_100_cosines():
    anchors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # "Good photo.", "Bad photo."
    cos_good, cos_bad = 0.30, 0.29
    images = torch.tensor(
        [
            [1.0, 1.0, 0.0],  # equally close to both: 0.5
            [1.0, 0.0, 0.0],  # only good: 1 / (1 + e^-100)
            [cos_good, cos_bad, math.sqrt(1 - cos_good**2 - cos_bad**2)],  # 100 * 0.01 apart: sigmoid(1)
            [0.0, 2.0, 0.0],  # only bad
        ]
    )
    expected = [0.5, 1 / (1 + math.exp(-100)), 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(100))]
    assert metrics.clip_iqa(images, anchors).tolist() == pytest.approx(expected, abs=1e-6)


def test_largest_jump_share():
    assert largest_jump_share([0.1, 0.2, 0.3]) == pytest.approx(0.5)  # even steps: 1 / steps
    assert largest_jump_share([0.1, 0.1, 0.5]) == pytest.approx(1.0)  # one step does everything
    assert largest_jump_share([0.4, 0.3, 0.5]) == pytest.approx(0.2 / 0.2)  # back and forth
    assert largest_jump_share([0.2, 0.2, 0.2]) == 0.0


# --- mRank -------------------------------------------------------------------------------------------------


def test_ranks_share_ties():
    assert ranks([0.5, 0.9, 0.5, 0.1]) == [2.5, 1.0, 2.5, 4.0]


def test_mrank_reproduces_table_1():
    table = {method: dict(zip(metrics.METRICS, row[1:])) for method, row in TABLE_1.items()}
    result = mrank(table)
    for method, row in TABLE_1.items():
        if method in (
            "ELITE",
            "MoMA",
        ):  # they tie on Aesthetic (5.437); no tie rule gives both printed values
            assert result[method] == pytest.approx(row[0], abs=0.1 + 1e-9)
        else:
            assert round(result[method], 1) == row[0], method


def test_mrank_needs_every_metric():
    with pytest.raises(FlexIPError, match="missing"):
        mrank({"a": {"CLIP-T": 0.2}, "b": {"CLIP-T": 0.3}})


# --- the official DINO transform ---------------------------------------------------------------------------


def test_dino_transform_resizes_short_side_crops_centre_and_normalises():
    # A 300x600 image whose top and bottom quarters are black: after resizing to 256x512 and cropping the
    # central 224x224, only the grey middle remains.
    pixels = np.zeros((600, 300, 3), dtype=np.uint8)
    pixels[150:450] = 128
    out = dino_transform(Image.fromarray(pixels))
    assert out.shape == (3, 224, 224)
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)
    assert torch.allclose(out[:, 0, 0], expected, atol=1e-5)


# --- parity with torchmetrics on the same tiny CLIP
# ----------------------------------------------------------


class _TensorFeatures(torch.nn.Module):
    """torchmetrics 1.9 expects tensors from get_*_features; transformers 5 returns model outputs."""

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs):
        return self.model.get_image_features(*args, **kwargs).pooler_output

    def get_text_features(self, *args, **kwargs):
        return self.model.get_text_features(*args, **kwargs).pooler_output


@pytest.fixture(scope="module")
def aligned_clip(tiny_models) -> ClipFeatures:
    """The tiny kit's metric CLIP, bent so that every image and text embedding points nearly the same
    way: cosines are positive (torchmetrics clamps CLIPScore at 0) and CLIP-IQA is far from saturating at 0
    or 1."""
    model = CLIPModel.from_pretrained(tiny_models.clip_model)
    with torch.no_grad():
        vision_bias = torch.randn(
            model.config.vision_config.hidden_size, generator=torch.Generator().manual_seed(0)
        )
        model.vision_model.post_layernorm.weight.mul_(0.2)
        model.vision_model.post_layernorm.bias.copy_(vision_bias)
        # The text bias that projects onto the same direction as the vision bias.
        text_bias = torch.linalg.solve(
            model.text_projection.weight, model.visual_projection.weight @ vision_bias
        )
        model.text_model.final_layer_norm.weight.mul_(0.2)
        model.text_model.final_layer_norm.bias.copy_(text_bias)
    return ClipFeatures(model, AutoProcessor.from_pretrained(tiny_models.clip_model), "aligned tiny CLIP")


def _fixtures(count: int) -> tuple[list[Image.Image], list[torch.Tensor]]:
    """Random 32 px images (the tiny CLIP's own size, so that PIL and tensor inputs preprocess alike)."""
    rng = np.random.RandomState(0)
    arrays = [rng.randint(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(count)]
    return [Image.fromarray(a) for a in arrays], [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]


def test_clip_t_and_clip_i_equal_torchmetrics_clip_score(aligned_clip):
    from torchmetrics.functional.multimodal import clip_score

    def model_and_processor():
        return _TensorFeatures(aligned_clip.model), aligned_clip.processor

    images, tensors = _fixtures(3)
    prompts = ["a stuffed animal in the jungle", "a red cube", "a dog on the beach"]
    image_embeds = aligned_clip.image_embeds(images)
    clip_t = metrics.cosine_similarity(image_embeds, aligned_clip.text_embeds(prompts))
    clip_i = metrics.cosine_similarity(image_embeds, image_embeds.roll(1, dims=0))
    assert (clip_t > 0).all() and (clip_i > 0).all()
    for i in range(3):
        expected_t = clip_score(tensors[i], prompts[i], model_name_or_path=model_and_processor) / 100
        expected_i = clip_score(tensors[i], tensors[i - 1], model_name_or_path=model_and_processor) / 100
        assert clip_t[i].item() == pytest.approx(expected_t.item(), abs=1e-5)
        assert clip_i[i].item() == pytest.approx(expected_i.item(), abs=1e-5)


def test_clip_iqa_equals_torchmetrics(aligned_clip):
    from torchmetrics.multimodal import CLIPImageQualityAssessment

    images, tensors = _fixtures(4)
    reference = CLIPImageQualityAssessment(
        model_name_or_path=lambda: (_TensorFeatures(aligned_clip.model), aligned_clip.processor)
    )
    # data_range 1 with 0..255 values: torchmetrics divides by it, then the CLIP processor rescales by 1/255.
    expected = reference(torch.stack(tensors).float())
    ours = metrics.clip_iqa(
        aligned_clip.image_embeds(images), aligned_clip.text_embeds(list(metrics.CLIP_IQA_PROMPTS))
    )
    assert ((ours > 0.05) & (ours < 0.95)).all()  # not saturated, so the comparison means something
    assert torch.allclose(ours, expected, atol=1e-5)


# --- the LAION aesthetic head ------------------------------------------------------------------------------


def test_aesthetic_head_loads_the_laion_weights_strictly(tmp_path):
    from safetensors.torch import save_file

    need_shared(LAION_HEAD)
    head = AestheticHead.from_file(LAION_HEAD)  # load_state_dict(strict=True): every key and shape
    assert head.embed_dim == 768
    embeds = torch.randn(2, 768, generator=torch.Generator().manual_seed(0))
    scores = head(embeds)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert torch.allclose(head(embeds * 7), scores)  # it reads the L2-normalised embedding

    # A safetensors copy gives the same head; an unknown pickle is refused before it is opened.
    save_file(head.state_dict(), tmp_path / "head.safetensors")
    assert torch.equal(AestheticHead.from_file(tmp_path / "head.safetensors")(embeds), scores)
    shutil.copy(LAION_HEAD, tmp_path / "other.pth")
    with open(tmp_path / "other.pth", "ab") as f:
        f.write(b"\0")
    with pytest.raises(FlexIPError, match="safetensors"):
        AestheticHead.from_file(tmp_path / "other.pth")


def test_aesthetic_head_refuses_other_architectures(tmp_path):
    from safetensors.torch import save_file

    state = AestheticHead(embed_dim=8).state_dict()
    state["layers.2.weight"] = torch.zeros(128, 1000)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(FlexIPError, match="do not match"):
        AestheticHead.from_file(tmp_path / "bad.safetensors")


# --- CLIP-T against each image's own prompt ----------------------------------------------------------------


def test_clip_t_scores_each_image_against_its_own_prompt(tmp_path, tiny_models):
    """A batch of images with different prompts: each image's CLIP-T is its cosine with its own prompt, and
    with any other prompt of the batch it would differ (so one prompt for all, or prompts shifted by one, fail)."""
    from flexip.evaluation.results import PlannedImage
    from flexip.evaluation.score import Scorer
    from flexip.evaluation.score_config import ScoreConfig

    clip, dino, head = map(str, (tiny_models.clip_model, tiny_models.dino_model, tiny_models.aesthetic_head))
    config = ScoreConfig(
        aesthetic_head=head, clip_model=clip, dino_model=dino, iqa_model=clip, aesthetic_model=clip
    )
    scorer = Scorer(config)
    images, _ = _fixtures(4)
    images[0].save(tmp_path / "reference.png")
    prompts = ["a stuffed animal in the jungle", "a red cube", "a dog on the beach", "a cat, oil painting"]
    reference = str(tmp_path / "reference.png")
    planned = [
        PlannedImage(f"images/{i}.png", "dog", "live", i, prompt, reference, (reference,), "0", None)
        for i, prompt in enumerate(prompts)
    ]
    scored = [row["CLIP-T"] for row in scorer.score(images, planned)]
    # Each pair scored on its own: the cosine of one image with one prompt.
    alone = [
        [metrics.cosine_similarity(scorer.clip.image_embeds([image]), scorer.clip.text_embeds([p])).item()
         for p in prompts]
        for image in images
    ]  # fmt: skip
    for i, row in enumerate(alone):
        assert scored[i] == pytest.approx(row[i], abs=1e-5)
        assert all(abs(row[i] - other) > 1e-4 for j, other in enumerate(row) if j != i), row
