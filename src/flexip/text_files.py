"""Reading the text files people write or edit (settings, prompt lists, JSONL records): as an editor or a
spreadsheet saves them, refused in one line that names the file (and line) and how to make a good one."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import FlexIPError


def _named(path: str | os.PathLike, what: str) -> str:
    return f"{what} {path}" if what else f"{path}"


def read_text(path: str | os.PathLike, remake: str, what: str = "") -> str:
    """A text file's content, UTF-8 with or without a BOM. For the error: `remake` says how to make a good one;
    `what` (e.g. "manifest"), when given, is said before the path."""
    shown = _named(path, what)
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise FlexIPError(
            f"{shown} is not UTF-8 text (byte {e.start}); save it as UTF-8, or {remake}"
        ) from None
    except OSError as e:
        raise FlexIPError(f"cannot read {shown} ({e.strerror}); {remake}") from None


def read_json_object(path: Path, remake: str) -> dict:
    """A JSON file that must hold one object (a settings file)."""
    try:
        data = json.loads(read_text(path, remake))
    except json.JSONDecodeError as e:
        raise FlexIPError(f"{path}: not valid JSON ({e}); {remake}") from None
    if not isinstance(data, dict):
        raise FlexIPError(f"{path} holds a JSON {type(data).__name__}, not an object; {remake}")
    return data


def read_jsonl(path: Path, remake: str, what: str = "") -> list[tuple[str, dict]]:
    """The objects of a JSONL file, each with where it is (`path:line`, after `what`) for errors; blank lines
    are skipped."""
    shown = _named(path, what)
    rows = []
    # Lines end at \n, \r\n or \r only: a JSON string may hold the other breaks `splitlines` knows (U+2028).
    for number, line in enumerate(re.split(r"\r\n?|\n", read_text(path, remake, what)), start=1):
        if not line.strip():
            continue
        where = f"{shown}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise FlexIPError(f"{where}: not valid JSON ({e}); {remake}") from None
        if not isinstance(row, dict):
            raise FlexIPError(f"{where}: not a JSON object but a {type(row).__name__}; {remake}")
        rows.append((where, row))
    return rows
