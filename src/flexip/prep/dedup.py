"""Near-duplicate removal over 64-bit difference hashes, in one pass, without comparing every pair.

Two hashes within Hamming distance d agree exactly on at least one of d + 1 disjoint bit blocks (pigeonhole),
so each kept hash is indexed by its blocks and a new hash is compared only with the hashes sharing a block
(multi-index hashing, Norouzi et al., CVPR 2012). The first picture in input order is the one kept.
"""

from __future__ import annotations

from collections import defaultdict

from ..errors import FlexIPError
from .pictures import hamming
from .progress import problem

BITS = 64  # of a difference hash


def check_distance(distance: int) -> None:
    if not -1 <= distance <= BITS:
        raise FlexIPError(
            f"--dedup-distance {distance}: a distance between {BITS}-bit hashes is 0 .. {BITS}; give one, "
            "or -1 to turn deduplication off"
        )


class NearDuplicates:
    """Remembers kept hashes; `match(h)` is a kept hash within `distance` bits of `h`, or None."""

    def __init__(self, distance: int):
        self.distance = distance
        bounds = [round(BITS * i / (distance + 1)) for i in range(distance + 2)]
        self.masks = [(low, (1 << (high - low)) - 1) for low, high in zip(bounds, bounds[1:])]
        self.index: list[dict[int, list[tuple[int, str]]]] = [defaultdict(list) for _ in self.masks]

    def match(self, value: int) -> tuple[int, str] | None:
        """(the kept hash's distance, its name) of the first kept hash close enough, or None."""
        for (shift, mask), table in zip(self.masks, self.index):
            for kept, name in table.get((value >> shift) & mask, ()):
                if (gap := hamming(value, kept)) <= self.distance:
                    return gap, name
        return None

    def add(self, value: int, name: str) -> None:
        for (shift, mask), table in zip(self.masks, self.index):
            table[(value >> shift) & mask].append((value, name))


def drop_duplicates(rows: list[dict], distance: int) -> tuple[list[dict], list[dict]]:
    """Rows whose `dhash` is within `distance` bits of an earlier kept row's are dropped and reported.

    A distance of -1 keeps everything (deduplication off).
    """
    if distance < 0:
        return rows, []
    seen, kept, dropped = NearDuplicates(distance), [], []
    for row in rows:
        value = int(row["dhash"], 16)
        if (found := seen.match(value)) is not None:
            gap, name = found
            dropped.append(problem(row["source"], "duplicate", f"duplicate of {name} (dHash distance {gap} <= {distance})"))
            continue
        seen.add(value, row["source"])
        kept.append(row)
    return kept, dropped
