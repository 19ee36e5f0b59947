"""Splitting one corpus between processes or machines, and putting the parts back together.

Either the user names the part (`--rank R --world-size W`: the output is that part's own file, for machines that
share nothing) or a launcher does (accelerate or torchrun set RANK and WORLD_SIZE): then each process writes
`<out>.part-R-of-W` and rank 0, once every part exists, merges them into `<out>`. Parts are contiguous blocks
of the input in its order, so the merged output is exactly what one process would have written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import FlexIPError

# Rank 0 waits for its peers' parts as long as their progress files keep changing; this long without a change
# means a peer died (a crash, a lost node), and waiting longer would hang the job.
STALL_SECONDS = 600.0
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Part:
    """Which share of the input this process prepares."""

    rank: int = 0
    world_size: int = 1
    launched: bool = False  # set by a launcher: write a part file, rank 0 merges

    @classmethod
    def resolve(cls, rank: int | None, world_size: int | None) -> Part:
        """The part from `--rank/--world-size`, else from a launcher's RANK/WORLD_SIZE, else the whole input."""
        if (rank is None) != (world_size is None):
            raise FlexIPError("give --rank and --world-size together (e.g. --rank 0 --world-size 4), or neither")
        if rank is not None:
            if world_size < 1 or not 0 <= rank < world_size:
                raise FlexIPError(
                    f"--rank {rank} --world-size {world_size}: need world size >= 1 and 0 <= rank < world size"
                )
            return cls(rank, world_size)
        try:
            env_rank, env_world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        except ValueError as e:
            raise FlexIPError(f"RANK/WORLD_SIZE in the environment are not integers ({e}); unset them") from e
        if env_world > 1:
            if not 0 <= env_rank < env_world:
                raise FlexIPError(
                    f"RANK {env_rank} is outside 0 .. {env_world - 1} for WORLD_SIZE {env_world} in the "
                    "environment; start the processes with accelerate launch or torchrun, or unset both"
                )
            return cls(env_rank, env_world, launched=True)
        return cls()

    def block(self, count: int) -> range:
        """This part's contiguous share of `count` items (sizes differ by at most one)."""
        return range(count * self.rank // self.world_size, count * (self.rank + 1) // self.world_size)

    @property
    def label(self) -> str:
        """Names the part in progress bars, e.g. " (part 2/4)"; empty for the whole input."""
        return f" (part {self.rank + 1}/{self.world_size})" if self.world_size > 1 else ""

    def output(self, out: Path) -> Path:
        """The file this process writes: `out` itself, or its part file under a launcher."""
        return part_path(out, self.rank, self.world_size) if self.launched else out


def part_path(out: Path, rank: int, world_size: int) -> Path:
    return out.with_name(f"{out.name}.part-{rank}-of-{world_size}")


def wait_for_parts(paths: list[Path], progress_of: Callable[[Path], Path]) -> None:
    """Return once every path exists; fail in one line if the missing ones' progress files stop changing."""
    last_change, seen = time.monotonic(), {}
    while missing := [p for p in paths if not p.exists()]:
        stamps = {p: _mtime(progress_of(p)) for p in missing}
        if stamps != seen:
            seen, last_change = stamps, time.monotonic()
        elif time.monotonic() - last_change > STALL_SECONDS:
            raise FlexIPError(
                f"waited {STALL_SECONDS:.0f} s for {', '.join(p.name for p in missing)} and their progress "
                "stopped: a process died; launch the same command again to resume it (rank 0 then merges)"
            )
        time.sleep(POLL_SECONDS)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def process_device() -> str:
    """This process's accelerator: its own GPU under a launcher (LOCAL_RANK), else the first, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"
