"""The subject's reference pictures as the adapters see them (docs/method.md §2): the two frozen encoders
(`encoder.py`: CLIP's image embedding and DINOv2's block features), their features (`encoded.py`: kept, saved
and loaded to skip re-encoding), and the bounded cache of recent references' features (`cache.py`)."""
