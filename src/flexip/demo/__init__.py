"""The demo world: a procedural world, its judge and a small base model, all trainable on a CPU.

See docs/demo-model.md. The heavy parts (judge, base model) are imported from their modules on demand so that
`import flexip.demo` stays cheap.
"""

from flexip.demo.world import (
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

__all__ = [
    "CLASSES",
    "IDENTITY_ATTRIBUTES",
    "SCENE_ATTRIBUTES",
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
