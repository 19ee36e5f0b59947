"""A tiny procedural world in which subject-driven generation can be trained and judged on a CPU.

A subject has an *identity* (body colour, pattern, pattern colour) that captions never name, and is shown in
a *scene* (class, background, position, size, style) that captions describe and prompts edit. Everything is
drawn with PIL at `RENDER_SIZE` px and box-downscaled to the requested size (32 px for the base model), so
edges are anti-aliased. Every random choice comes from a `numpy.random.Generator`, so a seed fixes the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RENDER_SIZE = 64

# ---- the scene: what captions say -------------------------------------------------------------------------
CLASSES = ("circle", "square", "triangle", "star", "cross")
# Backgrounds are pale or dark tints named by things, not colour words, so they can never be read as the
# subject's (saturated, unnamed) body colour. All are chromatic and none is near white or black, so grayscale
# subjects and white or black patterns always stand out from them (the judge measures the subject that way).
BACKGROUNDS = {
    "sky": (150, 190, 235),
    "grass": (150, 205, 140),
    "sand": (225, 200, 140),
    "rose": (235, 170, 190),
    "mint": (170, 230, 215),
    "night": (25, 35, 90),
}
POSITIONS = {"left": 0.28, "center": 0.5, "right": 0.72}  # centre x as a fraction of the width
SIZES = {"small": 0.16, "large": 0.25}  # radius as a fraction of the width
# "plain" draws the identity; the others override appearance (what a style edit does to a real subject).
STYLES = ("plain", "outline", "gray")

# ---- the identity: what only the reference image shows -------------------------------------------------------
COLORS = {
    "red": (210, 40, 40),
    "orange": (235, 130, 20),
    "yellow": (235, 205, 30),
    "green": (40, 160, 60),
    "blue": (40, 70, 210),
    "purple": (130, 50, 170),
}
PATTERNS = ("plain", "stripes", "dots")
PATTERN_COLORS = {"white": (250, 250, 250), "black": (20, 20, 20)}

SCENE_ATTRIBUTES = {
    "subject": CLASSES,
    "background": tuple(BACKGROUNDS),
    "position": tuple(POSITIONS),
    "size": tuple(SIZES),
    "style": STYLES,
}
IDENTITY_ATTRIBUTES = {"color": tuple(COLORS), "pattern": PATTERNS, "pattern_color": tuple(PATTERN_COLORS)}


@dataclass(frozen=True)
class Identity:
    color: str
    pattern: str
    pattern_color: str

    def visible_attributes(self, style: str) -> tuple[str, ...]:
        """Identity attributes a render in `style` still shows (grayscale hides colour, outline hides all)."""
        if style == "outline":
            return ()
        shown = ("pattern",) if style == "gray" else ("color", "pattern")
        return shown + (("pattern_color",) if self.pattern != "plain" else ())


@dataclass(frozen=True)
class Scene:
    subject: str
    background: str
    position: str
    size: str
    style: str = "plain"


def sample_identity(rng: np.random.Generator) -> Identity:
    return Identity(
        color=str(rng.choice(list(COLORS))),
        pattern=str(rng.choice(PATTERNS)),
        pattern_color=str(rng.choice(list(PATTERN_COLORS))),
    )


def sample_scene(rng: np.random.Generator, subject: str | None = None, style_probs=(0.6, 0.2, 0.2)) -> Scene:
    """A random scene; `subject` fixes the class (a clip keeps its subject). Styles default to mostly plain."""
    return Scene(
        subject=subject if subject is not None else str(rng.choice(CLASSES)),
        background=str(rng.choice(list(BACKGROUNDS))),
        position=str(rng.choice(list(POSITIONS))),
        size=str(rng.choice(list(SIZES))),
        style=str(rng.choice(STYLES, p=style_probs)),
    )


# ---- captions ------------------------------------------------------------------------------------------------
def caption(scene: Scene) -> str:
    """The one caption template; names class and scene, never the identity."""
    text = f"a {scene.size} {scene.subject} on the {scene.position} with {scene.background} background"
    if scene.style != "plain":
        text += f" drawn in {scene.style}"
    return text


def parse_caption(text: str) -> Scene:
    """Inverse of `caption`; raises ValueError naming the caption when it does not follow the template."""
    words = text.strip().lower().split()
    try:
        if words[:1] != ["a"] or words[3:5] != ["on", "the"] or words[6] != "with" or words[8] != "background":
            raise ValueError
        style = "plain"
        if len(words) == 12 and words[9:11] == ["drawn", "in"]:
            style = words[11]
        elif len(words) != 9:
            raise ValueError
        scene = Scene(subject=words[2], background=words[7], position=words[5], size=words[1], style=style)
    except (ValueError, IndexError) as e:
        raise ValueError(
            f"caption {text!r} does not follow the demo world's template "
            f"'a <size> <class> on the <position> with <background> background[ drawn in <style>]'"
        ) from e
    for name, allowed in SCENE_ATTRIBUTES.items():
        if getattr(scene, name) not in allowed:
            raise ValueError(f"caption {text!r}: unknown {name} {getattr(scene, name)!r}; known: {allowed}")
    return scene


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order (the tokenizer is built over it)."""
    words = ["a", "on", "the", "with", "background", "drawn", "in"]
    for values in SCENE_ATTRIBUTES.values():
        words += [v for v in values if v != "plain"]
    return list(dict.fromkeys(words))


# ---- rendering -----------------------------------------------------------------------------------------------
def _shape_points(subject: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon of a class, centred at (cx, cy) with outer radius r, rotated by `angle` radians."""
    if subject == "circle":
        corners = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    elif subject == "square":
        corners = [(-0.78, -0.78), (0.78, -0.78), (0.78, 0.78), (-0.78, 0.78)]
    elif subject == "triangle":
        corners = [(math.cos(t), math.sin(t) + 0.15) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif subject == "star":
        corners = [
            ((1.0 if k % 2 == 0 else 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
             (1.0 if k % 2 == 0 else 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5) + 0.08)
            for k in range(10)
        ]
    elif subject == "cross":
        a, b = 0.3, 0.9
        corners = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a),
                   (-b, -a), (-a, -a)]
    else:
        raise ValueError(f"unknown subject class {subject!r}; known: {CLASSES}")
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in corners]


def _pattern_mask(pattern: str, size: int, offset: tuple[float, float]) -> np.ndarray:
    """Boolean (size, size) map of where the pattern colour goes, in canvas coordinates."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if pattern == "plain":
        return np.zeros((size, size), dtype=bool)
    if pattern == "stripes":  # horizontal bands; a period of 1/8 stays ~2 px wide per band at 32 px
        return ((yy + offset[1]) * 8.0) % 1.0 < 0.5
    if pattern == "dots":  # a grid of round dots
        gx = (xx + offset[0]) * 7.0 % 1.0 - 0.5
        gy = (yy + offset[1]) * 7.0 % 1.0 - 0.5
        return gx**2 + gy**2 < 0.3**2
    raise ValueError(f"unknown pattern {pattern!r}; known: {PATTERNS}")


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> np.ndarray:
    return np.clip(np.array(rgb, dtype=np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def render(identity: Identity, scene: Scene, rng: np.random.Generator, size: int = 32) -> tuple[Image.Image, Image.Image]:
    """Draw `identity` in `scene`; returns (RGB image, L mask with white = subject), both `size` px square.

    `rng` supplies the small variations a photo would have (exact place and size, rotation, colour jitter),
    so two renders of the same scene differ slightly unless drawn from equal seeds.
    """
    n = RENDER_SIZE
    background = _jitter(BACKGROUNDS[scene.background], rng, 8)
    cx = (POSITIONS[scene.position] + rng.uniform(-0.04, 0.04)) * n
    cy = (0.5 + rng.uniform(-0.08, 0.08)) * n
    radius = SIZES[scene.size] * rng.uniform(0.92, 1.08) * n
    angle = rng.uniform(-0.2, 0.2)
    points = _shape_points(scene.subject, cx, cy, radius, angle)

    shape = Image.new("L", (n, n), 0)
    ImageDraw.Draw(shape).polygon(points, fill=255)
    inside = np.asarray(shape) > 127
    canvas = np.broadcast_to(background, (n, n, 3)).copy()

    if scene.style == "outline":
        # A dark line on light backgrounds and a light one on night, so the outline is always visible.
        ink = (245, 245, 245) if scene.background == "night" else (25, 25, 25)
        line = Image.new("L", (n, n), 0)
        ImageDraw.Draw(line).polygon(points, outline=255, width=3)
        outline = np.asarray(line) > 127
        canvas[outline] = ink
        mask = outline
    else:
        body = _jitter(COLORS[identity.color], rng, 12)
        secondary = _jitter(PATTERN_COLORS[identity.pattern_color], rng, 6)
        pattern = _pattern_mask(identity.pattern, n, tuple(rng.uniform(0, 1, 2)))
        canvas[inside] = body
        canvas[inside & pattern] = secondary
        if scene.style == "gray":
            luminance = canvas[inside] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            canvas[inside] = luminance[:, None]
        mask = inside

    image = Image.fromarray(canvas.round().astype(np.uint8), "RGB")
    mask_image = Image.fromarray((mask * 255).astype(np.uint8), "L")
    if size != n:
        image = image.resize((size, size), Image.Resampling.BOX)
        mask_image = mask_image.resize((size, size), Image.Resampling.BOX).point(lambda v: 255 if v >= 128 else 0)
    return image, mask_image


def render_seeded(seed: int, size: int = 32) -> tuple[Image.Image, Image.Image, Identity, Scene]:
    """A random subject in a random scene, fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    identity, scene = sample_identity(rng), sample_scene(rng)
    image, mask = render(identity, scene, rng, size)
    return image, mask, identity, scene

