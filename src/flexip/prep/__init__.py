"""Data preparation: folders of photos, clips and multi-view objects -> FlexIP training manifests and shards.

`flexip prep images|videos|views|caption|shards|check` (docs/decisions/data-preparation.md; docs/formats.md).
Each step is resumable and splits its input between processes (`Part`).
"""
