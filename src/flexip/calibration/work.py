"""A calibration's work folder, `<out>.partial/` beside the adapter it writes: what has been measured so far, so
that a rerun of the same calibration resumes where it stopped.

- `settings.json`: everything the measurements depend on (the adapter's weights, the pairs, seeds, points,
  sampling, scorers, device); a run with other settings is refused, naming what differs, as its scores would
  not belong to the same curve.
- `part-<process>.jsonl`: one line per measured unit (one pair and seed at one round's gates: their scores),
  appended and flushed to disk as soon as it is scored; each process writes its own file, and all of them
  together are the measurements. A line cut short by a kill is dropped, and that unit measured again.

The folder is made by the run that starts the calibration and removed once the calibrated adapter is written.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..errors import FlexIPError
from ..text_files import read_json_object

SETTINGS_NAME = "settings.json"


def work_folder(out: str | os.PathLike) -> Path:
    """Where the calibration writing `out` keeps its measurements."""
    out = Path(out)
    return out.with_name(f"{out.name}.partial")


@dataclass(frozen=True)
class Measured:
    """The scores of one unit: pair `pair` (its index) and seed `seed` generated at `gates` in one batch."""

    pair: int
    seed: int
    gates: tuple[float, ...]
    identity: tuple[float, ...]
    prompt: tuple[float, ...]

    @property
    def key(self) -> tuple:
        return self.pair, self.seed, self.gates

    @classmethod
    def from_record(cls, record: dict) -> Measured:
        numbers = (tuple(float(value) for value in record[name]) for name in ("gates", "identity", "prompt"))
        return cls(int(record["pair"]), int(record["seed"]), *numbers)


class WorkFolder:
    def __init__(self, path: str | os.PathLike, settings: dict):
        self.path, self.settings = Path(path), settings

    def check(self) -> None:
        """Refuse a work folder made with other settings, in one line saying what differs."""
        if not (self.path / SETTINGS_NAME).is_file():
            if self.path.exists() and not self.path.is_dir():
                raise FlexIPError(
                    f"{self.path} is a file, where the calibration keeps its work; move it away"
                )
            return
        fix = f"delete {self.path} to start the calibration again"
        previous = read_json_object(self.path / SETTINGS_NAME, fix)
        changed = sorted(
            key
            for key in previous.keys() | self.settings.keys()
            if previous.get(key) != self.settings.get(key)
        )
        if changed:
            details = "; ".join(
                f"{key}: {_shown(previous.get(key))} before, {_shown(self.settings.get(key))} now"
                for key in changed
            )
            raise FlexIPError(
                f"{self.path} holds a calibration made with other settings ({details}); give the same settings "
                f"to resume it, or {fix}"
            )

    def create(self) -> None:
        """Make the folder with its settings (one process: the main one), unless it is there already."""
        if not (self.path / SETTINGS_NAME).is_file():
            atomic_write_bytes(
                self.path / SETTINGS_NAME, (json.dumps(self.settings, indent=2) + "\n").encode()
            )

    def records(self) -> dict[tuple, Measured]:
        """Every unit measured so far, by every process, by key."""
        found = {}
        for part in sorted(self.path.glob("part-*.jsonl")):
            for line in _whole_lines(part.read_bytes()):
                try:
                    record = Measured.from_record(json.loads(line))
                except (ValueError, TypeError, KeyError) as e:
                    raise FlexIPError(
                        f"{part} holds a damaged line ({e!r}); delete {self.path} to start again"
                    ) from e
                found.setdefault(record.key, record)
        return found

    def append(self, process: int, record: Measured) -> None:
        """Add one unit's scores to this process's part, on disk before it returns."""
        part = self.path / f"part-{process}.jsonl"
        if part.is_file():
            _drop_cut_line(part)
        with open(part, "ab") as f:
            f.write((json.dumps(asdict(record)) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _whole_lines(data: bytes) -> list[bytes]:
    """The lines that end in a newline: the one a kill cut short is not one of them."""
    return data.split(b"\n")[:-1]


def _drop_cut_line(part: Path) -> None:
    data = part.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(part, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _shown(value) -> str:
    """A setting as the refusal shows it: a digest's first characters, anything else as written."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return repr(value)
