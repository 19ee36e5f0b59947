"""The dial's text forms, as the command line and the web page take them: `0.3,0.5` a sweep,
`down=0.9,mid=0.6,up=0.3` (or `up.block_0=0.5`) per block, `0.9:0.3` (or `0.9:0.3:cosine`) a schedule, and `;`
between the values of a sweep of any forms. `Dial.text` writes them."""

from __future__ import annotations

from ..errors import FlexIPError
from .dial import PRESERVATION, Dial, DialSchedule, Quantity, dials


def parse_dials(text: str, name: str, quantity: Quantity = PRESERVATION) -> list[Dial]:
    """A flag's text -> its `Dial`s: `0.3,0.5` a sweep, `down=0.9,mid=0.6,up=0.3` (or `up.block_0=0.5`) per
    block, `0.9:0.3` (or `0.9:0.3:cosine`) a schedule, `;` between the values of a sweep of any forms."""
    parts = text.split(";")
    if len(parts) > 1:
        forms = [_parse_one(part.strip(), name) for part in parts]
        if any(isinstance(form, list) for form in forms):
            raise FlexIPError(f"{name} {text}: a value between ';' cannot be a list; use ';' or ',' to separate values")
    else:
        form = _parse_one(text.strip(), name)
        forms = form if isinstance(form, list) else [form]
    return dials(forms, name, quantity)


def _parse_one(text: str, name: str):
    if "=" in text:
        blocks: dict = {}
        for item in text.split(","):
            key, _, value = item.partition("=")
            part, _, block = key.strip().partition(".")
            number = _parse_number(value, name, text)
            if block:
                entry = blocks.setdefault(part, {})
                if not isinstance(entry, dict):
                    raise FlexIPError(f"{name} {text}: {part} is given both whole and per block; give one of them")
                entry[block] = number
            elif part in blocks:
                raise FlexIPError(f"{name} {text}: {part} is given twice; give each block once")
            else:
                blocks[part] = number
        return blocks
    if "," in text:
        return [_parse_one(item.strip(), name) for item in text.split(",")]
    if ":" in text:
        pieces = text.split(":")
        if len(pieces) not in (2, 3):
            raise FlexIPError(f"{name} {text}: a schedule is START:END or START:END:SHAPE, e.g. 0.9:0.3")
        shape = pieces[2] if len(pieces) == 3 else "linear"
        return DialSchedule(_parse_number(pieces[0], name, text), _parse_number(pieces[1], name, text), shape)
    return _parse_number(text, name, text)


def _parse_number(text: str, name: str, whole: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FlexIPError(
            f"{name} {whole}: {text.strip()!r} is not a number; give e.g. 0.5, 0.3,0.5, down=0.9,up=0.3 or 0.9:0.3"
        ) from None
