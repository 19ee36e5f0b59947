"""The demo recipe: a procedural world, its judge and a small base model, all trainable on a CPU, and the
FlexIP adapter trained on them; together the model set that `flexip` ships as its embedded default.

A recipe, not the library: it imports `flexip` like any user's script and runs from the repository root
(`python -m recipes.demo.<module>`). See docs/demo-model.md. The heavy parts (judge, base model) are imported
from their modules on demand so that `import recipes.demo` stays cheap.
"""

from pathlib import Path

from recipes.demo.world import (
    CLASSES,
    IDENTITY_ATTRIBUTES,
    SCENE_ATTRIBUTES,
    Identity,
    Scene,
    caption,
    parse_caption,
    render,
    render_seeded,
    sample_identity,
    sample_scene,
    vocabulary,
)

# Where the recipe writes what the package ships (base model, encoders, adapter, judge, reference): the
# package sources of this clone, which an editable install also loads (flexip.pipeline.embedded.DEMO_MODEL_DIR).
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "src" / "flexip" / "assets" / "demo"

__all__ = [
    "CLASSES",
    "IDENTITY_ATTRIBUTES",
    "SCENE_ATTRIBUTES",
    "SHIPPED_DIR",
    "Identity",
    "Scene",
    "caption",
    "parse_caption",
    "render",
    "render_seeded",
    "sample_identity",
    "sample_scene",
    "vocabulary",
]
