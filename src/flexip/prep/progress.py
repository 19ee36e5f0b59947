"""Resumable runs over a list of work items: the progress file, the outputs, the report, the summary.

The progress file `<target>.progress.jsonl` starts with the run's settings; each finished item is appended
to it (its rows and its problems) before the next one starts, so a crash loses at most the item in hand and a
re-run continues after the last line. A re-run under other settings is refused: one manifest never mixes
media judged two ways. Only at the end are the manifest and its report `<out>.report.jsonl` written, each in
one atomic rename; the progress file is then removed (a launched part's once rank 0 has merged it). Nothing
the run did not create is replaced unless the caller says so.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..atomic import atomic_write_bytes, check_writable
from ..errors import FlexIPError
from .split import Part, part_path, wait_for_parts


@dataclass
class Outcome:
    """What one work item gave: manifest rows, and problems (`file`, `kind`, `reason`) for the report."""

    rows: list[dict] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)


def problem(file: str | os.PathLike, kind: str, reason: str) -> dict:
    return {"file": str(file), "kind": kind, "reason": reason}


@dataclass(frozen=True)
class Summary:
    out: Path  # what this process wrote: the manifest, or its part file
    items: int  # work items in this process's part
    resumed: int  # of those, finished by an earlier run
    rows: int
    problems: Counter  # kind -> count, in `out`'s report
    complete: bool  # False for a launched part whose rank 0 merges later

    @property
    def report(self) -> Path:
        return report_path(self.out)

    def line(self, command: str, item: str, row: str) -> str:
        """The summary line a command prints last."""
        skipped = ", ".join(f"{count} {kind}" for kind, count in sorted(self.problems.items())) or "none"
        resumed = f" ({self.resumed} done by an earlier run)" if self.resumed else ""
        text = f"flexip prep {command}: {self.items} {item}{resumed} -> {self.rows} {row} in {self.out}; skipped: {skipped}"
        if self.problems:
            text += f" (reasons in {self.report})"
        return text if self.complete else text + "; rank 0 merges the parts"


def report_path(out: Path) -> Path:
    return out.with_name(f"{out.name}.report.jsonl")


def progress_path(target: Path) -> Path:
    return target.with_name(f"{target.name}.progress.jsonl")


def written_by(out: Path, name: str) -> bool:
    """Whether the file `name` beside `out` is one a run writing `out` makes: it, its parts, their reports and
    progress files."""
    pattern = re.escape(out.name) + r"(\.part-\d+-of-\d+)?(\.report\.jsonl|\.progress\.jsonl)?"
    return re.fullmatch(pattern, name) is not None


def check_output(out: Path, part: Part, overwrite: bool) -> None:
    """Refuse, before any work, an output that exists from an earlier finished run, or cannot be written."""
    check_writable(out, "--out")
    if out.is_dir():
        raise FlexIPError(f"--out {out} is a folder; give a file name such as {out / 'manifest.jsonl'}")
    if out.exists() and not overwrite and not progress_path(part.output(out)).exists():
        raise FlexIPError(
            f"--out {out} already exists (a finished run, or another file); pass --overwrite to replace it, "
            "or choose another --out"
        )


def check_resume(out: Path, part: Part, restart: bool, settings: dict) -> None:
    """Refuse, before any work (a model to load...), to continue a run of `out` made under other settings."""
    if not restart:
        journal = progress_path(part.output(out))
        earlier, _ = _load_journal(journal)
        if earlier is not None:
            _check_same_settings(earlier, _as_stored(settings), journal)


def run_items(
    out: Path,
    items: Sequence[str],
    work: Callable[[list[str]], list[Outcome]],
    *,
    part: Part,
    restart: bool,
    settings: dict,
    desc: str,
    unit: str,
    batch_size: int = 1,
    finish: Callable[[list[dict]], tuple[list[dict], list[dict]]] | None = None,
) -> Summary:
    """Run `work` on this part's items in batches, resumably; write the manifest and report; merge parts.

    `items` are stable string keys (paths, row numbers) of the whole input, in output order. `finish` sees all
    rows of the whole input at once (the merged ones under a launcher) and may drop some, with their problems
    (deduplication). `settings` (JSON values, keyed by the option that sets them) must be those of the run an
    earlier progress file belongs to. `restart` discards an earlier run's progress.
    """
    target = part.output(out)
    journal = progress_path(target)
    if restart:
        _discard_progress(target, part)
    settings = _as_stored(settings)
    earlier, done = _load_journal(journal)
    if earlier is not None:
        _check_same_settings(earlier, settings, journal)
    keys = [items[i] for i in part.block(len(items))]
    if part.launched and target.exists():
        rows, problems = _read_outputs(target)  # finished by an earlier run
        resumed = len(keys)
    else:
        resumed = sum(key in done for key in keys)
        journal.parent.mkdir(parents=True, exist_ok=True)
        with open(journal, "a") as log, tqdm(total=len(keys), initial=resumed, desc=desc, unit=unit) as bar:
            if earlier is None:
                log.write(json.dumps({"settings": settings}) + "\n")
            todo = [key for key in keys if key not in done]
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                _log_outcomes(log, batch, work(batch), done)
                bar.update(len(batch))
        rows, problems = _rows_and_problems([done[key] for key in keys])
        if finish is not None and not part.launched:
            rows, problems = _finished(finish, rows, problems)
        _write_outputs(target, rows, problems)
        if not part.launched:
            journal.unlink()  # a launched part's stays beside it, so that a relaunch checks its settings
    if part.launched and part.rank == 0:
        rows, problems = _merge_parts(out, part.world_size, finish)
        target = out
    complete = not part.launched or part.rank == 0
    return Summary(target, len(keys), resumed, len(rows), Counter(p["kind"] for p in problems), complete)


def _discard_progress(target: Path, part: Part) -> None:
    """Forget an earlier run: its progress file, and a launched part's finished output."""
    progress_path(target).unlink(missing_ok=True)
    if part.launched:
        target.unlink(missing_ok=True)


def _log_outcomes(log, keys: list[str], outcomes: list[Outcome], done: dict[str, dict]) -> None:
    """Append each finished item to the progress file and to `done`, flushed before the next batch starts."""
    for key, outcome in zip(keys, outcomes, strict=True):
        entry = {"key": key, "rows": outcome.rows, "problems": outcome.problems}
        log.write(json.dumps(entry) + "\n")
        done[key] = entry
    log.flush()


def _rows_and_problems(entries: list[dict]) -> tuple[list[dict], list[dict]]:
    rows = [row for entry in entries for row in entry["rows"]]
    return rows, [p for entry in entries for p in entry["problems"]]


def _finished(
    finish: Callable[[list[dict]], tuple[list[dict], list[dict]]], rows: list[dict], problems: list[dict]
) -> tuple[list[dict], list[dict]]:
    """The rows `finish` keeps, and the problems with those it drops added."""
    rows, dropped = finish(rows)
    return rows, problems + dropped


def _merge_parts(
    out: Path, world_size: int, finish: Callable[[list[dict]], tuple[list[dict], list[dict]]] | None
) -> tuple[list[dict], list[dict]]:
    """Rank 0 of a launch: wait for every part, write their rows and problems as `out` and its report, remove
    the parts."""
    parts = [part_path(out, rank, world_size) for rank in range(world_size)]
    wait_for_parts(parts, progress_path)
    rows, problems = [], []
    for path in parts:
        part_rows, part_problems = _read_outputs(path)
        rows += part_rows
        problems += part_problems
    if finish is not None:
        rows, problems = _finished(finish, rows, problems)
    _write_outputs(out, rows, problems)
    for path in parts:
        path.unlink()
        report_path(path).unlink(missing_ok=True)
        progress_path(path).unlink(missing_ok=True)
    return rows, problems


def _read_outputs(target: Path) -> tuple[list[dict], list[dict]]:
    """The rows and problems a finished run wrote to `target` and its report."""
    return _read_jsonl(target), _read_jsonl(report_path(target))


def _write_outputs(target: Path, rows: list[dict], problems: list[dict]) -> None:
    # The report first: a manifest that exists is always accompanied by its report.
    report = report_path(target)
    if problems:
        atomic_write_bytes(report, _jsonl(problems))
    else:
        report.unlink(missing_ok=True)  # a stale report of this same output from an earlier run
    atomic_write_bytes(target, _jsonl(rows))


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _load_journal(journal: Path) -> tuple[dict | None, dict[str, dict]]:
    """(the earlier run's settings or None, its finished items by key).

    A last line cut short by a crash is dropped (and cut off, so appends stay whole); other damage is refused.
    """
    if not journal.exists():
        return None, {}
    data = journal.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with open(journal, "r+b") as file:
            file.truncate(len(whole))
    lines = whole.decode(errors="replace").splitlines()
    if not lines:
        return None, {}
    done = {}
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
            if number == 1:
                settings = entry["settings"]
                if not isinstance(settings, dict):
                    raise TypeError("settings are not an object")
            else:
                key, rows, problems = entry["key"], list(entry["rows"]), list(entry["problems"])
                done[key] = {"key": key, "rows": rows, "problems": problems}
        except (ValueError, KeyError, TypeError) as e:
            raise FlexIPError(
                f"progress file {journal} is damaged at line {number} ({type(e).__name__}: {e}); pass "
                "--overwrite to start over, or choose another --out"
            ) from None
    return settings, done


def _as_stored(settings: dict) -> dict:
    return json.loads(json.dumps(settings))  # as the progress file holds them (tuples become lists...)


def _check_same_settings(earlier: dict, settings: dict, journal: Path) -> None:
    for name in [*settings, *(name for name in earlier if name not in settings)]:
        old, new = earlier.get(name), settings.get(name)
        if old != new:
            raise FlexIPError(
                f"{name} {_shown(new)} differs from the earlier run's {name} {_shown(old)} ({journal}); "
                "run it again with the same settings to resume, pass --overwrite to start over, or choose "
                "another --out"
            )


def _shown(value) -> str:
    return "(none)" if value is None else str(value)
