"""Data preparation: folders of photos, clips and multi-view objects -> FlexIP training manifests and shards.

`flexip prep images|videos|views|caption|shards|check` (docs/design.md, "Data preparation"; docs/formats.md).
Each step is resumable and splits its input between processes (`Part`).
"""

from .captions import Captioner, caption_manifest
from .check import check
from .images import prepare_images
from .masks import SubjectSegmenter
from .multiview import prepare_views
from .shards import write_shards
from .split import Part
from .videos import prepare_videos

__all__ = [
    "Captioner",
    "Part",
    "SubjectSegmenter",
    "caption_manifest",
    "check",
    "prepare_images",
    "prepare_videos",
    "prepare_views",
    "write_shards",
]
