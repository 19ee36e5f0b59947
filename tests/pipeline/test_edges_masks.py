"""References and masks at the edges: the work they cost is bounded after padding and resizing, every mistake
in them or in their weights is one line, masks read as drawn (EXIF orientation, every image mode), and masked
branches stay inside their masks on latent grids that are not powers of two, for SD1.5 and SDXL."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fixtures import cross_attention_calls, left_half, tiny_flexip_pipe
from flexip import FlexIPError
from flexip.cli import main
from flexip.cli.subjects import read_subjects
from flexip.pipeline.images import load_reference_image
from flexip.pipeline.subjects import check_subjects

EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def picture():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))


# Bounded work: what is computed from a reference or a mask, after padding and resizing, has a bound.


def wide(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (30, 120, 200))
    image.paste((250, 250, 0), (0, 0, width // 3, height))
    return image


@pytest.mark.parametrize("source", ["wide file", "tall file", "wide PIL image"])
def test_the_images_computed_from_a_reference_are_bounded(tmp_path, source):
    # An extreme aspect ratio is padded to 4:1; padded at full size, a 12000 px long side would make a 36-megapixel
    # image (a 25000x1000 reference: 156 megapixels), so the computed images are bounded whatever the picture's size.
    image = {"wide file": wide(12000, 300), "tall file": wide(300, 12000).transpose(Image.Transpose.ROTATE_90),
             "wide PIL image": wide(12000, 300)}[source]  # fmt: skip
    reference = image
    if source.endswith("file"):
        reference = tmp_path / "reference.png"
        image.save(reference)
    loaded = load_reference_image(reference)
    width, height = loaded.size
    assert max(width, height) <= 4096 and max(width, height) <= 4 * min(width, height), loaded.size
    # The picture is kept whole (scaled, centred on white), not cropped.
    array = np.asarray(loaded)
    assert (array == (250, 250, 0)).all(axis=-1).any() and (array == (30, 120, 200)).all(axis=-1).any()


@pytest.mark.parametrize("mask", [np.ones((5000, 5000), dtype=bool), Image.new("L", (6000, 4000), 255)],
                         ids=["array", "PIL image"])  # fmt: skip
def test_the_mask_kept_for_the_layers_is_bounded(mask):
    (subject,) = check_subjects(1, None, [mask], None)
    height, width = subject.mask.shape
    given_height, given_width = mask.shape if isinstance(mask, np.ndarray) else mask.size[::-1]
    assert height * width <= 4096 * 4096 and subject.mask.all()
    assert width / height == pytest.approx(given_width / given_height, rel=0.01)


@pytest.mark.parametrize("weights, shares", [([1e308, 1e308], [0.5, 0.5]), ([1e308, 1e307], [10 / 11, 1 / 11]),
                                             ([5e-324, 5e-324], [0.5, 0.5]), ([3.0, 1.0], [0.75, 0.25])])  # fmt: skip
def test_weights_mix_by_their_ratio_however_large_or_small(weights, shares):
    # The shares' sum of two 1e308 weights overflowed (a traceback); subnormal ones lost their ratio.
    assert [subject.weight for subject in check_subjects(2, weights, None, None)] == pytest.approx(shares)


# One line for every mistake.

MISTAKES = {  # case -> (the call's FlexIP arguments, a word of the line)
    "weights overflow a masked sum": ({"reference_weights": [1e308, 1e308], "masks": True}, "reference_weights"),
    "masked weight beyond the scale's range": ({"reference_weights": [1e30, 1.0], "masks": True}, "reference_weights[0]"),
    "NaN weight": ({"reference_weights": [float("nan"), 1.0]}, "reference_weights[0]"),
    "all-zero weights": ({"reference_weights": [0, 0]}, "reference_weights"),
    "negative weight": ({"reference_weights": [-1.0, 2.0]}, "reference_weights[0]"),
    "boolean weight": ({"reference_weights": [True, 1.0]}, "reference_weights[0]"),
    "NaN mask": ({"reference_masks": [np.full((32, 32), np.nan), left_half()]}, "reference_masks[0]"),
    "mask of no pixels": ({"reference_masks": [np.zeros((0, 32)), left_half()]}, "reference_masks[0]"),
    "mask of another aspect ratio": ({"reference_masks": [left_half(32, 64)] * 2}, "aspect ratio"),
    "masks of two sizes": ({"reference_masks": [left_half(), left_half(64, 64)]}, "different sizes"),
    "boolean preservation": ({"preservation": True}, "preservation"),
    "boolean scale": ({"scale": True}, "scale"),
    "boolean in a block dict": ({"preservation": {"down": False}}, "preservation['down']"),
    "schedule returning a boolean": ({"preservation": lambda progress: progress > 2}, "preservation"),
    "schedule raising": ({"preservation": lambda progress: int("half")}, "preservation schedule"),
}  # fmt: skip


@pytest.mark.parametrize("case", MISTAKES)
def test_reference_weight_mask_and_dial_mistakes_are_one_line_errors(pipe, picture, case):
    arguments, named = MISTAKES[case]
    arguments = dict(arguments)
    if arguments.pop("masks", False):
        arguments["reference_masks"] = [left_half(), 1 - left_half()]
    with pytest.raises(FlexIPError) as error:
        pipe("a dog", reference=[picture, picture], num_inference_steps=1, output_type="np", **arguments)
    assert named in str(error.value) and "\n" not in str(error.value)


def bomb(path, side: int) -> str:
    Image.new("L", (side, side), 255).save(path)
    return str(path)


COMMAND_LINE_MISTAKES = {  # case -> (options, the file or value the line names)
    "mask over PIL's limit": (["--mask", "bomb-36.png", "--mask", "good.png"], "bomb-36.png"),  # 1296 px: a warning
    "mask over twice PIL's limit": (["--mask", "bomb-48.png", "--mask", "good.png"], "bomb-48.png"),  # 2304 px
    "NaN weight": (["--reference-weights", "nan,1"], "nan"),
    "weights overflow with masks": (["--reference-weights", "1e308,1e308", "--mask", "good.png", "--mask",
                                     "good.png"], "1e+308"),
    "mask not an image": (["--mask", "good.png", "--mask", "notes.txt"], "notes.txt"),
}  # fmt: skip


@pytest.mark.parametrize("case", COMMAND_LINE_MISTAKES)
def test_mask_and_weight_mistakes_on_the_command_line_are_one_line(tmp_path, tiny_models, picture, monkeypatch,
                                                                   capsys, case):  # fmt: skip
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1100)  # the 32x32 reference is under it
    picture.save(tmp_path / "dog.png")
    for side in (32, 36, 48):
        Image.new("L", (side, side), 255).save(tmp_path / ("good.png" if side == 32 else f"bomb-{side}.png"))
    (tmp_path / "notes.txt").write_text("not a picture")
    options, named = COMMAND_LINE_MISTAKES[case]
    options = [str(tmp_path / option) if option.endswith((".png", ".txt")) else option for option in options]
    argv = ["generate", "--reference", str(tmp_path / "dog.png"), "--reference", str(tmp_path / "dog.png"),
            "--prompt", "a dog", "--out", str(tmp_path / "a.png"), "--base", str(tiny_models.base),
            "--adapter", str(tiny_models.adapter), "--steps", "1", *options]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and named in err, err
    assert not (tmp_path / "a.png").exists()


# Masks read as drawn.


def with_orientation(image: Image.Image, path, orientation: int) -> Image.Image:
    """`image` saved to `path` stored so that a viewer honouring EXIF `orientation` shows it as `image`."""
    stored = image.transpose({6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
                              3: Image.Transpose.ROTATE_180}[orientation])  # fmt: skip
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    stored.save(path, exif=exif)
    return Image.open(path)


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("front", ["python", "cli"])
def test_masks_honour_exif_orientation_as_references_do(tmp_path, picture, orientation, front):
    shown = np.zeros((32, 48), dtype=np.uint8)
    shown[4:12, 6:30] = 255  # asymmetric: every rotation moves it
    opened = with_orientation(Image.fromarray(shown), tmp_path / "mask.jpg", orientation)
    if front == "cli":
        picture.save(tmp_path / "dog.png")
        args = argparse.Namespace(reference=[str(tmp_path / "dog.png")], reference_weights=None,
                                  mask=[str(tmp_path / "mask.jpg")])  # fmt: skip
        opened = read_subjects(args).masks[0]
    (subject,) = check_subjects(1, None, [opened], None)
    assert subject.mask.shape == shown.shape
    assert torch.equal(subject.mask, torch.from_numpy(shown > 127).float())


def drawn(mode: str) -> Image.Image:
    """The left half of a 32x32 mask in `mode`, drawn as a user's tool would save it."""
    left = left_half() > 0
    if mode == "I;16":  # 16-bit: inside 0.6 of white, outside 0.3 (a plain 8-bit cut clipped both to white)
        return Image.fromarray(np.where(left, 40000, 20000).astype(np.uint16))
    if mode == "I":
        return Image.fromarray(np.where(left, 50000, 10000).astype(np.int32), mode="I")
    if mode == "F":  # 0..1, as a float array is read
        return Image.fromarray(left.astype(np.float32), mode="F")
    if mode in ("RGBA", "LA", "PA"):  # white everywhere, transparent outside
        alpha = Image.fromarray((left * 255).astype(np.uint8))
        image = Image.new("RGBA", (32, 32), (255, 255, 255, 255))
        image.putalpha(alpha)
        return image.convert(mode)
    return Image.fromarray((left * 255).astype(np.uint8)).convert(mode)


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGB", "I;16", "I", "F", "RGBA", "LA", "PA"])
def test_masks_of_every_mode_read_as_drawn(mode):
    (subject,) = check_subjects(1, None, [drawn(mode)], None)
    assert torch.equal(subject.mask, torch.from_numpy(left_half()))


# Odd grids: the latents are not a power of two, so some levels' grids round up.
# Latent grids (rows, columns) whose levels are not powers of two: the tiny UNets' two levels are 5x5 and 3x3,
# 5x7 and 3x4, 9x5 and 5x3, as a 520 px image gives SD1.5's 65x65, 33x33, 17x17 and 9x9. The tiny VAE halves an
# image, and diffusers takes sizes in multiples of 8, so its own latents are multiples of 4: the call is given
# latents of the odd grid, and an image size of their aspect ratio.
ODD_GRIDS = [(5, 5), (5, 7), (9, 5)]


@pytest.mark.parametrize(
    "grid", [(family, grid) for family in ("sd15", "sdxl") for grid in ODD_GRIDS], ids=str
)
def test_masked_branches_add_nothing_outside_the_mask_on_odd_grids(request, picture, grid):
    family, (rows, columns) = grid
    pipe = tiny_flexip_pipe(request, family)
    height, width = 8 * rows, 8 * columns
    masks = [np.zeros((height, width), dtype=np.float32), np.zeros((height, width), dtype=np.float32)]
    masks[0][: height // 3, : width // 3 + 3] = 1  # off the latent grid: some cells are partly inside
    masks[1][height // 2 :, width // 2 + 5 :] = 1
    latents = torch.randn(1, 4, rows, columns, generator=torch.Generator().manual_seed(0))

    def run():
        return pipe(
            "a dog",
            reference=[picture, picture],
            reference_masks=masks,
            num_inference_steps=2,
            preservation=[0.4, 1.0],
            height=height,
            width=width,
            latents=latents,
            output_type="np",
        ).images

    images = []
    calls = cross_attention_calls(pipe, lambda: images.append(run()))
    assert images[0].shape[0] == 2 and np.isfinite(images[0]).all()
    union = torch.from_numpy(np.maximum(*masks))[None, None]
    grids = set()
    for attn, hidden, text, condition, output in calls:
        with torch.no_grad():
            text_only = attn.processor(attn, hidden, text)
        branch = (
            (output - text_only).abs().amax(dim=(0, 2))
        )  # (positions,): the branches' share of the output
        # Each down level halves the latents rounding up (a stride-2 convolution with padding 1).
        level_rows, level_columns = rows, columns
        while level_rows * level_columns > branch.numel():
            level_rows, level_columns = math.ceil(level_rows / 2), math.ceil(level_columns / 2)
        inside = (
            F.adaptive_max_pool2d(union, (level_rows, level_columns)).flatten() > 0
        )  # cells with a mask pixel
        assert torch.all(branch[~inside] == 0), (attn, level_rows, level_columns)
        assert branch[inside].min() > 0 and (~inside).any()
        grids.add((level_rows, level_columns))
    assert len(grids) == 2
