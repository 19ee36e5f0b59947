"""A bounded cache of recent references' features, keyed by their pixels."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from PIL import Image

from .encoded import EncodedReference
from .encoder import ReferenceEncoder


class ReferenceCache:
    """The features of the last few reference images one encoder saw, so a repeated subject is encoded once.

    Keyed by a hash of the image's pixels (mode, size and bytes: two files of one picture share an entry) and
    the encoder's device and dtype (features made in float32 are not reused after `pipe.to(float16)`). One
    cache belongs to one encoder, which is the rest of the key. Bounded: the least recently used entry goes
    first. Thread-safe; two threads missing on one image at once may both encode it, which costs time, not
    correctness. The features returned are shared between callers: treat them as read-only.
    """

    def __init__(self, encoder: ReferenceEncoder, capacity: int = 8):
        self.encoder = encoder
        self.capacity = capacity  # ~1 MB per entry for SD 1.5's DINOv2-L features in float32
        self._entries: OrderedDict[tuple, EncodedReference] = OrderedDict()
        self._lock = threading.Lock()

    def _key(self, image: Image.Image) -> tuple:
        parameter = next(self.encoder.parameters())
        digest = hashlib.sha256(f"{image.mode} {image.size}".encode())
        digest.update(image.tobytes())
        return digest.hexdigest(), str(parameter.device), str(parameter.dtype)

    def _lookup(self, key: tuple) -> EncodedReference | None:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        return None

    def get(self, image: Image.Image) -> EncodedReference | None:
        """The cached features of `image` (an RGB image), or None when it must be encoded."""
        return self._lookup(self._key(image))

    def encode(self, image: Image.Image) -> EncodedReference:
        """The features of `image` (an RGB image), from the cache or from the encoder (then cached)."""
        key = self._key(image)
        cached = self._lookup(key)
        if cached is not None:
            return cached
        encoded = self.encoder([image])
        with self._lock:
            self._entries[key] = encoded
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return encoded
